"""Human one-liners and JSON lines for events printed on the agent's stdout (same wording as the CLI)."""

from __future__ import annotations

import json
import time

from gpuguard.render import describe_event, safe, to_json
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import JOB_HOST


def format_line(ev: pb.Event) -> str:
    ts = ev.ts_ns / 1e9
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
    p, job = ev.process, ev.job
    job_label = job.id if job.kind == JOB_HOST else f"{job.kind}:{job.id}"
    return safe(f"{stamp} {job_label:<20} {p.pid:>7} {p.ppid:>7} {p.comm:<16} {describe_event(ev)}")


HEADER_LINE = f"{'TIME':<12} {'JOB':<20} {'PID':>7} {'PPID':>7} {'COMM':<16} EVENT"


def format_json(ev: pb.Event) -> str:
    return json.dumps(to_json(ev), separators=(",", ":"))
