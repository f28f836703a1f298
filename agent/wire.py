"""Spool records (dicts) -> protobuf ``gpuguard.v1.Event``: the one wire serialisation."""

from __future__ import annotations

from gpuguard.v1 import events_pb2 as pb

BODY_TYPES = {"exec": pb.Exec, "connect": pb.Connect, "gpu_open": pb.GpuOpen, "exit": pb.Exit,
              "gap": pb.Gap, "enforcement": pb.Enforcement}


def _process(msg: pb.Process, proc: dict) -> None:
    for key, value in proc.items():
        if key == "ancestors":
            for a in value:
                msg.ancestors.add(pid=a["pid"], key=a["key"], comm=a["comm"], exe=a["exe"], argv=a["argv"])
        elif key == "argv":
            msg.argv.extend(value)
        else:
            setattr(msg, key, value)


def to_event(rec: dict) -> pb.Event:
    ev = pb.Event(seq=rec["seq"], ts_ns=rec.get("ts_ns", 0), boot_id=rec.get("boot_id", ""))
    if "proc" in rec:
        _process(ev.process, rec["proc"])
    if "job" in rec:
        ev.job.kind, ev.job.id, ev.job.name = rec["job"]["kind"], rec["job"]["id"], rec["job"]["name"]
    kind = rec["kind"]
    if kind == "status":
        st = rec["status"]
        ev.status.CopyFrom(pb.AgentStatus(**{k: v for k, v in st.items() if k != "kernel_lost"}))
        ev.status.kernel_lost.update(st.get("kernel_lost", {}))
    else:
        getattr(ev, kind).CopyFrom(BODY_TYPES[kind](**rec[kind]))
    return ev
