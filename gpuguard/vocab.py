"""The vocabulary shared by the probes, the agent and the collector, derived from the proto enums.

One place: ``proto/gpuguard/v1/events.proto`` (``KernelEventKind``, ``EnforcementAction``); the C
side is generated from the same enums (``probes/vocab.h``, scripts/gen_vocab.py). On the wire an
enforcement action is the lower-case enum name without its prefix.
"""

from __future__ import annotations

from gpuguard.v1 import events_pb2 as pb

KIND_NAMES: dict[int, str] = {v: n.removeprefix("KIND_").lower() for n, v in pb.KernelEventKind.items() if v}
ACTION_NAMES: dict[int, str] = {v: n.removeprefix("ACTION_").lower()
                                for n, v in pb.EnforcementAction.items() if v}

KILL_EXEC = ACTION_NAMES[pb.ACTION_KILL_EXEC]
DENY_CONNECT = ACTION_NAMES[pb.ACTION_DENY_CONNECT]
DROP_STRATUM = ACTION_NAMES[pb.ACTION_DROP_STRATUM]
SEEN_STRATUM = ACTION_NAMES[pb.ACTION_SEEN_STRATUM]
KILL = ACTION_NAMES[pb.ACTION_KILL]
KILL_TREE = ACTION_NAMES[pb.ACTION_KILL_TREE]

STRATUM_ACTIONS = (DROP_STRATUM, SEEN_STRATUM)
KILL_ACTIONS = (KILL_EXEC, KILL, KILL_TREE)
