"""PostgreSQL store (psycopg 3 + psycopg-pool): many collectors, one database.

- events: partitioned by day on ts_ns (a DEFAULT partition takes what falls outside the days made so far,
  e.g. clock-suspect events); retention drops whole partitions. A batch is COPY'd into a per-connection
  staging table, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on (host_id, seq, ts_ns): a replayed
  batch is stored exactly once, and the whole batch (events, processes, jobs, agent high-water mark) is one
  transaction; ``ingest`` returns after COMMIT, and only then does the server ack.
- the schema is created and migrated by the collector itself under an advisory lock, so collectors starting
  together against one database do not race (a ``schema_version`` table records what was applied).
- jobs, processes, alerts, policy versions, agent state and the append-only audit log are ordinary tables.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time

import psycopg
from psycopg_pool import ConnectionPool

from collector.store.base import (
    AFTER_SQL,
    PROCESS_COLUMNS,
    IngestResult,
    StoredRow,
    TimelineFilter,
    alerts_where,
    event_bytes,
    fleet_destination,
    job_summary,
    load_event,
    process_item,
    timeline_where,
)
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb

log = logging.getLogger(__name__)

DAY_NS = 86_400_000_000_000
MIGRATION_LOCK = 0x6770_7567_7561_7264      # "gpuguard": pg_advisory_xact_lock key for schema changes
PARTITION_LOCK = MIGRATION_LOCK + 1
PROCESS_KINDS = frozenset(("exec", "connect", "gpu_open"))
AGENT_FIELDS = {"hostname", "boot_id", "last_seen_ns", "policy_version", "policy_error", "connected", "status"}

MIGRATIONS: list[str] = [
    # 1: the schema
    """
    CREATE TABLE events (
        host_id text NOT NULL, seq bigint NOT NULL, ts_ns bigint NOT NULL, kind text NOT NULL,
        job_kind text NOT NULL, job_id text NOT NULL, pid integer, proc_key text, body bytea NOT NULL,
        ingested_ns bigint, daddr text, dport integer, exe text, sha256 text,
        PRIMARY KEY (host_id, seq, ts_ns)
    ) PARTITION BY RANGE (ts_ns);
    CREATE TABLE events_default PARTITION OF events DEFAULT;
    CREATE INDEX events_job_ts ON events (job_id, ts_ns);
    CREATE INDEX events_host_ts ON events (host_id, ts_ns);
    CREATE INDEX events_daddr ON events USING gist ((daddr::inet) inet_ops) WHERE daddr IS NOT NULL;
    CREATE INDEX events_sha256 ON events (sha256) WHERE sha256 IS NOT NULL;
    CREATE INDEX events_exe ON events (exe, ts_ns) WHERE kind = 'exec';
    CREATE TABLE processes (
        host_id text NOT NULL, key text NOT NULL, parent_key text, job_id text, pid integer, comm text,
        exe text, argv text, first_ts_ns bigint, used_gpu boolean DEFAULT false,
        PRIMARY KEY (host_id, key)
    );
    CREATE INDEX processes_job ON processes (job_id);
    CREATE TABLE jobs (
        job_id text NOT NULL, job_kind text NOT NULL, host_id text NOT NULL,
        first_ts_ns bigint, last_ts_ns bigint, events bigint DEFAULT 0,
        PRIMARY KEY (job_id, job_kind, host_id)
    );
    CREATE INDEX jobs_last ON jobs (last_ts_ns);
    CREATE TABLE agents (
        host_id text PRIMARY KEY, hostname text, boot_id text, stored_through bigint DEFAULT 0,
        last_seen_ns bigint, policy_version bigint DEFAULT 0, policy_error text DEFAULT '',
        connected integer DEFAULT 0, status text DEFAULT '{}'
    );
    CREATE TABLE alerts (id text PRIMARY KEY, ts_ns bigint, rule_id text, job_id text, host_id text, body bytea);
    CREATE INDEX alerts_job ON alerts (job_id, ts_ns);
    CREATE INDEX alerts_ts ON alerts (ts_ns);
    CREATE TABLE policy (version bigint PRIMARY KEY, rules_yaml text NOT NULL, ts_ns bigint);
    CREATE TABLE gaps (host_id text, from_seq bigint, to_seq bigint, reason text, ts_ns bigint);
    CREATE TABLE audit (
        ts_ns bigint NOT NULL, who text NOT NULL, role text NOT NULL, peer text NOT NULL, action text NOT NULL,
        detail text NOT NULL, ok integer NOT NULL
    );
    CREATE INDEX audit_ts ON audit (ts_ns);
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
    CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION audit_append_only();
    """,
    # 2: detection as a durable consumer: commit order (transaction id, then a sequence), cursors, leases,
    #    and the outbox of kill orders
    """
    CREATE SEQUENCE events_rid;
    ALTER TABLE events ADD COLUMN rid bigint DEFAULT nextval('events_rid'),
                       ADD COLUMN xid xid8 DEFAULT pg_current_xact_id();
    CREATE INDEX events_commit ON events (xid, rid);
    CREATE INDEX events_ts ON events (ts_ns);
    CREATE TABLE cursors (name text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE leases (name text PRIMARY KEY, owner text NOT NULL, expires_ns bigint NOT NULL);
    CREATE TABLE orders (
        order_id text PRIMARY KEY, host_id text NOT NULL, body bytea NOT NULL, created_ns bigint NOT NULL,
        sent_ns bigint NOT NULL DEFAULT 0, done_ns bigint NOT NULL DEFAULT 0, executed integer, detail text
    );
    CREATE INDEX orders_pending ON orders (host_id) WHERE done_ns = 0;
    """,
    # 3: no index on ts_ns alone: with ORDER BY ts_ns ... LIMIT the planner walked it and filtered, instead
    #    of using the (job, ts) or daddr index (a /16 question took 246 ms at 2M events); the detector's rare
    #    warm-up scans recent partitions instead
    """
    DROP INDEX IF EXISTS events_ts;
    """,
]
PARTITIONS_SQL = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                  "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'")
EVENT_COLUMNS = ("host_id", "seq", "ts_ns", "kind", "job_kind", "job_id", "pid", "proc_key", "body", "ingested_ns",
                 "daddr", "dport", "exe", "sha256")


def day_of(ts_ns: int) -> int:
    return ts_ns // DAY_NS


class PostgresStore:
    """The Store interface on PostgreSQL. Thread-safe: each call takes a pooled connection."""

    errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)

    def __init__(self, url: str, pool_size: int = 8, days_ahead: int = 2) -> None:
        self.url = url
        self.days_ahead = days_ahead
        try:
            self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, timeout=10,
                                       kwargs={"autocommit": False})
            self.pool.wait(timeout=10)
        except Exception as exc:
            raise OSError(f"PostgreSQL at {redact(url)}: {exc}") from exc
        self._days: set[int] = set()
        self._days_lock = threading.Lock()
        self.migrate()
        self.ensure_partitions(time.time_ns())

    # -- schema ---------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply what is missing, one collector at a time (an advisory lock for the transaction)."""
        with self.pool.connection() as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_ns bigint)")
            done = con.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            for version, sql in enumerate(MIGRATIONS[done:], start=done + 1):
                con.execute(sql)
                con.execute("INSERT INTO schema_version VALUES (%s, %s)", (version, time.time_ns()))
                log.info("store schema migrated to version %d", version)
            return len(MIGRATIONS)

    def ensure_partitions(self, ts_ns: int) -> None:
        """Daily partitions for today and the next days_ahead days (idempotent, safe between collectors)."""
        today = day_of(ts_ns)
        wanted = [d for d in range(today - 1, today + self.days_ahead + 1) if d not in self._days]
        if not wanted:
            return
        with self._days_lock, self.pool.connection() as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            existing = {r[0] for r in con.execute(PARTITIONS_SQL)}
            for day in wanted:
                name = partition_name(day)
                if name not in existing:
                    lo, hi = day * DAY_NS, (day + 1) * DAY_NS
                    try:
                        with con.transaction():
                            con.execute(f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ({lo}) TO ({hi})")
                    except psycopg.errors.CheckViolation:
                        # rows for that day already sit in the default partition (clock-suspect events stamped
                        # ahead): move them into the new partition, then attach it, so they never block the day
                        moved = self._partition_from_default(con, name, lo, hi)
                        log.warning("partition %s made with %d clock-suspect rows moved from the default "
                                    "partition", name, moved)
                self._days.add(day)

    @staticmethod
    def _partition_from_default(con, name: str, lo: int, hi: int) -> int:
        with con.transaction():
            con.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            cur = con.execute(f"WITH moved AS (DELETE FROM events_default WHERE ts_ns >= %s AND ts_ns < %s "
                              f"RETURNING *) INSERT INTO {name} SELECT * FROM moved", (lo, hi))
            con.execute(f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
            return cur.rowcount

    # -- agents ---------------------------------------------------------------------------
    def register_agent(self, host_id: str, hostname: str, boot_id: str, policy_version: int) -> int:
        with self.pool.connection() as con, con.transaction():
            row = con.execute(
                "INSERT INTO agents (host_id, hostname, boot_id, last_seen_ns, policy_version, connected) "
                "VALUES (%s, %s, %s, %s, %s, 1) ON CONFLICT (host_id) DO UPDATE SET hostname=excluded.hostname, "
                "boot_id=excluded.boot_id, last_seen_ns=excluded.last_seen_ns, "
                "policy_version=excluded.policy_version, connected=1 RETURNING stored_through",
                (host_id, hostname, boot_id, time.time_ns(), policy_version)).fetchone()
            return row[0] or 0

    def set_agent_state(self, host_id: str, **fields) -> None:
        bad = set(fields) - AGENT_FIELDS
        if bad:
            raise ValueError(f"unknown agent fields {bad}")
        if "status" in fields:
            fields["status"] = json.dumps(fields["status"])
        cols = ", ".join(f"{k}=%s" for k in fields)
        with self.pool.connection() as con, con.transaction():
            con.execute(f"UPDATE agents SET {cols} WHERE host_id=%s", (*fields.values(), host_id))

    def forget_agent(self, host_id: str) -> bool:
        with self.pool.connection() as con, con.transaction():
            return con.execute("DELETE FROM agents WHERE host_id = %s", (host_id,)).rowcount > 0

    def agents(self) -> list[dict]:
        with self.pool.connection() as con:
            cur = con.execute("SELECT host_id, hostname, boot_id, stored_through, last_seen_ns, policy_version, "
                              "policy_error, connected, status FROM agents ORDER BY host_id")
            cols = [c.name for c in cur.description]
            out = []
            for row in cur.fetchall():
                item = dict(zip(cols, row, strict=True))
                item["status"] = json.loads(item["status"] or "{}")
                out.append(item)
            con.rollback()
            return out

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self, host_id: str, events: list[pb.Event]) -> IngestResult:
        return self.ingest_many([(host_id, events)])

    def ingest_many(self, parts: list[tuple[str, list[pb.Event]]]) -> IngestResult:
        """Events of many hosts in one transaction and one COPY (a worker's read of a log partition)."""
        result = IngestResult()
        rows, procs, jobs, gaps, tops = [], {}, {}, [], {}
        now = time.time_ns()
        days = set()
        for host_id, events in parts:
            for ev in events:
                kind = ev.WhichOneof("body") or "unknown"
                p, job, ts = ev.process, ev.job, ev.ts_ns
                key, job_id = p.key, job.id
                days.add(day_of(ts))
                daddr, dport = fleet_destination(ev, kind)
                rows.append((host_id, ev.seq, ts, kind, job.kind, job_id, p.pid, key, event_bytes(ev), now,
                             daddr, dport, p.exe or None, p.exe_sha256 or None))
                if key and kind in PROCESS_KINDS:
                    prev = procs.get((host_id, key))
                    if prev is None or kind == "exec":
                        used_gpu = kind == "gpu_open" or bool(prev and prev[-1])
                        procs[(host_id, key)] = (host_id, key, p.parent_key, job_id, p.pid, p.comm, p.exe,
                                                 json.dumps(list(p.argv)), ts, used_gpu)
                    elif kind == "gpu_open" and not prev[-1]:
                        procs[(host_id, key)] = (*prev[:-1], True)
                if job_id:
                    jkey, seen = (job_id, job.kind, host_id), now if ev.clock_suspect else ts   # a bad clock never
                    agg = jobs.get(jkey)                                                        # leads jobs
                    jobs[jkey] = (min(agg[0], seen), max(agg[1], seen), agg[2] + 1) if agg else (seen, seen, 1)
                if kind == "gap":
                    gaps.append((host_id, ev.gap.from_seq, ev.gap.to_seq, ev.gap.reason, ts))
            if events:
                tops[host_id] = max(tops.get(host_id, 0), *(ev.seq for ev in events))
        if any(d not in self._days for d in days if abs(d - day_of(now)) <= self.days_ahead):
            self.ensure_partitions(now)
        with self.pool.connection() as con, con.transaction():
            con.execute("CREATE TEMP TABLE IF NOT EXISTS staging_events (LIKE events) ON COMMIT DELETE ROWS")
            with con.cursor() as cur:
                with cur.copy(f"COPY staging_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT {', '.join(EVENT_COLUMNS)} "
                            "FROM staging_events ON CONFLICT DO NOTHING")
                result.stored = cur.rowcount
                result.duplicates = len(rows) - result.stored
                if procs:
                    cur.executemany(
                        "INSERT INTO processes VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (host_id, key) "
                        "DO UPDATE SET used_gpu = processes.used_gpu OR excluded.used_gpu, "
                        "comm = CASE WHEN excluded.first_ts_ns >= processes.first_ts_ns THEN excluded.comm "
                        "ELSE processes.comm END, "
                        "exe = CASE WHEN excluded.first_ts_ns >= processes.first_ts_ns THEN excluded.exe "
                        "ELSE processes.exe END, "
                        "argv = CASE WHEN excluded.first_ts_ns >= processes.first_ts_ns THEN excluded.argv "
                        "ELSE processes.argv END, "
                        "job_id = CASE WHEN excluded.first_ts_ns >= processes.first_ts_ns THEN excluded.job_id "
                        "ELSE processes.job_id END, "
                        "first_ts_ns = LEAST(processes.first_ts_ns, excluded.first_ts_ns)",
                        sorted(procs.values()))
                if jobs:
                    cur.executemany(
                        "INSERT INTO jobs VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (job_id, job_kind, host_id) DO UPDATE "
                        "SET first_ts_ns = LEAST(jobs.first_ts_ns, excluded.first_ts_ns), "
                        "last_ts_ns = GREATEST(jobs.last_ts_ns, excluded.last_ts_ns), "
                        "events = jobs.events + excluded.events",
                        sorted((jid, jkind, host, f, la, n) for (jid, jkind, host), (f, la, n) in jobs.items()))
                if gaps:
                    cur.executemany("INSERT INTO gaps VALUES (%s,%s,%s,%s,%s)", gaps)
                stamp = time.time_ns()
                cur.executemany("UPDATE agents SET stored_through = GREATEST(stored_through, %s), last_seen_ns = %s "
                                "WHERE host_id = %s", [(top, stamp, h) for h, top in sorted(tops.items())])
                if len(tops) == 1:
                    (host, top), = tops.items()
                    row = cur.execute("SELECT stored_through FROM agents WHERE host_id = %s", (host,)).fetchone()
                    result.stored_through = row[0] if row else top
        return result

    # -- queries ----------------------------------------------------------------------------
    def _rows(self, sql: str, params=()) -> list[tuple]:
        with self.pool.connection() as con:
            rows = con.execute(sql, params).fetchall()
            con.rollback()
            return rows

    def _events(self, where: list[str], params: list, limit: int) -> list[StoredRow]:
        """SELECT host_id, body ... WHERE <where> in time order: the rows of every event query."""
        rows = self._rows(" ".join(where) + " ORDER BY ts_ns, host_id, seq LIMIT %s", (*params, limit))
        return [StoredRow(h, load_event(b)) for h, b in rows]

    def jobs(self, since_ns: int = 0, limit: int = 1000) -> list[dict]:
        rows = self._rows(
            "SELECT j.job_id, j.job_kind, string_agg(DISTINCT j.host_id, ','), MIN(j.first_ts_ns), MAX(j.last_ts_ns), "
            "SUM(j.events), (SELECT COUNT(*) FROM alerts a WHERE a.job_id = j.job_id) "
            "FROM jobs j WHERE j.last_ts_ns >= %s GROUP BY j.job_id, j.job_kind "
            "ORDER BY MAX(j.last_ts_ns) DESC LIMIT %s", (since_ns, limit))
        return [job_summary(r) for r in rows]

    def timeline(self, flt: TimelineFilter) -> list[StoredRow]:
        where, params = timeline_where(flt)
        return self._events(["SELECT host_id, body FROM events WHERE", where.replace("?", "%s")], params, flt.limit)

    def processes(self, job_id: str, host: str = "") -> list[dict]:
        sql = (f"SELECT {', '.join(PROCESS_COLUMNS)} FROM processes WHERE job_id = %s"
               + (" AND host_id = %s" if host else "") + " ORDER BY first_ts_ns, host_id, key")
        return [process_item(row) for row in self._rows(sql, (job_id, host) if host else (job_id,))]

    def add_alert(self, alert: ppb.Alert) -> None:
        with self.pool.connection() as con, con.transaction():
            con.execute("INSERT INTO alerts VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO UPDATE SET "
                        "ts_ns=excluded.ts_ns, rule_id=excluded.rule_id, job_id=excluded.job_id, "
                        "host_id=excluded.host_id, body=excluded.body",
                        (alert.id, alert.ts_ns, alert.rule_id, alert.job.id, alert.host_id, alert.SerializeToString()))

    def alerts(self, job_id: str = "", since_ns: int = 0, limit: int = 1000, rule_id: str = "", host: str = "",
               until_ns: int = 0, after: tuple[int, str] | None = None) -> list[ppb.Alert]:
        where, params = alerts_where(job_id, since_ns, rule_id, host, until_ns, after)
        rows = self._rows(f"SELECT body FROM alerts WHERE {where.replace('?', '%s')} ORDER BY ts_ns, id LIMIT %s",
                          (*params, limit))
        return [ppb.Alert.FromString(b) for (b,) in rows]

    # -- fleet questions -----------------------------------------------------------------------
    def connections(self, cidr: str, since_ns: int = 0, until_ns: int = 0, limit: int = 10_000,
                    after: tuple[int, str, int] | None = None) -> list[StoredRow]:
        net = ipaddress.ip_network(cidr, strict=False)
        sql = ["SELECT host_id, body FROM events WHERE daddr IS NOT NULL AND daddr::inet <<= %s::inet AND ts_ns >= %s"]
        params: list = [str(net), since_ns]
        if after:
            sql.append("AND " + AFTER_SQL.replace("?", "%s"))
            params.extend(after)
        if until_ns:
            sql.append("AND ts_ns <= %s")
            params.append(until_ns)
        return self._events(sql, params, limit)

    def executions(self, sha256: str = "", exe: str = "", name: str = "", since_ns: int = 0, until_ns: int = 0,
                   limit: int = 10_000, after: tuple[int, str, int] | None = None) -> list[StoredRow]:
        sql, params = ["SELECT host_id, body FROM events WHERE kind = 'exec' AND ts_ns >= %s"], [since_ns]
        if after:
            sql.append("AND " + AFTER_SQL.replace("?", "%s"))
            params.extend(after)
        if sha256:
            sql.append("AND sha256 = %s")
            params.append(sha256.lower())
        if exe:
            sql.append("AND exe = %s")
            params.append(exe)
        if name:
            sql.append("AND (exe = %s OR right(exe, %s) = %s)")
            params += [name, len(name) + 1, "/" + name]
        if until_ns:
            sql.append("AND ts_ns <= %s")
            params.append(until_ns)
        return self._events(sql, params, limit)

    def jobs_on_host(self, host_id: str, since_ns: int) -> list[tuple[str, str]]:
        return [(k, j) for k, j in self._rows(
            "SELECT job_kind, job_id FROM jobs WHERE host_id = %s AND last_ts_ns >= %s ORDER BY last_ts_ns DESC "
            "LIMIT 1000", (host_id, since_ns))]

    # -- audit, policy, retention ----------------------------------------------------------------
    def add_audit(self, who: str, role: str, peer: str, action: str, detail: str, ok: bool) -> None:
        with self.pool.connection() as con, con.transaction():
            con.execute("INSERT INTO audit VALUES (%s,%s,%s,%s,%s,%s,%s)",
                        (time.time_ns(), who, role, peer, action, detail, int(ok)))

    def audit(self, since_ns: int = 0, limit: int = 1000) -> list[dict]:
        cols = ("ts_ns", "who", "role", "peer", "action", "detail", "ok")
        return [dict(zip(cols, r, strict=True)) | {"ok": bool(r[6])} for r in self._rows(
            "SELECT ts_ns, who, role, peer, action, detail, ok FROM audit WHERE ts_ns >= %s ORDER BY ts_ns LIMIT %s",
            (since_ns, limit))]

    def save_policy(self, version: int, rules_yaml: str) -> None:
        with self.pool.connection() as con, con.transaction():
            con.execute("INSERT INTO policy VALUES (%s,%s,%s) ON CONFLICT (version) DO UPDATE SET "
                        "rules_yaml=excluded.rules_yaml, ts_ns=excluded.ts_ns", (version, rules_yaml, time.time_ns()))

    def load_policy(self) -> tuple[int, str]:
        rows = self._rows("SELECT version, rules_yaml FROM policy ORDER BY version DESC LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else (0, "")

    def purge_before(self, ts_ns: int) -> int:
        """Drop whole daily partitions that end before ts_ns; trim the default partition and the rest."""
        dropped = 0
        cutoff_day = day_of(ts_ns)
        with self._days_lock, self.pool.connection() as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for (name,) in con.execute(PARTITIONS_SQL + " AND c.relname <> 'events_default'").fetchall():
                day = int(name.rsplit("_", 1)[1])
                if day < cutoff_day:
                    dropped += con.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
                    con.execute(f"DROP TABLE {name}")
                    self._days.discard(day)
            dropped += con.execute("DELETE FROM events_default WHERE ts_ns < %s", (ts_ns,)).rowcount
            con.execute("DELETE FROM alerts WHERE ts_ns < %s", (ts_ns,))
            con.execute("DELETE FROM processes WHERE first_ts_ns < %s AND NOT EXISTS "
                        "(SELECT 1 FROM events e WHERE e.host_id = processes.host_id AND e.proc_key = processes.key)",
                        (ts_ns,))
        return dropped

    # -- detection as a durable consumer ----------------------------------------------------------
    def read_committed(self, cursor: tuple, limit: int) -> list[tuple[tuple, str, int, pb.Event]]:
        """Rows of transactions older than every running one (pg_snapshot_xmin), by (xid, rid): a transaction
        that commits late is still behind the horizon until it ends, so the cursor never skips it."""
        xid, rid = cursor if cursor else (0, 0)
        rows = self._rows(
            "SELECT xid::text::bigint, rid, host_id, ingested_ns, body FROM events "
            "WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) AND (xid, rid) > (%s::text::xid8, %s) "
            "ORDER BY xid, rid LIMIT %s", (str(xid), rid, limit))
        return [((x, r), host, ing or 0, load_event(body)) for x, r, host, ing, body in rows]

    def get_cursor(self, name: str) -> tuple:
        rows = self._rows("SELECT value FROM cursors WHERE name = %s", (name,))
        return tuple(json.loads(rows[0][0])) if rows else ()

    def set_cursor(self, name: str, cursor: tuple) -> None:
        with self.pool.connection() as con, con.transaction():
            con.execute("INSERT INTO cursors VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        (name, json.dumps(list(cursor))))

    def take_lease(self, name: str, owner: str, ttl_s: float, now_ns: int | None = None) -> bool:
        now = time.time_ns() if now_ns is None else now_ns
        with self.pool.connection() as con, con.transaction():
            row = con.execute(
                "INSERT INTO leases VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                "expires_ns = excluded.expires_ns WHERE leases.owner = excluded.owner OR leases.expires_ns < %s "
                "RETURNING owner", (name, owner, now + int(ttl_s * 1e9), now)).fetchone()
            return row is not None

    def recent_events(self, since_ts_ns: int, limit: int) -> list[tuple[str, pb.Event]]:
        return [(h, load_event(b)) for h, b in self._rows(
            "SELECT host_id, body FROM events WHERE ts_ns >= %s ORDER BY ts_ns, host_id, seq LIMIT %s",
            (since_ts_ns, limit))]

    def add_order(self, order_id: str, host_id: str, body: bytes) -> bool:
        with self.pool.connection() as con, con.transaction():
            return con.execute("INSERT INTO orders (order_id, host_id, body, created_ns) VALUES (%s,%s,%s,%s) "
                               "ON CONFLICT DO NOTHING", (order_id, host_id, body, time.time_ns())).rowcount == 1

    def due_orders(self, hosts: list[str], sent_before_ns: int, limit: int = 100) -> list[tuple[str, str, bytes]]:
        if not hosts:
            return []
        return [(o, h, bytes(b)) for o, h, b in self._rows(
            "SELECT order_id, host_id, body FROM orders WHERE done_ns = 0 AND host_id = ANY(%s) AND sent_ns < %s "
            "ORDER BY created_ns LIMIT %s", (list(hosts), sent_before_ns, limit))]

    def order_sent(self, order_id: str) -> None:
        with self.pool.connection() as con, con.transaction():
            con.execute("UPDATE orders SET sent_ns = %s WHERE order_id = %s", (time.time_ns(), order_id))

    def order_done(self, order_id: str, host_id: str, executed: bool, detail: str) -> None:
        with self.pool.connection() as con, con.transaction():
            con.execute("UPDATE orders SET done_ns = %s, executed = %s, detail = %s WHERE order_id = %s "
                        "AND host_id = %s AND done_ns = 0",
                        (time.time_ns(), int(executed), detail[:500], order_id, host_id))

    def check_integrity(self) -> None:
        """The database answers and the schema is at our version (a corrupt file is SQLite's problem)."""
        rows = self._rows("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        if rows[0][0] > len(MIGRATIONS):
            raise RuntimeError(f"the store's schema version {rows[0][0]} is newer than this collector "
                               f"({len(MIGRATIONS)}): upgrade the collector")

    def close(self) -> None:
        self.pool.close()


def partition_name(day: int) -> str:
    return f"events_{day}"      # days since the epoch: names sort by time


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
