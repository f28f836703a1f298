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
KILL_ESCAPE = ACTION_NAMES[pb.ACTION_KILL_ESCAPE]
SEEN_ESCAPE = ACTION_NAMES[pb.ACTION_SEEN_ESCAPE]
KILL_BIND_SHELL = ACTION_NAMES[pb.ACTION_KILL_BIND_SHELL]
SEEN_AGENT_SIGNAL = ACTION_NAMES[pb.ACTION_SEEN_AGENT_SIGNAL]

STRATUM_ACTIONS = (DROP_STRATUM, SEEN_STRATUM)
PAYLOAD_ACTIONS = (DROP_STRATUM, SEEN_STRATUM, DROP_PAYLOAD, SEEN_PAYLOAD)   # the egress hook's verdicts
SEEN_ACTIONS = (SEEN_STRATUM, SEEN_PAYLOAD, SEEN_REVERSE_SHELL, SEEN_ESCAPE,   # reported, nothing was done
                SEEN_AGENT_SIGNAL)
ESCAPE_ACTIONS = (KILL_ESCAPE, SEEN_ESCAPE)                                      # a process left its job's cgroup
TAMPER_ACTIONS = (SEEN_AGENT_SIGNAL,)                                            # the agent itself was acted on

JOB_KINDS: dict[int, str] = {v: n.removeprefix("JOB_KIND_").lower() for n, v in pb.JobKind.items() if v}
JOB_HOST, JOB_SLURM, JOB_K8S = JOB_KINDS[pb.JOB_KIND_HOST], JOB_KINDS[pb.JOB_KIND_SLURM], JOB_KINDS[pb.JOB_KIND_K8S]
JOB_CONTAINER, JOB_SYSTEMD = JOB_KINDS[pb.JOB_KIND_CONTAINER], JOB_KINDS[pb.JOB_KIND_SYSTEMD]
KILL_ACTIONS = (KILL_EXEC, KILL, KILL_TREE, KILL_BIND_SHELL)

# What an exec is (ExecTrait bits set by the kernel), by name: image_nolink, via_loader, ld_preload, ...
EXEC_TRAITS: dict[int, str] = {v: n.removeprefix("TRAIT_").lower() for n, v in pb.ExecTrait.items() if v}
EXEC_TRAIT_BITS: dict[str, int] = {n: v for v, n in EXEC_TRAITS.items()}


def trait_names(bits: int) -> list[str]:
    return [name for bit, name in EXEC_TRAITS.items() if bits & bit]


# -- the option-letter rule (C twin: option_letters() in probes/gpuguard.h) ------------------
# A kill rule can say "ssh, but only with -R/-D/-w". Every letter of a short-option cluster counts,
# however long the cluster ("-fNqCD" -> f, N, q, C, D), up to the first letter that takes a value
# in ssh's grammar ("-oDynamicForward=1080" -> o; "-lwww" -> l): the rest of the cluster is that
# value. A non-letter ends the cluster too ("-R8080:h:22" -> R).
OPTION_CLUSTER_MAX = 48                       # letters looked at per argument (the kernel's loop bound)
VALUE_LETTERS = frozenset("BbcDEeFIiJLlmOoPpQRSWw")   # ssh options that take an argument


def option_letters(argv: list[str]) -> set[str]:
    letters: set[str] = set()
    for arg in argv[1:]:
        if len(arg) < 2 or arg[0] != "-" or arg[1] == "-":
            continue
        for c in arg[1:1 + OPTION_CLUSTER_MAX]:
            if not (c.isascii() and c.isalpha()):
                break
            letters.add(c)
            if c in VALUE_LETTERS:
                break
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
