"""``gpuguard``: one command for the agent, the collector and incident-response queries.

The top floor: it imports agent/ and collector/, which import only the shared floor
(``gpuguard``: the contract, TLS, credentials, vocabulary, rendering); nothing imports this.

Exit codes: 0 ok, 1 failure, 2 bad usage or config, 3 missing prerequisite
(root, BPF, headers, tracefs), 4 collector unreachable, 5 nothing found,
6 not authorised (no or wrong credential, or a role without the right), 7 store
unusable (corrupt or unreadable database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_PREREQ, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4, 5
EXIT_DENIED, EXIT_STORE = 6, 7
EXIT_CODES_TEXT = ("Exit codes: 0 ok, 1 failure, 2 bad usage/config, 3 missing prerequisite, 4 collector unreachable, "
                   "5 nothing found, 6 not authorised, 7 store unusable.")
DEFAULT_COLLECTOR = "127.0.0.1:50051"
# Event.body kinds a timeline can hold (all but the agent's status); tests/test_proto_fresh.py keeps it equal to
# the proto's oneof (kept literal here: the CLI imports no protobuf module before it needs one)
EVENT_KINDS = ("exec", "connect", "gpu_open", "exit", "gap", "enforcement", "tls", "dns", "datagram", "socket",
               "capture_loss", "gpu_usage", "inbound", "listen")

log = logging.getLogger("gpuguard")


MAX_TIME_NS = (1 << 63) - 1     # int64 on the wire


def parse_time(text: str) -> int:
    """'10m', '2h', '3d' ago; epoch seconds; or an ISO date-time -> wall-clock ns (a clear error if out of range)."""
    if not text:
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    value = None
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        value = time.time_ns() - int(float(m.group(1)) * mult * 1e9)
    elif re.fullmatch(r"\d+(?:\.\d+)?", text):
        value = int(float(text) * 1e9)
    if value is not None:
        if not 0 <= value <= MAX_TIME_NS:
            raise argparse.ArgumentTypeError(f"time {text!r} is out of range (before 1970 or after 2262)")
        return value
    from datetime import datetime  # noqa: PLC0415

    try:
        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot read time {text!r}: use 10m, 2h, epoch seconds or ISO") from exc


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


# -- agent / collector -----------------------------------------------------------
def cmd_agent(args) -> int:
    from agent.config import ConfigError, load_config  # noqa: PLC0415
    from agent.main import run_agent  # noqa: PLC0415

    overrides = {"collector": args.collector, "spool_dir": args.spool_dir, "state_dir": args.state_dir,
                 "host_id": args.host_id, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
                 "token_file": args.token_file, "join_token_file": args.join_token_file, "auth_dir": args.auth_dir,
                 "status_interval_s": args.status_interval, "capture_budget_per_s": args.capture_budget,
                 "metrics": args.metrics, "metrics_token_file": args.metrics_token_file,
                 "spool_fsync_ms": args.spool_fsync_ms, "drain_max_ms": args.drain_max_ms}
    if args.no_enforce:
        overrides["enforce"] = False
    if args.no_packet_sockets:
        overrides["packet_sockets"] = False
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        log.error("config: %s", exc)
        return EXIT_CONFIG
    bad = collector_address_problem(cfg.collector)
    if bad:
        log.error("config: collector %r: %s", cfg.collector, bad)
        return EXIT_CONFIG
    mode = "" if args.quiet else ("json" if args.json else "human")
    if not cfg.collector and args.quiet:
        log.warning("--quiet without --collector: events go nowhere")
    return run_agent(cfg, mode)


def collector_address_problem(targets: str) -> str:
    """What is wrong with a collector address list (HOST:PORT[,HOST:PORT...]), or "": caught at start, not
    retried for ever."""
    for target in filter(None, (t.strip() for t in (targets or "").split(","))):
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"{target!r} is not HOST:PORT (e.g. collector.example:50051)"
        if any(c.isspace() for c in host):
            return f"{target!r}: a host name has no spaces"
    return ""


class ConfigProblem(ValueError):
    """A bad collector config file or setting (exit code 2)."""


def collector_config(args):
    from collector.app import CollectorConfig  # noqa: PLC0415

    values = {}
    if args.config:
        try:
            values = tomllib.loads(Path(args.config).read_text()).get("collector", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigProblem(f"config {args.config}: {exc}") from exc
    for key in ("listen", "store", "retention_days", "rules_dir", "tls_cert", "tls_key", "tls_client_ca",
                "auth_dir", "http", "metrics", "alert_jsonl", "alert_syslog", "alert_webhook", "detector_lease_s",
                "log", "log_partitions", "log_creds", "log_tls_ca"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.resolve_domains:
        values["resolve_domains"] = True
    try:
        cfg = CollectorConfig(**values)
    except TypeError as exc:
        raise ConfigProblem(f"bad setting: {exc}") from exc
    log_problem(cfg.log, cfg.log_partitions, cfg.log_creds, cfg.log_tls_ca)
    return cfg


def log_problem(urls: str, partitions: int, creds: str = "", tls_ca: str = "") -> None:
    """A bad --log, partition count or log credential is a config error (exit 2), said before anything starts
    (and before anything connects)."""
    if not urls:
        return
    from collector.nats_log import connect_auth, parse_urls  # noqa: PLC0415

    try:
        connect_auth(parse_urls(urls), creds, tls_ca)
    except (ValueError, OSError) as exc:
        raise ConfigProblem(str(exc)) from exc
    if not 1 <= partitions <= 4096:
        raise ConfigProblem(f"--log-partitions {partitions}: between 1 and 4096")


def cmd_worker(args) -> int:
    """The consumer side of --log: leases partitions, loads them into the store, detects."""
    import threading  # noqa: PLC0415

    from collector.worker_app import WorkerApp, WorkerConfig  # noqa: PLC0415

    values = {}
    if args.config:
        try:
            values = tomllib.loads(Path(args.config).read_text()).get("worker", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.error("gpuguard worker: config %s: %s", args.config, exc)
            return EXIT_CONFIG
    for key in ("log", "store", "rules_dir", "partitions", "lease_s", "alert_jsonl", "alert_syslog",
                "alert_webhook", "name", "metrics", "auth_dir", "log_creds", "log_tls_ca"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    try:
        cfg = WorkerConfig(**values)
        if not cfg.log or not cfg.store:
            raise ConfigProblem("a worker needs --log nats://HOST:PORT[,...] and --store postgresql://...")
        log_problem(cfg.log, cfg.partitions, cfg.log_creds, cfg.log_tls_ca)
    except (TypeError, ConfigProblem) as exc:
        log.error("gpuguard worker: %s", exc)
        return EXIT_CONFIG
    try:
        app = WorkerApp(cfg)
    except Exception as exc:   # the log or the store is unreachable at start
        log.error("cannot start worker: %s: %s", type(exc).__name__, exc)
        return EXIT_UNREACHABLE
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        app.run(stop)
    except OSError as exc:              # the metrics address is taken or not ours
        log.error("cannot start worker: %s", exc)
        app.close()
        return EXIT_FAILURE
    return EXIT_OK


def cmd_collector(args) -> int:
    from collector.app import CollectorApp  # noqa: PLC0415
    from collector.store.sqlite import StoreCorrupt  # noqa: PLC0415
    from gpuguard.credentials import CredentialError  # noqa: PLC0415

    try:
        app = CollectorApp(collector_config(args))
    except ConfigProblem as exc:
        log.error("gpuguard collector: %s", exc)
        return EXIT_CONFIG
    except StoreCorrupt as exc:
        log.error("cannot start collector: store unusable: %s", exc)
        return EXIT_STORE
    except CredentialError as exc:
        log.error("cannot start collector: credentials: %s", exc)
        return EXIT_CONFIG
    except (OSError, ValueError) as exc:
        log.error("cannot start collector: %s", exc)
        return EXIT_FAILURE
    try:
        asyncio.run(app.serve())
    except OSError as exc:              # the address is taken (another collector?) or not ours to bind
        log.error("cannot start collector: %s (is another collector already listening there?)", exc)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_up(args) -> int:
    """Collector in the background + agent in the foreground on this host."""
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data, 0o700)          # the store holds every job's argv: readable by root only, also if made 0755 earlier
    exe = [sys.executable, "-m", "gpuguard_cli.main"]
    log_path = data / "collector.log"
    with open(log_path, "ab") as log_file:
        extra = [*(["--http", args.http] if args.http else []), *(["--metrics", args.metrics] if args.metrics else [])]
        collector = subprocess.Popen([*exe, "collector", "--listen", args.listen, "--store",
                                      str(data / "collector.db"), *extra], stdout=log_file, stderr=log_file)
    print(f"collector: pid {collector.pid}, listening on {args.listen}, store {data / 'collector.db'}, "
          f"log {log_path}", file=sys.stderr)
    gg = Path(sys.executable).parent / "gpuguard"
    print("agent: starting; live events follow. In another terminal try:\n"
          f"  {gg} jobs --collector {args.listen}\n"
          f"  {gg} timeline host --since 5m --collector {args.listen}\n"
          f"  {gg} alerts --collector {args.listen}\n"
          + (f"  the timeline page: http://{args.http}/ (a reader token: gpuguard credentials issue --role reader "
             "--name me)\n" if args.http else "")
          + "Press Ctrl-C to stop both.\n", file=sys.stderr)
    agent_args = [*exe, "agent", "--collector", args.listen, "--spool-dir", str(data / "spool"),
                  "--state-dir", str(data / "agent")]
    if args.json:
        agent_args.append("--json")
    agent = subprocess.Popen(agent_args)
    try:
        rc = agent.wait()
    except KeyboardInterrupt:
        agent.terminate()
        rc = agent.wait()
    finally:
        collector.terminate()
        collector.wait(10)
    return rc


def cmd_demo(args) -> int:
    """The demo lives in the source checkout's dev-only ``lab`` package (fake pool, netns sshd), not in
    the installed one: run it from a checkout (``make demo``)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "lab" / "demo.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from lab.demo import run_demo  # noqa: PLC0415
    except ImportError:
        print("gpuguard demo: the demo runs from a source checkout (it needs the dev-only lab/): `make demo`",
              file=sys.stderr)
        return EXIT_PREREQ
    return run_demo(args.monitor)


def cmd_try(args) -> int:
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
    from gpuguard_cli.try_it import run_try  # noqa: PLC0415

    if os.geteuid() != 0:
        print("gpuguard try: run as root (it makes a scratch job cgroup)", file=sys.stderr)
        return EXIT_PREREQ
    return run_try(lambda job: list(_call(args, "ListAlerts", cpb.AlertsRequest(job_id=job)).alerts), args.timeout)


# -- queries ----------------------------------------------------------------------
def _stub(args):
    import grpc  # noqa: PLC0415

    from gpuguard.tls import open_channel  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2_grpc as cgrpc  # noqa: PLC0415

    channel = open_channel(args.collector, args.tls_ca or "", args.tls_cert or "", args.tls_key or "",
                           options=[("grpc.max_receive_message_length", 16 << 20)])   # a reply is <= 12 MiB
    return cgrpc.QueryStub(channel), grpc


def _credential(args) -> list[tuple[str, str]] | None:
    """The token this command presents: --token-file, else the local admin (then reader) credential."""
    from gpuguard.credentials import CredentialError, bearer, find_token  # noqa: PLC0415

    try:
        token = find_token(args.token_file or "", "admin", directory=args.auth_dir) or \
            find_token("", "reader", directory=args.auth_dir)
    except CredentialError as exc:
        print(f"gpuguard: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from exc
    return bearer(token)


def _call(args, method: str, request):
    stub, grpc = _stub(args)
    try:
        return getattr(stub, method)(request, timeout=args.timeout, metadata=_credential(args))
    except grpc.RpcError as exc:
        print(f"gpuguard: collector {args.collector}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise SystemExit(EXIT_DENIED) from exc
        raise SystemExit(EXIT_UNREACHABLE) from exc


def _call_pages(args, method: str, request, field: str, limit: int):
    """A paged answer whole: the collector bounds each reply by bytes; follow next_cursor until limit rows or the
    end, saying on a terminal how far it got (a job of long command lines is many pages)."""
    reply = _call(args, method, request)
    pages = 1
    while reply.truncated and reply.next_cursor and len(getattr(reply, field)) < limit:
        if sys.stderr.isatty():
            print(f"\rgpuguard: {len(getattr(reply, field))} {field} in {pages} pages...", end="", file=sys.stderr)
        request.cursor = reply.next_cursor
        if hasattr(request, "limit"):
            request.limit = limit - len(getattr(reply, field))
        page = _call(args, method, request)
        getattr(reply, field).extend(getattr(page, field))
        reply.truncated, reply.next_cursor = page.truncated, page.next_cursor
        pages += 1
    if pages > 1 and sys.stderr.isatty():
        print(file=sys.stderr)
    return reply


def _print(args, reply, human) -> None:
    from gpuguard.render import to_json  # noqa: PLC0415

    if args.json:
        print(json.dumps(to_json(reply), indent=2))
    else:
        print(human(reply))


def cmd_jobs(args) -> int:
    from gpuguard.render import jobs_table  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    reply = _call(args, "ListJobs", cpb.ListJobsRequest(since_ns=args.since, limit=args.limit))
    _print(args, reply, jobs_table)
    return EXIT_OK if reply.jobs else EXIT_NOT_FOUND


def cmd_timeline(args) -> int:
    from gpuguard.render import timeline_view  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    if args.follow:
        return _follow_timeline(args)
    req = cpb.TimelineRequest(job_id=args.job, host=args.host or "", since_ns=args.since, until_ns=args.until,
                              kinds=args.kind or [], subtree_key=args.subtree or "", limit=args.limit)
    reply = _call_pages(args, "Timeline", req, "events", args.limit)
    _print(args, reply, lambda r: timeline_view(args.job, r))
    return EXIT_OK if reply.events else EXIT_NOT_FOUND


def _follow_timeline(args) -> int:
    from gpuguard.render import describe_event, safe, ts  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
    from gpuguard_cli.follow import as_json_line  # noqa: PLC0415

    def item(se):
        ev, p = se.event, se.event.process
        line = as_json_line(se) if args.json else safe(
            f"{ts(ev.ts_ns)}  {se.host_id[:12]:<12}  {p.pid:>7}  {p.comm[:16]:<16}  {describe_event(ev)}")
        return (se.host_id, ev.seq), ev.ts_ns, line

    def fetch(since_ns: int):
        req = cpb.TimelineRequest(job_id=args.job, host=args.host or "", since_ns=since_ns, kinds=args.kind or [],
                                  subtree_key=args.subtree or "", limit=args.limit)
        for se in _call(args, "Timeline", req).events:
            yield item(se)

    push = cpb.FollowRequest(job_id=args.job, host=args.host or "", kinds=args.kind or [], events=True)
    return _follow_until_interrupted(fetch, args, push, lambda it: item(it.event) if it.HasField("event") else None)


def _follow_until_interrupted(fetch, args, push_request=None, item_of=None) -> int:
    """The backlog from the ordinary query, then what the collector pushes (subscribed first)."""
    from gpuguard_cli.follow import Pushed, follow  # noqa: PLC0415

    pushed = None
    if push_request is not None:
        stub, _grpc = _stub(args)
        stream = stub.Follow(push_request, metadata=_credential(args))
        pushed = Pushed(stream, item_of)
    try:
        return follow(fetch, args.since or time.time_ns() - 600 * 10**9, args.interval,
                      out=lambda line: print(line, flush=True), pushed=pushed)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_tree(args) -> int:
    from gpuguard.render import tree_view  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    reply = _call(args, "ProcessTree", cpb.TreeRequest(job_id=args.job, host=args.host or ""))
    _print(args, reply, tree_view)
    return EXIT_OK if reply.nodes else EXIT_NOT_FOUND


def cmd_alerts(args) -> int:
    from gpuguard.render import alerts_explained, alerts_table  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    if args.follow:
        from gpuguard.render import safe, ts  # noqa: PLC0415
        from gpuguard_cli.follow import as_json_line  # noqa: PLC0415

        def item(a):
            line = as_json_line(a) if args.json else alerts_explained([a]) if args.explain else safe(
                f"{ts(a.ts_ns)}  [{a.severity}] {a.rule_id}  {a.job.kind}:{a.job.id}  {a.host_id[:12]}  "
                f"pid {a.process.pid} {a.process.comm}  -> {a.outcome}")
            return (a.id, a.state, a.outcome), a.ts_ns, line

        def fetch(since_ns: int):
            req = cpb.AlertsRequest(job_id=args.job or "", since_ns=since_ns, limit=args.limit,
                                    rule_id=args.rule or "", host=args.host or "")
            for a in _call(args, "ListAlerts", req).alerts:
                yield item(a)

        def pushed_item(it):
            a = it.alert
            if not it.HasField("alert") or (args.rule and a.rule_id != args.rule):
                return None
            return item(a)

        push = cpb.FollowRequest(job_id=args.job or "", host=args.host or "", alerts=True)
        return _follow_until_interrupted(fetch, args, push, pushed_item)
    reply = _call_pages(args, "ListAlerts", cpb.AlertsRequest(job_id=args.job or "", since_ns=args.since,
                                                              limit=args.limit, rule_id=args.rule or "",
                                                              host=args.host or "", until_ns=args.until),
                        "alerts", args.limit)
    _print(args, reply, lambda r: alerts_explained(r.alerts) if args.explain else alerts_table(r.alerts))
    return EXIT_OK if reply.alerts else EXIT_NOT_FOUND       # "nothing found" is 5 for every query


def cmd_connections(args) -> int:
    import ipaddress  # noqa: PLC0415

    from gpuguard.render import fleet_table  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    try:
        ipaddress.ip_network(args.cidr, strict=False)
    except ValueError:
        print(f"gpuguard connections: {args.cidr!r} is not an address or a CIDR (203.0.113.7, 203.0.113.0/24, "
              "2001:db8::/32)", file=sys.stderr)
        return EXIT_CONFIG

    reply = _call_pages(args, "Connections", cpb.ConnectionsRequest(cidr=args.cidr, since_ns=args.since,
                                                                    until_ns=args.until, limit=args.limit),
                        "events", args.limit)
    _print(args, reply, fleet_table)
    return EXIT_OK if reply.events else EXIT_NOT_FOUND


def cmd_egress(args) -> int:
    from collector.rules.loader import load_ruleset, rule_texts  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
    from gpuguard_cli.egress import suggest  # noqa: PLC0415

    networks = args.cluster_network or [str(n) for n in load_ruleset(rule_texts()).lists["cluster_networks"]]
    events = []
    for cidr in ("0.0.0.0/0", "::/0"):
        reply = _call_pages(args, "Connections", cpb.ConnectionsRequest(cidr=cidr, since_ns=args.since,
                                                                        limit=args.limit), "events", args.limit)
        events += [se.event for se in reply.events]
        if reply.truncated:
            print(f"gpuguard egress: more than --limit {args.limit} connects to {cidr}: the suggestion covers the "
                  "first ones only (raise --limit or narrow --since)", file=sys.stderr)
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(args.since / 1e9)) if args.since else "the start"
    text, considered = suggest(events, args.job_kind, networks, since)
    if args.json:
        print(json.dumps({"job_kind": args.job_kind, "connects": considered, "policy_yaml": text}, indent=2))
    else:
        print(text, end="")
    return EXIT_OK if considered else EXIT_NOT_FOUND


def cmd_executions(args) -> int:
    from gpuguard.render import fleet_table  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    if sum(bool(x) for x in (args.sha256, args.exe, args.name)) != 1:
        print("gpuguard executions: give exactly one of --sha256, --exe or --name", file=sys.stderr)
        return EXIT_CONFIG
    reply = _call_pages(args, "Executions", cpb.ExecutionsRequest(sha256=args.sha256 or "", exe=args.exe or "",
                                                                  name=args.name or "", since_ns=args.since,
                                                                  until_ns=args.until, limit=args.limit),
                        "events", args.limit)
    _print(args, reply, fleet_table)
    return EXIT_OK if reply.events else EXIT_NOT_FOUND


def cmd_gpu_users(args) -> int:
    from gpuguard.render import gpu_processes_view  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    reply = _call(args, "GpuProcesses", cpb.GpuProcessesRequest(job_id=args.job))
    _print(args, reply, gpu_processes_view)
    return EXIT_OK if reply.processes else EXIT_NOT_FOUND


def cmd_policy(args) -> int:
    from gpuguard.render import table, to_json  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    if args.action == "apply":
        try:
            text = Path(args.file).read_text()
        except OSError as exc:
            print(f"gpuguard policy apply: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        reply = _call(args, "ApplyPolicy", cpb.ApplyPolicyRequest(rules_yaml=text, source=args.file))
        if reply.error:
            print(f"gpuguard policy apply: rejected: {reply.error}", file=sys.stderr)
            return EXIT_CONFIG
        print(json.dumps(to_json(reply), indent=2) if args.json else
              f"policy version {reply.policy.version} applied; {len(reply.policy.rules)} rules in force")
        return EXIT_OK
    reply = _call(args, "GetPolicy", cpb.PolicyRequest())
    if args.json:
        print(json.dumps(to_json(reply), indent=2))
        return EXIT_OK
    p = reply.policy
    print(f"policy version {p.version}: {len(p.rules)} rules, {len(p.deny)} deny destinations, "
          f"{len(p.kill)} kill-at-exec binaries")
    rows = [[a.host_id[:12], a.version, "yes" if a.connected else "no",
             "current" if a.version == p.version else f"BEHIND ({p.version - a.version})", a.error or "-"]
            for a in reply.agents]
    print(table(rows, ["HOST", "VERSION", "CONNECTED", "STATE", "ERROR"]))
    return EXIT_OK


def cmd_hosts(args) -> int:
    from gpuguard.render import hosts_table  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    if args.action == "forget":
        if not args.host_id:
            print("gpuguard hosts forget: name the host (gpuguard hosts lists them)", file=sys.stderr)
            return EXIT_CONFIG
        done = _call(args, "ForgetHost", cpb.ForgetHostRequest(host_id=args.host_id))
        if args.json:
            print(json.dumps({"host": args.host_id, "forgotten": done.forgotten, "error": done.error}))
        elif done.forgotten:
            print(f"forgot host {args.host_id} (its events stay; it reappears if its agent connects again)")
        if not done.forgotten:
            print(f"gpuguard hosts forget: {done.error}", file=sys.stderr)
            return EXIT_NOT_FOUND if done.error.startswith("no such") else EXIT_CONFIG
        return EXIT_OK
    reply = _call(args, "ListHosts", cpb.HostsRequest())
    _print(args, reply, hosts_table)
    return EXIT_OK if reply.hosts else EXIT_NOT_FOUND


def cmd_audit(args) -> int:
    from gpuguard.render import audit_table  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    reply = _call(args, "ListAudit", cpb.AuditRequest(since_ns=args.since, limit=args.limit))
    _print(args, reply, audit_table)
    return EXIT_OK if reply.entries else EXIT_NOT_FOUND


def parse_duration(text: str) -> float:
    """'90s', '30m', '1h', '2d' or plain seconds."""
    from gpuguard.credentials import CredentialError  # noqa: PLC0415

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise CredentialError(f"bad duration {text!r}: e.g. 90s, 30m, 1h, 2d") from None


def cmd_credentials(args) -> int:
    from gpuguard.credentials import CredentialError, CredentialStore  # noqa: PLC0415
    from gpuguard.render import table, ts  # noqa: PLC0415

    store = CredentialStore(args.auth_dir)
    try:
        if args.action == "issue":
            if not args.name or not args.role:
                print("gpuguard credentials issue: needs --role and --name (and --host for an agent)", file=sys.stderr)
                return EXIT_CONFIG
            store.issue(args.role, args.name, args.host or "")
            print(f"issued {args.role} credential {args.name!r}"
                  f"{f' for host {args.host}' if args.role == 'agent' else ''}: token in {store.token_path(args.name)}"
                  " (copy it to the user or node; the collector keeps only its hash)")
        elif args.action == "join-token":
            name, token = store.issue_join_token(parse_duration(args.ttl))
            if args.json:
                print(json.dumps({"name": name, "token": token, "ttl_s": parse_duration(args.ttl)}))
            else:
                print(token)
                print(f"join token {name}: enrolls new nodes for {args.ttl} (agent --join-token-file FILE); each "
                      "node gets its own credential. Revoke it early with: gpuguard credentials revoke --name "
                      f"{name}", file=sys.stderr)
        elif args.action == "revoke":
            if not store.revoke(args.name or ""):
                print(f"no identity named {args.name!r}", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(f"revoked {args.name!r} (the collector stops accepting it at its next call)")
        else:
            rows = [[r.name, r.role, r.host or "-", ts(r.created_ns),
                     ("expired" if r.expired() else ts(r.expires_ns)) if r.expires_ns else "-", r.sha256[:12]]
                    for r in store.load()]
            if args.json:
                print(json.dumps([dict(zip(["name", "role", "host", "created", "expires", "sha256"], r, strict=True))
                                  for r in rows], indent=2))
            else:
                print(table(rows, ["NAME", "ROLE", "HOST", "CREATED", "EXPIRES", "SHA256"]))
    except CredentialError as exc:
        print(f"gpuguard credentials: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PermissionError as exc:
        print(f"gpuguard credentials: {exc} (credentials are root-only)", file=sys.stderr)
        return EXIT_DENIED
    return EXIT_OK


def tls_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", help="CA certificate of the collector (PEM): connect with TLS")
    p.add_argument("--tls-cert", help="client certificate (PEM), for a collector that requires mTLS")
    p.add_argument("--tls-key", help="client private key (PEM)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuguard",
        description="eBPF security for GPU nodes. The agent watches execve, connect and GPU device opens, "
                    "ties each to its process tree and job, and ships them to a collector that builds per-job "
                    "timelines, detects tunnels and miners, and pushes blocking policy back to agents.",
        epilog=EXIT_CODES_TEXT)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="run the capture agent on this host (root)",
                       description="Load the eBPF probes, print events and/or ship them to a collector. "
                                   "Without --collector, events are only printed.")
    a.add_argument("--config", help="TOML file with an [agent] table (flags win)")
    a.add_argument("--collector", help="collector address HOST:PORT, or a list A:1,B:2 to fail over along; events "
                   "are spooled on disk until acked")
    a.add_argument("--spool-dir", help="spool directory (default /var/lib/gpuguard/spool)")
    a.add_argument("--drain-max-ms", type=int, metavar="MS",
                   help="while records flow, the longest the capture loop waits between drains (default 250; at "
                        "least 50). The wait is set by what drains cost, so a busy slow node spaces them out; a "
                        "first record after a quiet spell is read at once, and kernel kills never wait for it")
    a.add_argument("--spool-fsync-ms", type=int, metavar="MS",
                   help="spooled records reach the disk (fsync) at most this long after they are written (default "
                        "200; 0: every poll). A killed agent loses nothing either way; a host that loses power may "
                        "lose this much that the collector had not acked")
    a.add_argument("--state-dir", help="saved policy and attachments (default /var/lib/gpuguard/agent)")
    a.add_argument("--host-id", help="host id (default /etc/machine-id)")
    a.add_argument("--token-file", help="this agent's credential (default: AUTH_DIR/credentials/agent-HOST.token, "
                                        "then agent.token)")
    a.add_argument("--join-token-file", help="no credential yet: exchange this join token (gpuguard credentials "
                   "join-token) for this node's own, kept in the state dir")
    a.add_argument("--auth-dir", help="credentials directory (default /etc/gpuguard or $GPUGUARD_AUTH_DIR)")
    tls_client_flags(a)
    a.add_argument("--status-interval", type=float, help="seconds between status lines/events (default 10)")
    a.add_argument("--capture-budget", type=int, metavar="N",
                   help="records a second each job cgroup may put on the shared ring (connects, flows, GPU opens; "
                        "default 4000); beyond it they are counted, not sent, and reported as capture_loss records")
    a.add_argument("--json", action="store_true", help="print JSON lines instead of one-liners")
    a.add_argument("--quiet", action="store_true", help="do not print events")
    a.add_argument("--no-enforce", action="store_true", help="ignore blocking policy from the collector")
    a.add_argument("--no-packet-sockets", action="store_true",
                   help="do not watch socket sends and receives for packet (AF_PACKET) sockets: saves ~130 ns per "
                        "send or receive on every socket of the node, and leaves a job's raw frames unseen")
    a.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (off by default; loopback unless --metrics-token-file)")
    a.add_argument("--metrics-token-file", help="bearer token scrapers must present (needed to bind off loopback)")
    a.set_defaults(func=cmd_agent)

    c = sub.add_parser("collector", help="run the collector (gRPC ingest + queries)",
                       description="Receive agent streams, store events (SQLite by default), detect, push policy.")
    c.add_argument("--config", help="TOML file with a [collector] table (flags win)")
    c.add_argument("--listen", help=f"address to listen on (default {DEFAULT_COLLECTOR})")
    c.add_argument("--store", help="SQLite file or sqlite:///PATH (default /var/lib/gpuguard/collector.db)")
    c.add_argument("--retention-days", type=float, help="drop events older than this (default 30)")
    c.add_argument("--rules-dir", help="directory of extra rule YAML files")
    c.add_argument("--auth-dir", help="identities and local credentials (default /etc/gpuguard or "
                                      "$GPUGUARD_AUTH_DIR); made root-only on first start, with an admin and a "
                                      "local-agent credential")
    c.add_argument("--resolve-domains", action="store_true",
                   help="resolve the pool domains named in rules (makes DNS queries; off by default)")
    c.add_argument("--tls-cert", help="server certificate (PEM): serve TLS")
    c.add_argument("--tls-key", help="server private key (PEM)")
    c.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mTLS)")
    c.add_argument("--http", metavar="HOST:PORT",
                   help="serve the timeline page here (off by default; read-only; API calls need a reader token)")
    c.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics here (reader token required)")
    c.add_argument("--alert-jsonl", metavar="FILE", help="append every alert as a JSON line to FILE ('-' = stdout)")
    c.add_argument("--alert-syslog", metavar="TARGET",
                   help="send every alert to syslog: udp://HOST:PORT, tcp://HOST:PORT or a socket path (/dev/log)")
    c.add_argument("--alert-webhook", metavar="URL", help="POST every alert as JSON to URL (queued, retried)")
    c.add_argument("--detector-lease", dest="detector_lease_s", type=float, metavar="SECONDS",
                   help="with several collectors on one store, one detects at a time; another takes over after "
                        "the holder is silent this long (default 10)")
    c.add_argument("--log", metavar="URLS",
                   help="a fleet: publish events to this NATS JetStream log (nats://h1:4222,nats://h2:4222,...) "
                        "instead of storing them; `gpuguard worker` stores and detects. Agents are acked once the "
                        "log has their batch at its replication (3 on a 3-node cluster)")
    c.add_argument("--log-partitions", dest="log_partitions", type=int, metavar="N",
                   help="partitions of the log, by job (default 16; the same on every collector and worker)")
    c.add_argument("--log-creds", metavar="FILE", help="NATS credentials for the log: a .creds file (NATS accounts), "
                   "USER:PASSWORD or a token (required for a log off this host)")
    c.add_argument("--log-tls-ca", metavar="PEM", help="CA of the NATS servers: TLS to the log")
    c.set_defaults(func=cmd_collector)

    w = sub.add_parser("worker", help="a fleet's consumer: lease log partitions, store their events, detect",
                       description="Reads the event log that collectors with --log publish to. Each worker leases "
                                   "an even share of the partitions (partitioned by job), loads their events into "
                                   "the store (COPY, idempotent), runs detection with per-job state, writes alerts "
                                   "and kill orders (delivered by the host's collector). Run as many as wanted; a "
                                   "dead worker's partitions are taken over after the lease time.",
                       epilog=EXIT_CODES_TEXT)
    w.add_argument("--config", help="TOML file with a [worker] table (flags win)")
    w.add_argument("--log", metavar="URLS", help="the NATS URLs the collectors publish to (nats://h1:4222,...)")
    w.add_argument("--store", help="where events, alerts and kill orders go (postgresql://...)")
    w.add_argument("--rules-dir", help="directory of extra rule YAML files (as on the collectors)")
    w.add_argument("--partitions", type=int, help="partitions of the log (default 16; as on the collectors)")
    w.add_argument("--lease", dest="lease_s", type=float, metavar="SECONDS",
                   help="partition lease time: a dead worker's partitions move after this long (default 10)")
    w.add_argument("--name", help="this worker's id in leases and logs (default: random)")
    w.add_argument("--alert-jsonl", metavar="FILE", help="append every alert as a JSON line to FILE ('-' = stdout)")
    w.add_argument("--alert-syslog", metavar="TARGET", help="send every alert to syslog (as the collector)")
    w.add_argument("--alert-webhook", metavar="URL", help="POST every alert as JSON to URL")
    w.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here: partitions held, offsets, lag, events stored and evaluated, "
                        "CPU per phase (off by default; scrapers present a reader token)")
    w.add_argument("--auth-dir", help="identities allowed to read the metrics: the collectors' (default "
                                      "/etc/gpuguard or $GPUGUARD_AUTH_DIR)")
    w.add_argument("--log-creds", metavar="FILE", help="NATS credentials for the log (as the collectors')")
    w.add_argument("--log-tls-ca", metavar="PEM", help="CA of the NATS servers: TLS to the log")
    w.set_defaults(func=cmd_worker)

    u = sub.add_parser("up", help="collector + agent on this host, printing live events")
    u.add_argument("--data-dir", default="/var/lib/gpuguard", help="store, spool and logs (default %(default)s)")
    u.add_argument("--listen", default=DEFAULT_COLLECTOR)
    u.add_argument("--json", action="store_true")
    u.add_argument("--http", metavar="HOST:PORT", help="also serve the timeline page (reader token), e.g. "
                   "127.0.0.1:8080")
    u.add_argument("--metrics", metavar="HOST:PORT", help="also serve the collector's /metrics (reader token)")
    u.set_defaults(func=cmd_up)

    d = sub.add_parser("demo", help="replay the ROME incident on this host (harmless), with the final timeline",
                       description="A Slurm-like job trains on the GPU, then opens a reverse SSH tunnel to a "
                                   "namespace-local sshd and starts a fake miner; gpuguard blocks both.")
    d.add_argument("--monitor", action="store_true", help="only report: let the tunnel and the miner run")
    d.set_defaults(func=cmd_demo)

    tr = sub.add_parser("try", help="see a detection now: a harmless miner-shaped process in a scratch job on "
                        "this host, blocked and alerted (root; an agent and collector running)",
                        description="Starts a copy of /bin/sleep named xmrig with a stratum URL to a closed local "
                                    "port in a scratch Slurm-like job cgroup, and prints the kill and the alerts as "
                                    "they happen. Nothing is mined; nothing leaves the host. Exit 0 when blocked "
                                    "and alerted, 1 when not (no agent shipping to this collector?).")
    tr.add_argument("--collector", default=DEFAULT_COLLECTOR, help="collector address (default %(default)s)")
    tr.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the block and the alerts")
    tr.add_argument("--token-file", help="credential to present (default: the local admin token)")
    tr.add_argument("--auth-dir", help="where local credentials live (default /etc/gpuguard)")
    tls_client_flags(tr)
    tr.set_defaults(func=cmd_try)

    def query(name: str, help_text: str, func, job: bool = False):
        q = sub.add_parser(name, help=help_text, description=help_text)
        if job:
            q.add_argument("job", help="job: kind:id as alerts and the job list show it (slurm:4242) or the id "
                                        "alone (Slurm job id, pod UID, container id, unit, or 'host')")
            q.add_argument("--host", help="only this host")
        q.add_argument("--collector", default=DEFAULT_COLLECTOR, help="collector address (default %(default)s)")
        q.add_argument("--json", action="store_true", help="stable JSON for scripts")
        q.add_argument("--since", type=parse_time, default=0, help="10m, 2h, 1d, epoch seconds or ISO time")
        q.add_argument("--limit", type=int, default=10_000)
        q.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the collector")
        q.add_argument("--token-file", help="credential to present (default: the local admin token, if readable)")
        q.add_argument("--auth-dir", help="where local credentials live (default /etc/gpuguard)")
        tls_client_flags(q)
        q.set_defaults(func=func)
        return q

    query("jobs", "list jobs seen, most recent first", cmd_jobs)
    t = query("timeline", "what a job did, on which hosts, in what order", cmd_timeline, job=True)
    t.add_argument("--until", type=parse_time, default=0)
    t.add_argument("--kind", action="append", choices=list(EVENT_KINDS), help="only these event kinds (repeatable)")
    t.add_argument("--subtree", help="only this process key and its descendants")
    t.add_argument("--follow", action="store_true", help="keep printing new events as they are stored (one line "
                   "each, JSON lines with --json; Ctrl-C stops)")
    t.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --follow")
    query("tree", "a job's process tree", cmd_tree, job=True)
    al = query("alerts", "alerts raised by detection rules", cmd_alerts)
    al.add_argument("--job", help="only this job")
    al.add_argument("--rule", help="only this rule or correlation id")
    al.add_argument("--host", help="only this host")
    al.add_argument("--until", type=parse_time, default=0)
    al.add_argument("--follow", action="store_true", help="keep printing new alerts and alert changes (one line "
                    "each, JSON lines with --json; Ctrl-C stops)")
    al.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --follow")
    al.add_argument("--explain", action="store_true",
                    help="each alert with its evidence in full: matched fields and values, the whole argv, ancestry")
    co = query("connections", "which jobs and hosts connected to an address or network, and when", cmd_connections)
    co.add_argument("cidr", help="an address or a CIDR (203.0.113.7, 203.0.113.0/24, 2001:db8::/32)")
    co.add_argument("--until", type=parse_time, default=0)
    eg = query("egress", "learn a per-job egress policy by name from what jobs really reached (prints a rule)",
               cmd_egress)
    eg.add_argument("action", choices=["suggest"])
    eg.add_argument("--job-kind", default="slurm", help="the job kind to write the policy for (default %(default)s)")
    eg.add_argument("--cluster-network", action="append", metavar="CIDR",
                    help="the cluster's own networks, always allowed (default: the built-in $cluster_networks)")
    ex = query("executions", "which hosts and jobs ran an executable (by sha256, path or name)", cmd_executions)
    ex.add_argument("--sha256", help="the executable's SHA-256 (agents hash executables at exec)")
    ex.add_argument("--exe", help="the executable's path")
    ex.add_argument("--name", help="the executable's file name")
    ex.add_argument("--until", type=parse_time, default=0)
    query("gpu-users", "the processes that opened a GPU in a job, and what else each did", cmd_gpu_users, job=True)
    pol = query("policy", "show the policy in force, or apply a rules file", cmd_policy)
    pol.add_argument("action", choices=["show", "apply"])
    pol.add_argument("file", nargs="?", help="rules YAML (for apply)")
    h = query("hosts", "every agent host: last seen, state (ok/silent/stopped/disconnected), policy and "
                       "enforcement drift, jobs whose capture is incomplete; `hosts forget HOST` drops a "
                       "decommissioned one (admin)", cmd_hosts)
    h.add_argument("action", nargs="?", choices=["list", "forget"], default="list")
    h.add_argument("host_id", nargs="?", help="forget: the host id, as `gpuguard hosts` shows it")
    query("audit", "the append-only audit log: who changed policy or ordered kills, when, from where", cmd_audit)

    cr = sub.add_parser("credentials", help="issue, list or revoke identities (root, on the collector host)",
                        description="Identities have a role: agent (streams for one host), reader (queries), "
                                    "admin (queries + policy). Tokens are written to AUTH_DIR/credentials/NAME.token; "
                                    "the collector keeps only their SHA-256 and picks up changes without a restart.")
    cr.add_argument("action", choices=["issue", "list", "revoke", "join-token"],
                    help="join-token: print a short-lived token that only enrolls new nodes (agent --join-token-file)")
    cr.add_argument("--ttl", default="1h", help="join-token lifetime: 90s, 30m, 1h, 2d (default 1h, at most 7d)")
    cr.add_argument("--role", choices=["agent", "reader", "admin"])
    cr.add_argument("--name", help="identity name (for an agent, e.g. agent-HOSTID)")
    cr.add_argument("--host", help="agent only: the host id it may stream for")
    cr.add_argument("--auth-dir", help="default /etc/gpuguard or $GPUGUARD_AUTH_DIR")
    cr.add_argument("--json", action="store_true")
    cr.set_defaults(func=cmd_credentials)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if getattr(args, "action", None) == "apply" and not args.file:
        parser.error("policy apply needs a FILE")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.func.__name__ in ("cmd_agent", "cmd_collector", "cmd_up"):
        os.umask(0o077)            # stores, spools, state and logs: private to the service's user
    try:
        return args.func(args)
    except BrokenPipeError:                  # `gpuguard ... | head -1`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
