"""Load and validate rule files. Every error names the file, the line and the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
import yaml.composer

from collector.rules.keys import ALL_EVENTS, FINGERPRINT_KEYS, MATCH_KEYS, REGISTRY, KeyValueError

BUILTIN = Path(__file__).with_name("builtin.yaml")
SEVERITIES = ("info", "low", "medium", "high", "critical")
EVENTS = ALL_EVENTS
ACTIONS = ("signal", "alert", "block", "kill")
MODES = ("monitor", "enforce")
SCOPE_KEYS = ("job_kinds", "job_ids", "hosts")
OUTSIDE_ACTIONS = ("", "alert")       # what a rule does outside its scope: nothing, or alert (never block or kill)
OUTSIDE_SUFFIX = ".outside-scope"     # the id of such a match: its own alerts, never a correlation's input


class RuleError(ValueError):
    def __init__(self, source: str, line: int, where: str, message: str) -> None:
        message = message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "…"
        where = where if len(where) <= 200 else where[:200] + "…"
        super().__init__(f"{source}:{line}: {where}: {message}")
        self.source, self.line, self.where = source, line, where


MAX_RULES_BYTES = 1 << 20
MAX_ERROR_CHARS = 500


class _LineLoader(yaml.SafeLoader):
    """Records the line of every mapping and of each of its keys; refuses anchors and aliases.

    Without aliases a document cannot expand beyond its own size (no "billion laughs").
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in rule files",
                                              event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "YAML anchors (&name) are not allowed in rule files",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=True)
        mapping["__line__"] = node.start_mark.line + 1
        mapping["__lines__"] = {k.value: k.start_mark.line + 1 for k, _v in node.value if hasattr(k, "value")}
        return mapping


@dataclass
class Rule:
    id: str
    description: str
    severity: str
    event: str
    match: dict
    action: str
    mode: str = ""                       # "" = the ruleset's default_mode
    unless: dict = field(default_factory=dict)
    scope: dict = field(default_factory=dict)
    outside_scope: str = ""              # "alert": also evaluated outside the scope, and only alerted there
    source: str = ""
    line: int = 0


@dataclass
class Correlation:
    id: str
    description: str
    severity: str
    requires: list[str]             # every rule id it can use (what the correlator indexes it by)
    within_s: float
    action: str
    same_process: bool = False
    same_tree: bool = False         # the hits' processes are one process, or one is the other's parent or ancestor
    mode: str = ""
    source: str = ""
    line: int = 0
    needs: list[tuple[str, ...]] = field(default_factory=list)   # all of these, each one of its rule ids

    def __post_init__(self) -> None:
        if not self.needs:                          # made without alternatives: each rule id is needed
            self.needs = [(rid,) for rid in self.requires]


@dataclass
class RuleSet:
    rules: dict[str, Rule] = field(default_factory=dict)
    correlations: dict[str, Correlation] = field(default_factory=dict)
    lists: dict[str, list] = field(default_factory=dict)
    default_mode: str = "monitor"
    job_modes: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def mode_for(self, rule_mode: str, job_id: str) -> str:
        return self.job_modes.get(job_id) or rule_mode or self.default_mode


def _line(d: dict, key: str | None = None) -> int:
    if key and key in d.get("__lines__", {}):
        return d["__lines__"][key]
    return d.get("__line__", 0)


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in ("__line__", "__lines__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class _Parser:
    def __init__(self, source: str, rs: RuleSet) -> None:
        self.source, self.rs = source, rs

    def err(self, d: dict, key: str | None, where: str, msg: str) -> RuleError:
        return RuleError(self.source, _line(d, key), where, msg)

    def resolve(self, d: dict, key: str, where: str):
        value = d[key]
        if isinstance(value, str) and value.startswith("$"):
            name = value[1:]
            if name not in self.rs.lists:
                raise self.err(d, key, where, f"unknown list {value!r}")
            return list(self.rs.lists[name])
        if isinstance(value, list):
            out = []
            for item in value:
                if isinstance(item, str) and item.startswith("$"):
                    if item[1:] not in self.rs.lists:
                        raise self.err(d, key, where, f"unknown list {item!r}")
                    out.extend(self.rs.lists[item[1:]])
                else:
                    out.append(item)
            return out
        return value

    def need(self, d: dict, key: str, where: str, kind=str):
        if key not in d:
            raise self.err(d, None, where, f"missing required field '{key}'")
        value = d[key]
        if not isinstance(value, kind):
            raise self.err(d, key, f"{where}.{key}", f"must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def choice(self, d: dict, key: str, where: str, choices, default=None):
        value = d.get(key, default)
        if value not in choices:
            raise self.err(d, key, f"{where}.{key}", f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value

    def conditions(self, d: dict, key: str, event: str, where: str) -> dict:
        cond = d.get(key) or {}
        if not isinstance(cond, dict):
            raise self.err(d, key, f"{where}.{key}", "must be a mapping of field: value")
        out = {}
        for k in cond:
            if k in ("__line__", "__lines__"):
                continue
            w = f"{where}.{key}.{k}"
            if k not in MATCH_KEYS:
                raise self.err(cond, k, w, f"unknown field; known: {', '.join(sorted(MATCH_KEYS))}")
            if event not in MATCH_KEYS[k]:
                raise self.err(cond, k, w, f"not available for event '{event}'")
            out[k] = self.check_value(cond, k, self.resolve(cond, k, w), w)
        return out

    def check_value(self, d: dict, k: str, v, where: str):
        """The key's own check and normalisation (collector/rules/keys.py), with file:line on failure."""
        try:
            return REGISTRY[k].check(_clean(v) if isinstance(v, dict) else v)
        except KeyValueError as exc:
            raise self.err(d, k, where, str(exc)) from exc

    def scope(self, d: dict, where: str) -> dict:
        sc = d.get("scope") or {}
        out = {}
        for k in sc:
            if k in ("__line__", "__lines__"):
                continue
            if k not in SCOPE_KEYS:
                raise self.err(sc, k, f"{where}.scope.{k}", f"unknown scope field; known: {', '.join(SCOPE_KEYS)}")
            out[k] = [str(x) for x in self.resolve(sc, k, f"{where}.scope.{k}")]
        return out

    def rule(self, d: dict, i: int) -> Rule:
        where = f"rules[{i}]"
        if not isinstance(d, dict):
            raise RuleError(self.source, 0, where, "must be a mapping")
        rid = self.need(d, "id", where)
        where = f"rule {rid}"
        event = self.choice(d, "event", where, EVENTS)
        match = self.conditions(d, "match", event, where)
        if not match:
            raise self.err(d, "match", where, "a rule needs at least one match field")
        if event == "payload" and not any(k in match for k in FINGERPRINT_KEYS):
            raise self.err(d, "match", where, "a payload rule needs a fingerprint: payload or stratum")
        return Rule(id=rid, description=self.need(d, "description", where),
                    severity=self.choice(d, "severity", where, SEVERITIES, "medium"), event=event, match=match,
                    action=self.choice(d, "action", where, ACTIONS, "alert"),
                    mode=self.choice(d, "mode", where, (*MODES, ""), ""),
                    unless=self.conditions(d, "unless", event, where), scope=self.scope(d, where),
                    outside_scope=self.choice(d, "outside_scope", where, OUTSIDE_ACTIONS, ""),
                    source=self.source, line=_line(d))

    def correlation(self, d: dict, i: int) -> Correlation:
        where = f"correlations[{i}]"
        cid = self.need(d, "id", where)
        where = f"correlation {cid}"
        self.need(d, "requires", where, list)
        needs = []
        for item in d["requires"]:            # a rule id, or any one of a list of them (a YAML list or a $list)
            listed = item
            if isinstance(item, str) and item.startswith("$"):
                if item[1:] not in self.rs.lists:
                    raise self.err(d, "requires", f"{where}.requires", f"unknown list {item!r}")
                listed = list(self.rs.lists[item[1:]])
            alternatives = tuple(str(r) for r in listed) if isinstance(listed, list) else (str(listed),)
            if not alternatives:
                raise self.err(d, "requires", f"{where}.requires", "an empty alternative")
            needs.append(alternatives)
        if len(needs) < 2:
            raise self.err(d, "requires", f"{where}.requires", "a correlation needs at least two rule ids")
        requires = list(dict.fromkeys(r for alternatives in needs for r in alternatives))
        within = d.get("within_s", 600)
        if not isinstance(within, int | float) or within <= 0:
            raise self.err(d, "within_s", f"{where}.within_s", "must be a positive number of seconds")
        return Correlation(id=cid, description=self.need(d, "description", where),
                           severity=self.choice(d, "severity", where, SEVERITIES, "high"),
                           requires=requires, needs=needs, within_s=float(within),
                           action=self.choice(d, "action", where, ACTIONS[1:], "alert"),
                           same_process=bool(d.get("same_process", False)),
                           same_tree=bool(d.get("same_tree", False)),
                           mode=self.choice(d, "mode", where, (*MODES, ""), ""), source=self.source, line=_line(d))

    def parse(self, text: str) -> dict | None:
        """Parse and check the top level; lists and modes take effect now, rules in parse_rules."""
        if len(text) > MAX_RULES_BYTES:
            raise RuleError(self.source, 0, "document", f"{len(text)} characters exceeds {MAX_RULES_BYTES}")
        try:
            doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise RuleError(self.source, mark.line + 1 if mark else 0, "yaml", str(exc).splitlines()[0]) from exc
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise RuleError(self.source, 1, "document", "must be a mapping with lists/rules/correlations")
        known = {"lists", "rules", "correlations", "default_mode", "job_modes", "__line__", "__lines__"}
        for k in doc:
            if k not in known:
                raise self.err(doc, k, k, "unknown top-level key; known: lists, rules, correlations, "
                                          "default_mode, job_modes")
        if "default_mode" in doc:
            self.rs.default_mode = self.choice(doc, "default_mode", "default_mode", MODES)
        for job, mode in _clean(doc.get("job_modes") or {}).items():
            if mode not in MODES:
                raise self.err(doc["job_modes"], job, f"job_modes.{job}", f"{mode!r} is not monitor or enforce")
            self.rs.job_modes[str(job)] = mode
        for name, items in (doc.get("lists") or {}).items():
            if name in ("__line__", "__lines__"):
                continue
            if not isinstance(items, list):
                raise self.err(doc["lists"], name, f"lists.{name}", "must be a list")
            self.rs.lists[name] = _clean(items)
        return doc

    def parse_rules(self, doc: dict) -> None:
        for i, d in enumerate(doc.get("rules") or []):
            r = self.rule(d, i)
            self.rs.rules[r.id] = r   # a later file overrides a rule with the same id
        for i, d in enumerate(doc.get("correlations") or []):
            c = self.correlation(d, i)
            self.rs.correlations[c.id] = c
        self.rs.sources.append(self.source)


def load_ruleset(texts: list[tuple[str, str]]) -> RuleSet:
    """Parse (source, text) pairs in order; later ones extend and override earlier ones.

    Lists are collected from every file first, so a user file that redefines
    ``miner_names`` changes the built-in rules that use it too.
    """
    rs = RuleSet()
    parsed = []
    for source, text in texts:
        parser = _Parser(source, rs)
        parsed.append((parser, parser.parse(text)))
    for parser, doc in parsed:
        if doc is not None:
            parser.parse_rules(doc)
    known = set(rs.rules) | set(rs.correlations)
    for c in rs.correlations.values():
        for rid in c.requires:
            if rid not in known:
                raise RuleError(c.source, c.line, f"correlation {c.id}.requires", f"unknown rule id {rid!r}")
    return rs


def rule_texts(rules_dir: str = "", extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    texts = [(str(BUILTIN), BUILTIN.read_text())]
    if rules_dir:
        for path in sorted(Path(rules_dir).glob("*.y*ml")):
            texts.append((str(path), path.read_text()))
    return texts + list(extra)
