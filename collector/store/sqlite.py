"""SQLite (WAL) store: the embedded default.

Events are kept as their wire bytes (one serialisation) next to the columns
that queries filter on, indexed by (job, time) and (host, time). A batch is
one transaction with ``synchronous=FULL``: when ``ingest`` returns, the batch
is on disk, and only then does the server ack it.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import threading
import time
from pathlib import Path

from collector.store.base import (
    AFTER_SQL,
    PROCESS_COLUMNS,
    IngestResult,
    StoredRow,
    TimelineFilter,
    alerts_where,
    event_bytes,
    fleet_destination,
    in_network,
    job_summary,
    load_event,
    process_item,
    timeline_where,
)
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    host_id TEXT NOT NULL, seq INTEGER NOT NULL, ts_ns INTEGER NOT NULL, kind TEXT NOT NULL,
    job_kind TEXT NOT NULL, job_id TEXT NOT NULL, pid INTEGER, proc_key TEXT, body BLOB NOT NULL,
    ingested_ns INTEGER, daddr TEXT, dport INTEGER, exe TEXT, sha256 TEXT,
    PRIMARY KEY (host_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_job_ts ON events (job_id, ts_ns);
CREATE INDEX IF NOT EXISTS events_host_ts ON events (host_id, ts_ns);
CREATE TABLE IF NOT EXISTS processes (
    host_id TEXT NOT NULL, key TEXT NOT NULL, parent_key TEXT, job_id TEXT, pid INTEGER, comm TEXT,
    exe TEXT, argv TEXT, first_ts_ns INTEGER, used_gpu INTEGER DEFAULT 0,
    PRIMARY KEY (host_id, key)
);
CREATE INDEX IF NOT EXISTS processes_job ON processes (job_id);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT NOT NULL, job_kind TEXT NOT NULL, host_id TEXT NOT NULL,
    first_ts_ns INTEGER, last_ts_ns INTEGER, events INTEGER DEFAULT 0,
    PRIMARY KEY (job_id, job_kind, host_id)
);
CREATE TABLE IF NOT EXISTS agents (
    host_id TEXT PRIMARY KEY, hostname TEXT, boot_id TEXT, stored_through INTEGER DEFAULT 0,
    last_seen_ns INTEGER, policy_version INTEGER DEFAULT 0, policy_error TEXT DEFAULT '',
    connected INTEGER DEFAULT 0, status TEXT DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, ts_ns INTEGER, rule_id TEXT, job_id TEXT, host_id TEXT, body BLOB
);
CREATE INDEX IF NOT EXISTS alerts_job ON alerts (job_id, ts_ns);
CREATE TABLE IF NOT EXISTS policy (
    version INTEGER PRIMARY KEY, rules_yaml TEXT NOT NULL, ts_ns INTEGER
);
CREATE TABLE IF NOT EXISTS gaps (
    host_id TEXT, from_seq INTEGER, to_seq INTEGER, reason TEXT, ts_ns INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    ts_ns INTEGER NOT NULL, who TEXT NOT NULL, role TEXT NOT NULL, peer TEXT NOT NULL, action TEXT NOT NULL,
    detail TEXT NOT NULL, ok INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts_ns);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


# Columns and tables added after the first schema (fleet questions, the durable detector): made on stores
# created before them; the columns are filled for events ingested from then on.
FLEET_COLUMNS = (("daddr", "TEXT"), ("dport", "INTEGER"), ("exe", "TEXT"), ("sha256", "TEXT"), ("rid", "INTEGER"))
ADDED_SCHEMA = """
CREATE INDEX IF NOT EXISTS events_daddr_ts ON events (daddr, ts_ns) WHERE daddr IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_sha256 ON events (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_exe_ts ON events (exe, ts_ns) WHERE kind = 'exec';
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts_ns);
CREATE INDEX IF NOT EXISTS events_rid ON events (rid) WHERE rid IS NOT NULL;
DROP INDEX IF EXISTS events_ts;
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, host_id TEXT NOT NULL, body BLOB NOT NULL, created_ns INTEGER NOT NULL,
    sent_ns INTEGER NOT NULL DEFAULT 0, done_ns INTEGER NOT NULL DEFAULT 0, executed INTEGER, detail TEXT
);
CREATE INDEX IF NOT EXISTS orders_pending ON orders (host_id) WHERE done_ns = 0;
"""


class StoreCorrupt(RuntimeError):
    """The database failed its integrity check at start: refuse to run on it."""

PROCESS_KINDS = frozenset(("exec", "connect", "gpu_open"))
AGENT_FIELDS = {"hostname", "boot_id", "last_seen_ns", "policy_version", "policy_error", "connected", "status"}


class SqliteStore:
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)   # failures the ingest path retries

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.check_integrity()
            self.db.executescript(SCHEMA)
            have = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
            for name, sqltype in FLEET_COLUMNS:
                if name not in have:
                    self.db.execute(f"ALTER TABLE events ADD COLUMN {name} {sqltype}")
            self.db.executescript(ADDED_SCHEMA)
            self._rid = self.db.execute("SELECT COALESCE(MAX(rid), 0) FROM events").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path}: not a usable SQLite database ({exc}); move it aside or restore "
                               "a backup") from exc
        self._lock = threading.Lock()   # one writer connection (self.db), used under this lock
        self._readers = threading.local()   # reads: one connection per thread (WAL: they never block the writer)

    def _read(self, sql: str, params=()) -> list[tuple]:
        """A read on this thread's own connection: a connection shared by threads mixes up their errors."""
        con = getattr(self._readers, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None)
            self._readers.con = con
        return con.execute(sql, params).fetchall()

    def check_integrity(self) -> None:
        """``PRAGMA quick_check`` (O(size), no index cross-check): a corrupt file is refused at start."""
        rows = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise StoreCorrupt(f"{self.path}: integrity check failed: {'; '.join(rows)[:500]}; move it aside or "
                               "restore a backup")

    # -- agents ----------------------------------------------------------------
    def register_agent(self, host_id: str, hostname: str, boot_id: str, policy_version: int) -> int:
        with self._lock:
            self.db.execute(
                "INSERT INTO agents (host_id, hostname, boot_id, last_seen_ns, policy_version, connected) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT(host_id) DO UPDATE SET hostname=excluded.hostname, "
                "boot_id=excluded.boot_id, last_seen_ns=excluded.last_seen_ns, "
                "policy_version=excluded.policy_version, connected=1",
                (host_id, hostname, boot_id, time.time_ns(), policy_version),
            )
            row = self.db.execute("SELECT MAX(seq) FROM events WHERE host_id=?", (host_id,)).fetchone()
            return row[0] or 0

    def set_agent_state(self, host_id: str, **fields) -> None:
        bad = set(fields) - AGENT_FIELDS
        if bad:
            raise ValueError(f"unknown agent fields {bad}")
        if "status" in fields:
            fields["status"] = json.dumps(fields["status"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self.db.execute(f"UPDATE agents SET {cols} WHERE host_id=?", (*fields.values(), host_id))

    def forget_agent(self, host_id: str) -> bool:
        with self._lock, self.db:
            return self.db.execute("DELETE FROM agents WHERE host_id = ?", (host_id,)).rowcount > 0

    def agents(self) -> list[dict]:
        cols = ["host_id", "hostname", "boot_id", "stored_through", "last_seen_ns", "policy_version", "policy_error",
                "connected", "status"]
        out = []
        for row in self._read(f"SELECT {', '.join(cols)} FROM agents ORDER BY host_id"):
            item = dict(zip(cols, row, strict=True))
            item["status"] = json.loads(item["status"] or "{}")
            out.append(item)
        return out

    # -- ingest -----------------------------------------------------------------
    def ingest_many(self, parts: list[tuple[str, list[pb.Event]]]) -> IngestResult:
        """One host after another (SQLite serialises writers anyway; a fleet on a log uses PostgreSQL)."""
        total = IngestResult()
        for host_id, events in parts:
            r = self.ingest(host_id, events)
            total.stored += r.stored
            total.duplicates += r.duplicates
        return total

    def ingest(self, host_id: str, events: list[pb.Event]) -> IngestResult:
        result = IngestResult()
        rows, procs, jobs, gaps = [], {}, {}, []
        now = time.time_ns()
        for ev in events:
            kind = ev.WhichOneof("body") or "unknown"
            p, job, ts = ev.process, ev.job, ev.ts_ns   # upb fields: read each once
            key, job_id = p.key, job.id
            daddr, dport = fleet_destination(ev, kind)
            rows.append([host_id, ev.seq, ts, kind, job.kind, job_id, p.pid, key, event_bytes(ev), now,
                         daddr, dport, p.exe or None, p.exe_sha256 or None, 0])
            if key and kind in PROCESS_KINDS:
                prev = procs.get(key)
                if prev is None or kind == "exec":
                    used_gpu = int(kind == "gpu_open") | (prev[-1] if prev else 0)
                    procs[key] = (host_id, key, p.parent_key, job_id, p.pid, p.comm, p.exe,
                                  json.dumps(list(p.argv)), ts, used_gpu)
                elif kind == "gpu_open" and not prev[-1]:
                    procs[key] = (*prev[:-1], 1)
            if job_id:
                jkey, seen = (job_id, job.kind), now if ev.clock_suspect else ts   # a bad clock never leads jobs
                agg = jobs.get(jkey)
                jobs[jkey] = (min(agg[0], seen), max(agg[1], seen), agg[2] + 1) if agg else (seen, seen, 1)
            if kind == "gap":
                gaps.append((host_id, ev.gap.from_seq, ev.gap.to_seq, ev.gap.reason, ts))
        with self._lock:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:             # commit order: one writer, rids handed out under its lock
                    self._rid += 1
                    row[-1] = self._rid
                before = self.db.total_changes
                cur.executemany("INSERT OR IGNORE INTO events (host_id, seq, ts_ns, kind, job_kind, job_id, pid, "
                                "proc_key, body, ingested_ns, daddr, dport, exe, sha256, rid) "
                                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                result.stored = self.db.total_changes - before
                result.duplicates = len(rows) - result.stored
                cur.executemany(
                    "INSERT INTO processes VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(host_id, key) DO UPDATE SET "
                    "used_gpu = MAX(used_gpu, excluded.used_gpu), "
                    "comm = CASE WHEN excluded.first_ts_ns >= first_ts_ns THEN excluded.comm ELSE comm END, "
                    "exe = CASE WHEN excluded.first_ts_ns >= first_ts_ns THEN excluded.exe ELSE exe END, "
                    "argv = CASE WHEN excluded.first_ts_ns >= first_ts_ns THEN excluded.argv ELSE argv END, "
                    # a process that moved into a job's cgroup and exec'd there belongs to that job now
                    "job_id = CASE WHEN excluded.first_ts_ns >= first_ts_ns THEN excluded.job_id ELSE job_id END, "
                    "first_ts_ns = MIN(first_ts_ns, excluded.first_ts_ns)",
                    list(procs.values()),
                )
                cur.executemany(
                    "INSERT INTO jobs VALUES (?,?,?,?,?,?) ON CONFLICT(job_id, job_kind, host_id) DO UPDATE SET "
                    "first_ts_ns=MIN(first_ts_ns, excluded.first_ts_ns), last_ts_ns=MAX(last_ts_ns, "
                    "excluded.last_ts_ns), events=events+excluded.events",
                    [(jid, jkind, host_id, f, la, n) for (jid, jkind), (f, la, n) in jobs.items()],
                )
                cur.executemany("INSERT INTO gaps VALUES (?,?,?,?,?)", gaps)
                top = self.db.execute("SELECT MAX(seq) FROM events WHERE host_id=?", (host_id,)).fetchone()[0] or 0
                cur.execute("UPDATE agents SET stored_through=?, last_seen_ns=? WHERE host_id=?",
                            (top, time.time_ns(), host_id))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                self._rid = self.db.execute("SELECT COALESCE(MAX(rid), 0) FROM events").fetchone()[0]
                raise
        result.stored_through = top
        return result

    # -- queries -------------------------------------------------------------------
    def jobs(self, since_ns: int = 0, limit: int = 1000) -> list[dict]:
        rows = self._read(
            "SELECT j.job_id, j.job_kind, GROUP_CONCAT(j.host_id), MIN(j.first_ts_ns), MAX(j.last_ts_ns), "
            "SUM(j.events), (SELECT COUNT(*) FROM alerts a WHERE a.job_id = j.job_id) "
            "FROM jobs j WHERE j.last_ts_ns >= ? GROUP BY j.job_id, j.job_kind "
            "ORDER BY MAX(j.last_ts_ns) DESC LIMIT ?", (since_ns, limit))
        return [job_summary(r) for r in rows]

    def timeline(self, flt: TimelineFilter) -> list[StoredRow]:
        where, params = timeline_where(flt)
        rows = self._read(f"SELECT host_id, body FROM events WHERE {where} ORDER BY ts_ns, host_id, seq LIMIT ?",
                          (*params, flt.limit))
        return [StoredRow(h, load_event(b)) for h, b in rows]

    def processes(self, job_id: str, host: str = "") -> list[dict]:
        sql = (f"SELECT {', '.join(PROCESS_COLUMNS)} FROM processes WHERE job_id = ?"
               + (" AND host_id = ?" if host else "") + " ORDER BY first_ts_ns")
        return [process_item(row) for row in self._read(sql, (job_id, host) if host else (job_id,))]

    def add_alert(self, alert: ppb.Alert) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?)",
                            (alert.id, alert.ts_ns, alert.rule_id, alert.job.id, alert.host_id,
                             alert.SerializeToString()))

    def alerts(self, job_id: str = "", since_ns: int = 0, limit: int = 1000, rule_id: str = "", host: str = "",
               until_ns: int = 0, after: tuple[int, str] | None = None) -> list[ppb.Alert]:
        where, params = alerts_where(job_id, since_ns, rule_id, host, until_ns, after)
        rows = self._read(f"SELECT body FROM alerts WHERE {where} ORDER BY ts_ns, id LIMIT ?", (*params, limit))
        return [ppb.Alert.FromString(b) for (b,) in rows]

    # -- fleet questions -----------------------------------------------------------------
    def connections(self, cidr: str, since_ns: int = 0, until_ns: int = 0, limit: int = 10_000,
                    after: tuple[int, str, int] | None = None) -> list[StoredRow]:
        """Connect (and denied-connect) events to an address in cidr, in time order."""
        net = ipaddress.ip_network(cidr, strict=False)
        sql = ["SELECT host_id, daddr, body FROM events WHERE daddr IS NOT NULL AND ts_ns >= ?"]
        params: list = [since_ns]
        if after:
            sql.append("AND " + AFTER_SQL)
            params.extend(after)
        if net.num_addresses == 1:
            sql.append("AND daddr = ?")
            params.append(str(net.network_address))
        if until_ns:
            sql.append("AND ts_ns <= ?")
            params.append(until_ns)
        out = []
        for host, daddr, body in self._read(" ".join(sql) + " ORDER BY ts_ns, host_id, seq", params):
            if in_network(daddr, net):
                out.append(StoredRow(host, load_event(body)))
                if len(out) >= limit:
                    break
        return out

    def executions(self, sha256: str = "", exe: str = "", name: str = "", since_ns: int = 0, until_ns: int = 0,
                   limit: int = 10_000, after: tuple[int, str, int] | None = None) -> list[StoredRow]:
        """Exec events of an executable (by sha256, path or basename), in time order."""
        sql, params = ["SELECT host_id, body FROM events WHERE kind = 'exec' AND ts_ns >= ?"], [since_ns]
        if after:
            sql.append("AND " + AFTER_SQL)
            params.extend(after)
        if sha256:
            sql.append("AND sha256 = ?")
            params.append(sha256.lower())
        if exe:
            sql.append("AND exe = ?")
            params.append(exe)
        if name:
            sql.append("AND (exe = ? OR exe LIKE ? ESCAPE '\\')")
            params += [name, "%/" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")]
        if until_ns:
            sql.append("AND ts_ns <= ?")
            params.append(until_ns)
        sql.append("ORDER BY ts_ns, host_id, seq LIMIT ?")
        params.append(limit)
        return [StoredRow(h, load_event(b)) for h, b in self._read(" ".join(sql), params)]

    def jobs_on_host(self, host_id: str, since_ns: int) -> list[tuple[str, str]]:
        """(job kind, job id) with events on this host since the given time."""
        return [(k, j) for k, j in self._read("SELECT job_kind, job_id FROM jobs WHERE host_id = ? AND last_ts_ns >= ? "
                                              "ORDER BY last_ts_ns DESC LIMIT 1000", (host_id, since_ns))]

    # -- audit (append-only: triggers refuse UPDATE and DELETE) ---------------------
    def add_audit(self, who: str, role: str, peer: str, action: str, detail: str, ok: bool) -> None:
        with self._lock:
            self.db.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?)",
                            (time.time_ns(), who, role, peer, action, detail, int(ok)))

    def audit(self, since_ns: int = 0, limit: int = 1000) -> list[dict]:
        rows = self._read("SELECT ts_ns, who, role, peer, action, detail, ok FROM audit WHERE ts_ns >= ? "
                          "ORDER BY ts_ns LIMIT ?", (since_ns, limit))
        cols = ("ts_ns", "who", "role", "peer", "action", "detail", "ok")
        return [dict(zip(cols, (*r[:6], bool(r[6])), strict=True)) for r in rows]

    def save_policy(self, version: int, rules_yaml: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO policy VALUES (?,?,?)", (version, rules_yaml, time.time_ns()))

    def load_policy(self) -> tuple[int, str]:
        rows = self._read("SELECT version, rules_yaml FROM policy ORDER BY version DESC LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else (0, "")

    def purge_before(self, ts_ns: int) -> int:
        with self._lock:
            cur = self.db.execute("DELETE FROM events WHERE ts_ns < ?", (ts_ns,))
            self.db.execute("DELETE FROM alerts WHERE ts_ns < ?", (ts_ns,))
            self.db.execute("DELETE FROM processes WHERE first_ts_ns < ? AND key NOT IN "
                            "(SELECT proc_key FROM events)", (ts_ns,))
            return cur.rowcount

    # -- detection as a durable consumer ---------------------------------------------------------
    def read_committed(self, cursor: tuple, limit: int) -> list[tuple[tuple, str, int, pb.Event]]:
        after = cursor[0] if cursor else 0
        rows = self._read("SELECT rid, host_id, ingested_ns, body FROM events WHERE rid > ? ORDER BY rid LIMIT ?",
                          (after, limit))
        return [((rid,), host, ing or 0, load_event(body)) for rid, host, ing, body in rows]

    def get_cursor(self, name: str) -> tuple:
        rows = self._read("SELECT value FROM cursors WHERE name = ?", (name,))
        return tuple(json.loads(rows[0][0])) if rows else ()

    def set_cursor(self, name: str, cursor: tuple) -> None:
        with self._lock:
            self.db.execute("INSERT INTO cursors VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                            (name, json.dumps(list(cursor))))

    def take_lease(self, name: str, owner: str, ttl_s: float, now_ns: int | None = None) -> bool:
        now = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            cur = self.db.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, "
                "expires_ns=excluded.expires_ns WHERE leases.owner = excluded.owner OR leases.expires_ns < ?",
                (name, owner, now + int(ttl_s * 1e9), now))
            return cur.rowcount == 1

    def recent_events(self, since_ts_ns: int, limit: int) -> list[tuple[str, pb.Event]]:
        rows = self._read("SELECT host_id, body FROM events WHERE ts_ns >= ? ORDER BY ts_ns, host_id, seq "
                               "LIMIT ?", (since_ts_ns, limit))
        return [(h, load_event(b)) for h, b in rows]

    def add_order(self, order_id: str, host_id: str, body: bytes) -> bool:
        with self._lock:
            cur = self.db.execute("INSERT OR IGNORE INTO orders (order_id, host_id, body, created_ns) VALUES (?,?,?,?)",
                                  (order_id, host_id, body, time.time_ns()))
            return cur.rowcount == 1

    def due_orders(self, hosts: list[str], sent_before_ns: int, limit: int = 100) -> list[tuple[str, str, bytes]]:
        if not hosts:
            return []
        marks = ",".join("?" * len(hosts))
        return [tuple(r) for r in self._read(
            f"SELECT order_id, host_id, body FROM orders WHERE done_ns = 0 AND host_id IN ({marks}) "
            "AND sent_ns < ? ORDER BY created_ns LIMIT ?", (*hosts, sent_before_ns, limit))]

    def order_sent(self, order_id: str) -> None:
        with self._lock:
            self.db.execute("UPDATE orders SET sent_ns = ? WHERE order_id = ?", (time.time_ns(), order_id))

    def order_done(self, order_id: str, host_id: str, executed: bool, detail: str) -> None:
        with self._lock:
            self.db.execute("UPDATE orders SET done_ns = ?, executed = ?, detail = ? WHERE order_id = ? "
                            "AND host_id = ? AND done_ns = 0",
                            (time.time_ns(), int(executed), detail[:500], order_id, host_id))

    def close(self) -> None:
        con = getattr(self._readers, "con", None)
        if con is not None:
            con.close()
        self.db.close()
