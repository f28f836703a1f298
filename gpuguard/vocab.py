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
DROP_PAYLOAD = ACTION_NAMES[pb.ACTION_DROP_PAYLOAD]
SEEN_PAYLOAD = ACTION_NAMES[pb.ACTION_SEEN_PAYLOAD]
DENY_PIPE_CONNECT = ACTION_NAMES[pb.ACTION_DENY_PIPE_CONNECT]
SEEN_REVERSE_SHELL = ACTION_NAMES[pb.ACTION_SEEN_REVERSE_SHELL]

STRATUM_ACTIONS = (DROP_STRATUM, SEEN_STRATUM)
PAYLOAD_ACTIONS = (DROP_STRATUM, SEEN_STRATUM, DROP_PAYLOAD, SEEN_PAYLOAD)   # the egress hook's verdicts
SEEN_ACTIONS = (SEEN_STRATUM, SEEN_PAYLOAD, SEEN_REVERSE_SHELL)              # reported, nothing was done

JOB_KINDS: dict[int, str] = {v: n.removeprefix("JOB_KIND_").lower() for n, v in pb.JobKind.items() if v}
JOB_HOST, JOB_SLURM, JOB_K8S = JOB_KINDS[pb.JOB_KIND_HOST], JOB_KINDS[pb.JOB_KIND_SLURM], JOB_KINDS[pb.JOB_KIND_K8S]
JOB_CONTAINER, JOB_SYSTEMD = JOB_KINDS[pb.JOB_KIND_CONTAINER], JOB_KINDS[pb.JOB_KIND_SYSTEMD]
KILL_ACTIONS = (KILL_EXEC, KILL, KILL_TREE)


# -- the option-letter rule (C twin: option_letters() in probes/gpuguard.h) ------------------
# A kill rule can say "ssh, but only with -R/-D/-w". The first letter of a short-option cluster
# always counts ("-R8080:h:22", "-oExitOnForwardFailure" -> R, o); the others only when the whole
# cluster is at most 4 letters ("-NfR" -> N, f, R): longer clusters are an option glued to its value.
OPTION_CLUSTER_MAX = 4


def option_letters(argv: list[str]) -> set[str]:
    letters: set[str] = set()
    for arg in argv[1:]:
        if len(arg) < 2 or arg[0] != "-" or arg[1] == "-":
            continue
        cluster = arg[1:]
        if cluster[0].isascii() and cluster[0].isalpha():
            letters.add(cluster[0])
        if len(cluster) <= OPTION_CLUSTER_MAX and all(c.isascii() and c.isalpha() for c in cluster):
            letters.update(cluster)
    return letters


def option_mask(letters: str) -> int:
    """The kernel's bit layout for option letters: a-z -> bits 0-25, A-Z -> bits 26-51."""
    mask = 0
    for c in letters:
        if "a" <= c <= "z":
            mask |= 1 << (ord(c) - ord("a"))
        elif "A" <= c <= "Z":
            mask |= 1 << (26 + ord(c) - ord("A"))
        else:
            raise ValueError(f"option letters must be a-z/A-Z, got {c!r}")
    return mask
