"""Rules -> what the kernel enforces (a gpuguard.v1.Policy): which rules the kernel programs can take
(``kernel_enforceable``) and their translation into kill-at-exec entries (by name, by trait, by whole argv),
connect deny/allow lists, payload fingerprints and socket denies (``compile_policy``). Pure: no store, no agents."""

from __future__ import annotations

from collector.rules.keys import kernel_keys
from collector.rules.loader import Rule, RuleSet
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import EXEC_TRAIT_BITS

# what the kernel programs can take, per event, from the key registry (each key says which lowering knows it)
KERNEL_EXEC_KEYS = kernel_keys("exec") - {"exec_trait_in"}           # kill_comms entries (by name)
KERNEL_PAYLOAD_KEYS = kernel_keys("payload")
KERNEL_CONNECT_KEYS = kernel_keys("connect") - {"exe_name_in", "daddr_not_in", "dns_name_not_in"}   # deny entries


def denies_by_identity(rule: Rule) -> bool:
    """A connect rule matching only program names: "these programs never connect" (Policy.no_connect)."""
    return rule.event == "connect" and set(rule.match) == {"exe_name_in"}


def kills_by_trait(rule: Rule) -> bool:
    """An exec rule judging only what the image is (exec_trait_in): killed at exec in the kernel, any name;
    an ``unless: exe_name_in`` becomes the entry's exempt comms."""
    return rule.event == "exec" and set(rule.match) == {"exec_trait_in"} and set(rule.unless) <= {"exe_name_in"}


ARGV_KEYS = frozenset({"argv_has", "argv_short_option_in", "argv_uninspectable"})


def kills_by_argv(rule: Rule) -> bool:
    """An exec rule judging the argv (literals, option letters, "uninspectable"), optionally of named programs:
    killed at exec by the kernel's whole-argv scan (probes/enforce_argv.c), however long or many the arguments."""
    keys = set(rule.match)
    return rule.event == "exec" and bool(keys & ARGV_KEYS) and keys <= ARGV_KEYS | {"exe_name_in"} \
        and not rule.unless


def argv_entries(alternatives: list[list[str]]) -> list[tuple[list[str], list[str]]]:
    """argv_has alternatives -> kernel entries (all, any): the single literals share one entry (any of them),
    each conjunction is its own (all of them); no alternatives: one entry on the other keys alone."""
    singles = [alt[0] for alt in alternatives if len(alt) == 1]
    entries = [([], singles)] if singles else []
    entries += [(alt, []) for alt in alternatives if len(alt) > 1]
    return entries or [([], [])]


def denies_socket(rule: Rule) -> bool:
    """A socket rule naming only kinds (raw-ip, icmp): refused at socket() in the kernel."""
    return rule.event == "socket" and set(rule.match) == {"socket_kind_in"} and not rule.unless


def is_allowlist(rule: Rule) -> bool:
    """"Anything outside these networks and these names" (daddr_not_in, dns_name_not_in): an egress allowlist,
    enforced in the kernel (names through the addresses the job's trusted DNS answers gave for them)."""
    keys = set(rule.match)
    return rule.event == "connect" and bool(keys) and keys <= {"daddr_not_in", "dns_name_not_in"}


def watches_escape(rule: Rule) -> bool:
    """A rule on processes leaving their job's cgroup: the kernel watches the job cgroups of its scope."""
    return rule.event == "escape" and set(rule.match) == {"job_escape"} and not rule.unless


def kernel_enforceable(rule: Rule) -> bool:
    keys = set(rule.match)
    if kills_by_trait(rule) or denies_socket(rule) or kills_by_argv(rule) or watches_escape(rule):
        return True
    if rule.event == "exec":
        return "exe_name_in" in keys and keys <= KERNEL_EXEC_KEYS and not rule.unless
    if rule.event == "connect":
        allowlist = is_allowlist(rule)
        return bool(keys) and (keys <= KERNEL_CONNECT_KEYS or allowlist or denies_by_identity(rule)) \
            and not rule.unless
    return rule.event == "payload" and keys <= KERNEL_PAYLOAD_KEYS and set(rule.unless) <= {"exe_name_in"}


def payload_watch(rule: Rule, scope: ppb.Scope, drop: bool) -> ppb.PayloadWatch:
    """The fingerprint of a payload rule, for the agents' egress hook (dropping only if drop)."""
    pw = ppb.PayloadWatch(rule_id=rule.id, scope=scope, drop=drop, stratum="stratum" in rule.match,
                          exempt=[str(n)[:15] for n in rule.unless.get("exe_name_in", [])])
    spec = rule.match.get("payload")
    if spec is not None:
        pw.pattern, pw.mask, pw.min_len = spec.pattern, spec.mask, spec.min_len
        pw.offset_min, pw.offset_max = spec.offset_min, spec.offset_max
    return pw


def _scopes(rs: RuleSet, rule: Rule) -> tuple[ppb.Scope | None, ppb.Scope | None]:
    """(scope where the rule enforces, scope where it only monitors)."""
    default = rule.mode or rs.default_mode
    other = [j for j, m in rs.job_modes.items() if m != default]
    main = ppb.Scope(job_kinds=rule.scope.get("job_kinds", []), job_ids=rule.scope.get("job_ids", []),
                     host_wide=not rule.scope, exclude_job_ids=other)
    flipped = ppb.Scope(job_ids=other) if other else None
    if default == "enforce":
        return main, flipped
    return flipped, main


def compile_policy(rs: RuleSet, version: int) -> ppb.Policy:
    policy = ppb.Policy(version=version, rules=sorted(rs.rules))
    for rule in rs.rules.values():
        if rule.event == "payload":       # only the kernel sees payloads: every payload rule is a fingerprint
            enforce, monitor = _scopes(rs, rule)
            drop = rule.action in ("block", "kill") and kernel_enforceable(rule)
            for scope, may_drop in ((enforce, drop), (monitor, False)):
                if scope is not None:
                    policy.payload.append(payload_watch(rule, scope, may_drop))
            continue
        if watches_escape(rule):          # watched whatever the action: the kernel is the only one who sees it
            enforce, monitor = _scopes(rs, rule)
            for scope, may_kill in ((enforce, rule.action in ("block", "kill")), (monitor, False)):
                if scope is not None:
                    policy.escape.add(rule_id=rule.id, scope=scope, kill=may_kill)
            continue
        if rule.action not in ("block", "kill") or not kernel_enforceable(rule):
            continue
        enforce, monitor = _scopes(rs, rule)
        if enforce is None:
            continue
        if denies_socket(rule):
            policy.deny_sockets.add(rule_id=rule.id, scope=enforce, kinds=rule.match["socket_kind_in"])
        elif kills_by_trait(rule):
            bits = 0
            for trait in rule.match["exec_trait_in"]:
                bits |= EXEC_TRAIT_BITS[trait]
            policy.kill_traits.add(rule_id=rule.id, scope=enforce, traits=bits,
                                   exempt=[str(n)[:15] for n in rule.unless.get("exe_name_in", [])])
        elif kills_by_argv(rule):
            for all_of, any_of in argv_entries(rule.match.get("argv_has", [])):
                policy.argv_kill.add(rule_id=rule.id, scope=enforce, all=all_of, any=any_of,
                                     comms=[str(n)[:15] for n in rule.match.get("exe_name_in", [])],
                                     options=rule.match.get("argv_short_option_in", ""),
                                     uninspectable=bool(rule.match.get("argv_uninspectable")))
        elif rule.event == "exec":
            for name in rule.match["exe_name_in"]:
                network = bool(rule.match.get("stdio_network"))
                policy.kill.add(rule_id=rule.id, comm=str(name)[:15], scope=enforce,
                                options=rule.match.get("argv_short_option_in", ""),
                                stdio_socket=network or bool(rule.match.get("stdio_socket")),
                                stdio_pipe_network=network,
                                stdio_pty_network=bool(rule.match.get("stdio_pty_network")))
        elif denies_by_identity(rule):
            for name in rule.match["exe_name_in"]:
                policy.no_connect.add(rule_id=rule.id, comm=str(name)[:15], scope=enforce)
        elif is_allowlist(rule):
            policy.allow.add(rule_id=rule.id, cidrs=rule.match.get("daddr_not_in", []), scope=enforce,
                             names=rule.match.get("dns_name_not_in", []))
        elif rule.event == "connect":
            ports = rule.match.get("dport_in", [0])
            cidrs = rule.match.get("daddr_cidr_in", ["0.0.0.0/0", "::/0"])
            for cidr in cidrs:
                for port in ports:
                    policy.deny.add(rule_id=rule.id, cidr=cidr, port=port, scope=enforce)
    for rule in rs.rules.values():
        if rule.event == "exec" and rule.action == "kill" and "sha256_in" in rule.match:
            enforce, _ = _scopes(rs, rule)
            if enforce:
                for digest in rule.match["sha256_in"]:
                    policy.kill.add(rule_id=rule.id, sha256=digest, scope=enforce)
    return policy
