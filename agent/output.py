"""Human one-liners and JSON lines for events printed on the agent's stdout."""

from __future__ import annotations

import errno
import json
import time

from gpuguard.render import access, safe


def _result(code: int) -> str:
    if code >= 0:
        return "ok"
    return errno.errorcode.get(-code, str(code))


def describe(rec: dict) -> str:
    """The kind-specific part of a one-liner."""
    kind = rec["kind"]
    if kind == "exec":
        e = rec["exec"]
        argv = " ".join(e["argv"]).replace("\n", "\\n") + (" ..." if e["argv_truncated"] else "")
        return f"{e['filename']} [{argv}] -> {_result(e['result'])}"
    if kind == "connect":
        c = rec["connect"]
        addr = f"[{c['daddr']}]" if ":" in c["daddr"] else c["daddr"]
        return f"{c['proto']} {addr}:{c['dport']} -> {_result(c['result'])}"
    if kind == "gpu_open":
        g = rec["gpu_open"]
        return f"{g['path']} ({g['major']}:{g['minor']} {access(g['flags'])})"
    if kind == "exit":
        e = rec["exit"]
        return f"signal={e['signal']}" if e.get("signal") else f"code={e['code']}"
    return json.dumps({k: v for k, v in rec.items() if k not in ("proc", "job")})


def format_line(rec: dict) -> str:
    ts = rec["ts_ns"] / 1e9
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
    p, job = rec["proc"], rec["job"]
    job_label = job["id"] if job["kind"] == "host" else f"{job['kind']}:{job['id']}"
    return safe(f"{stamp} {rec['kind']:<8} {job_label:<20} {p['pid']:>7} {p['ppid']:>7} {p['comm']:<16} "
                f"{describe(rec)}")


HEADER_LINE = f"{'TIME':<12} {'KIND':<8} {'JOB':<20} {'PID':>7} {'PPID':>7} {'COMM':<16} DETAIL"


def format_json(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"), default=str)
