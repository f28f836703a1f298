"""deploy/ checked against the code: manifests and units parse, their arguments are ones the CLI accepts,
the essentials (privileges, mounts, probes, ports) are there, and every metric that an alert rule or the
dashboard uses is one the agent or the collector exports. The wheel carries the probes and the page."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import generate_latest

from agent.config import load_config
from agent.metrics import agent_registry
from collector.app import CollectorApp, CollectorConfig
from collector.metrics import collector_registry
from gpuguard_cli.main import build_parser, collector_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def k8s_docs() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def cli_args(args: list[str]):
    """Parse as the gpuguard CLI would (the k8s $(VAR) substitution done)."""
    return build_parser().parse_args([re.sub(r"\$\((\w+)\)", "gpu-node-1", a) for a in args])


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_agent_daemonset_has_what_the_agent_needs():
    ds = k8s_docs()["DaemonSet/gpuguard-agent"]
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["hostPID"] is True and c["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for needed in ("/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel/tracing", "/sys/kernel/btf", "/var/lib/gpuguard"):
        assert needed in mounts and needed in paths.values(), needed
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"      # pinned kill-at-exec links
    args = cli_args(c["args"])
    assert args.command == "agent" and args.collector.endswith(":50051") and args.host_id == "gpu-node-1"
    assert args.spool_dir == "/var/lib/gpuguard/spool" and args.token_file is None
    # no node mounts any node's token: one join token that can only enroll, the node's own credential on its disk
    assert args.join_token_file.startswith("/etc/gpuguard/join/") and args.state_dir.startswith("/var/lib/gpuguard")
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secrets == ["gpuguard-join-token", "gpuguard-agent-metrics"]       # no agent token of any node
    assert args.tls_ca and any(args.tls_ca.startswith(m) for m in mounts)       # TLS to the collector
    # scrapeable where the manifests say: on the pod network, behind a token the liveness probe presents too
    assert args.metrics.startswith("0.0.0.0:") and args.metrics_token_file.startswith("/etc/gpuguard/metrics/")
    probe = " ".join(c["livenessProbe"]["exec"]["command"])
    assert args.metrics.split(":")[1] in probe and args.metrics_token_file in probe
    assert {"name": "metrics", "containerPort": int(args.metrics.split(":")[1])} in c["ports"]
    assert any(e["name"] == "NODE_NAME" for e in c["env"])


def test_collector_deployment_and_service_agree_with_its_arguments():
    docs = k8s_docs()
    pod = docs["Deployment/gpuguard-collector"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = cli_args(c["args"])
    assert args.command == "collector"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": int(args.listen.rsplit(":", 1)[1]), "http": int(args.http.rsplit(":", 1)[1]),
                     "metrics": int(args.metrics.rsplit(":", 1)[1])}
    svc = docs["Service/gpuguard-collector"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    assert args.tls_cert and args.tls_key and all(any(f.startswith(m + "/") for m in mounts)
                                                  for f in (args.tls_cert, args.tls_key))
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"] and c["readinessProbe"]
    agent_args = cli_args(k8s_docs()["DaemonSet/gpuguard-agent"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert agent_args.collector == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{ports['grpc']}"


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read(DEPLOY / "systemd" / name)
    return cp


def test_systemd_units_run_valid_commands_hardened():
    agent, coll = unit("gpuguard-agent.service"), unit("gpuguard-collector.service")
    a_args = cli_args(shlex.split(agent["Service"]["ExecStart"])[1:])
    c_args = cli_args(shlex.split(coll["Service"]["ExecStart"])[1:])
    assert a_args.command == "agent" and a_args.config == "/etc/gpuguard/agent.toml"
    assert c_args.command == "collector" and c_args.config == "/etc/gpuguard-collector/collector.toml"
    for u in (agent, coll):
        s = u["Service"]
        assert s["Restart"] == "always" and s["NoNewPrivileges"] == "yes" and "gpuguard" in s["StateDirectory"]
    a_state = {d.split("/")[0] for d in agent["Service"]["StateDirectory"].split()}
    c_state = {d.split("/")[0] for d in coll["Service"]["StateDirectory"].split()}
    assert a_state.isdisjoint(c_state), (a_state, c_state)                    # no shared state directory
    assert "CAP_BPF" in agent["Service"]["CapabilityBoundingSet"]
    assert coll["Service"]["CapabilityBoundingSet"] == "" and coll["Service"]["ProtectSystem"] == "strict"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify():
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                             timeout=60)
        problems = [line for line in (out.stdout + out.stderr).splitlines()
                    if line.strip() and "/usr/local/bin/gpuguard is not executable" not in line]
        assert not problems, problems


def test_example_configs_load_through_the_real_loaders():
    cfg = load_config(str(DEPLOY / "agent.toml"), {})
    assert cfg.collector and cfg.metrics == "127.0.0.1:9101"
    ccfg = collector_config(build_parser().parse_args(["collector", "--config", str(DEPLOY / "collector.toml")]))
    assert ccfg.http and ccfg.metrics and ccfg.alert_jsonl


def exposed_names(registry) -> set[str]:
    """Every series name a registry can expose (families with no sample yet included)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {fam.name + sfx for fam in registry.collect() for sfx in suffixes.get(fam.type, ("",))}


def exported_metric_names(tmp_path) -> set[str]:
    app = CollectorApp(CollectorConfig(store=str(tmp_path / "c.db"), auth_dir=str(tmp_path / "auth")))
    fake = SimpleNamespace(
        capture=SimpleNamespace(stats=SimpleNamespace(by_kind={"exec": 1}, actions={"kill_exec": 1}, enrich_failed=0),
                                probes=SimpleNamespace(lost_counts=lambda: {"exec": 0})),
        spool=SimpleNamespace(depth=lambda: 0, size_bytes=lambda: 0, stats=SimpleNamespace(dropped=0)),
        shipper=SimpleNamespace(quarantine=SimpleNamespace(count=0), lag_seconds=lambda now: 0.0, reconnects=0,
                                connected=SimpleNamespace(is_set=lambda: True)),
        enforcer=SimpleNamespace(policy_version=1, programs=lambda: ["kill_exec"]))
    registries = (collector_registry(app), agent_registry(fake))
    for registry in registries:
        assert generate_latest(registry)                       # each renders
    return set().union(*(exposed_names(r) for r in registries))


def used_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bgpuguard_[a-z_]+", expr))


def test_alert_rules_and_dashboard_use_only_exported_metrics(tmp_path):
    exported = exported_metric_names(tmp_path)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"GpuguardAgentDroppingEvents", "GpuguardAgentSilent", "GpuguardDetectionLagging"} <= names
    dash = json.loads((DEPLOY / "grafana" / "gpuguard-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set().union(*(used_metric_names(e) for e in exprs))
    assert used and used <= exported, sorted(used - exported)


def test_the_wheel_carries_probes_page_and_rules(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", str(ROOT),
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("gpuguard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("probes/gpuguard.h", "probes/vocab.h", "probes/enforce_payload.c", "collector/rules/builtin.yaml",
                   "collector/web/static/app.js", "collector/web/static/index.html", "gpuguard_cli/main.py",
                   "agent/ringcb.c", "agent/record_layout.py"):
        assert needed in names, needed
    assert not any(n.startswith(("lab/", "tests/", "bench/")) for n in names)     # dev-only code stays out
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    check = subprocess.run([sys.executable, "-c", "from agent.loader import probe_source; print(len(probe_source()))"],
                           capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site)}, timeout=60)
    assert check.returncode == 0 and int(check.stdout) > 10_000, check.stderr


def unit_dirs(u: configparser.ConfigParser, key: str, base: str) -> list[str]:
    return [f"{base}/{d}" for d in u["Service"].get(key, "").split()]


def test_each_path_the_configs_name_is_one_the_units_let_them_use():
    """Under ProtectSystem=strict the collector writes only its State/Logs directories; a DynamicUser reads its
    config only if the directory is not root-only; the agent's spool and state are in its own directory."""
    agent, coll = unit("gpuguard-agent.service"), unit("gpuguard-collector.service")
    ccfg = collector_config(build_parser().parse_args(["collector", "--config", str(DEPLOY / "collector.toml")]))
    writable = unit_dirs(coll, "StateDirectory", "/var/lib") + unit_dirs(coll, "LogsDirectory", "/var/log")
    for path in (ccfg.store, ccfg.auth_dir, ccfg.alert_jsonl):
        assert any(path == d or path.startswith(d + "/") for d in writable), path
    c_args = cli_args(shlex.split(coll["Service"]["ExecStart"].splitlines()[-1])[1:])
    conf_dirs = unit_dirs(coll, "ConfigurationDirectory", "/etc")
    assert any(c_args.config.startswith(d + "/") for d in conf_dirs)
    assert coll["Service"]["DynamicUser"] == "yes" and coll["Service"]["ConfigurationDirectoryMode"] == "0755"
    acfg = load_config(str(DEPLOY / "agent.toml"), {})
    a_dirs = unit_dirs(agent, "StateDirectory", "/var/lib")
    for path in (acfg.spool_dir, acfg.state_dir):
        assert path in a_dirs, path
    assert acfg.join_token_file.startswith("/etc/gpuguard/")                 # ConfigurationDirectory=gpuguard


def test_the_collector_runs_as_an_unprivileged_user_in_the_units_layout(tmp_path):
    """No systemd here to start the units, so their layout is rebuilt under tmp_path and the collector run as
    nobody (what DynamicUser gives it): config root-owned 0644 in a 0755 directory, state 0700 owned by the user.
    A credential root issues with the CLI afterwards is handed to the directory's owner, so the running
    collector verifies it."""
    import os  # noqa: PLC0415

    from lab import CLI as CLI_PREFIX  # noqa: PLC0415
    from lab import Service, free_port  # noqa: PLC0415

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the collector as another user")
    probe = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable,
                            "-c", "import collector.app"], cwd=ROOT, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this checkout's Python: {probe.stderr[-200:]}")
    import tempfile  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="gg-units-"))        # pytest's tmp_path is root-only all the way up
    root.chmod(0o755)
    try:
        run_collector_as_nobody(root, CLI_PREFIX, Service, free_port())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_collector_as_nobody(root: Path, CLI_PREFIX, Service, port: int) -> None:  # noqa: N803
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415

    etc, state, logs = root / "etc-gpuguard-collector", root / "state", root / "log"
    for d, mode in ((etc, 0o755), (state, 0o700), (state / "auth", 0o700), (logs, 0o700)):
        d.mkdir()
        d.chmod(mode)
        if d != etc:
            os.chown(d, 65534, 65534)
    (etc / "collector.toml").write_text(
        f'[collector]\nlisten = "127.0.0.1:{port}"\nstore = "{state}/collector.db"\nauth_dir = "{state}/auth"\n'
        f'alert_jsonl = "{logs}/alerts.jsonl"\n')
    (etc / "collector.toml").chmod(0o644)
    cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
           *CLI_PREFIX, "collector", "--config", str(etc / "collector.toml")]
    col = Service(cmd, root / "collector.log", "collector listening").start()
    try:
        issued = subprocess.run([*CLI_PREFIX, "credentials", "issue", "--role", "reader", "--name", "ops",
                                 "--auth-dir", str(state / "auth")], capture_output=True, text=True, cwd=ROOT)
        assert issued.returncode == 0, issued.stderr
        assert (state / "auth" / "identities.json").stat().st_uid == 65534
        deadline, out = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            out = subprocess.run([*CLI_PREFIX, "jobs", "--collector", f"127.0.0.1:{port}", "--json",
                                  "--token-file", str(state / "auth" / "credentials" / "ops.token")],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode in (0, 5):
                break
            time.sleep(0.2)
        assert out is not None and out.returncode in (0, 5), out.stderr      # served, and the reader accepted
    finally:
        col.stop()


def test_the_image_builds_and_runs_the_cli():
    """deploy/Dockerfile, built by whatever builder this machine has (none here: skipped with the reason)."""
    def works(b: str) -> bool:            # a docker client without a daemon is no builder
        if not shutil.which(b):
            return False
        probe = ["version"] if b == "buildah" else ["info"]
        return subprocess.run([b, *probe], capture_output=True, timeout=30).returncode == 0

    builder = next((b for b in ("docker", "podman", "buildah") if works(b)), None)
    if builder is None:
        pytest.skip("no working image builder (docker or podman with a daemon, or buildah) on this machine")
    tag = "gpuguard-test:ci"
    build = ["bud"] if builder == "buildah" else ["build"]
    out = subprocess.run([builder, *build, "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    if builder != "buildah":
        run = subprocess.run([builder, "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and "collector" in run.stdout, run.stderr[-2000:]


def test_the_worker_unit_and_config_parse_and_are_hardened():
    import tomllib  # noqa: PLC0415

    from collector.worker_app import WorkerConfig  # noqa: PLC0415

    w = unit("gpuguard-worker.service")
    args = cli_args(shlex.split(w["Service"]["ExecStart"])[1:])
    assert args.command == "worker" and args.config == "/etc/gpuguard-worker/worker.toml"
    s = w["Service"]
    assert s["Restart"] == "always" and s["NoNewPrivileges"] == "yes" and s["CapabilityBoundingSet"] == ""
    assert s["StateDirectory"].split()[0] == "gpuguard-worker" and s["ProtectSystem"] == "strict"
    cfg = WorkerConfig(**tomllib.loads((DEPLOY / "worker.toml").read_text())["worker"])
    assert cfg.log.count("nats://") == 3 and cfg.store.startswith("postgresql://") and cfg.partitions == 16
    assert cfg.metrics and cfg.auth_dir.startswith("/var/lib/gpuguard-worker/")
    assert cfg.log_creds.endswith("nats.creds") and "nats.creds" in s["LoadCredential"]   # never a log without
