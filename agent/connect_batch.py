"""A drain's connects enriched as columns: no record object, no protobuf, no pass through the ordered event loop.

A connect flood is hundreds of thousands of records from a few threads to many destinations. Taken one record at a
time, each costs a decoded object, its enrichment, its outcome pairing and its serialisation (~10 us of Python).
Here a drain's connect and outcome arrays are handled whole: the process, job and serialised prefix once per
distinct (thread, comm, cgroup, uid, gid), each address and its DNS name once, the outcome joined to its connect
by socket address in kernel order (a socket address is reused at once by a connect loop: the join pairs each
outcome with the latest connect before it), and only the bytes of each event assembled per record
(agent/encoded.py).

Only when the drain cannot change what these connects are enriched from, or how: no exec, exit or fork of a
connecting process (its image or entry in the process table), no enforcement record (a denied connect's outcome),
no flow record (a DNS answer that names an address) in the drain, and no denial waiting from an earlier one.
Anything else goes through the ordered loop (agent/enrich.py), which gives the same events (tests/test_encoded.py
runs both on the same arrays).
"""

from __future__ import annotations

import numpy as np

from agent import wire
from agent.batch import DTYPES, ArenaBatch
from agent.decode import CONNECT_IMAGE_NOLINK, _addr, _cstr
from agent.encoded import EncodedConnect, EncodedRun, connect_address, connect_name, pid_of
from agent.enrich import SOCK_STREAM, SOCK_TYPES, Enricher, family_name
from agent.events import Header
from agent.flows import off_node
from gpuguard.v1 import events_pb2 as pb

BULK_MIN = 64              # fewer connects than this in a drain: the ordered loop is as cheap
BLOCKING_KINDS = (pb.KIND_ENFORCE, pb.KIND_FLOW)
TABLE_KINDS = ((pb.KIND_EXEC, "hdr_tgid"), (pb.KIND_EXIT, "hdr_tgid"), (pb.KIND_FORK, "child_tgid"))
IDENTITY = ["hdr_tgid", "hdr_tid", "hdr_comm", "hdr_cgroup_id", "hdr_uid", "hdr_gid"]


def bulk_ready(batch: ArenaBatch, enricher: Enricher) -> bool:
    """Can this drain's connects be enriched as columns and give what the ordered loop gives?"""
    connects = batch.arrays.get(pb.KIND_CONNECT)
    if connects is None or connects.size < BULK_MIN or enricher.connects.recent_denies:
        return False
    if any(batch.arrays.get(k) is not None and batch.arrays[k].size for k in BLOCKING_KINDS):
        return False
    touched = [batch.arrays[k][field] for k, field in TABLE_KINDS if batch.arrays.get(k) is not None]
    return not touched or not np.isin(connects["hdr_tgid"], np.concatenate(touched)).any()


def words(column: np.ndarray) -> list[np.ndarray]:
    """A fixed-size bytes column (an address, a comm) as 64-bit words, for sorting."""
    return list(np.ascontiguousarray(column).view("<u8").reshape(column.size, column.dtype.itemsize // 8).T)


def unique_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows equal in every column, grouped: (each group's first row, each row's group). np.unique does this for a
    structured array by sorting void values, several times slower than a lexsort of plain integers."""
    n = columns[0].size
    order = np.lexsort(columns[::-1])                    # the first column is the primary key; stable
    new = np.ones(n, bool)
    if n > 1:
        ordered = [c[order] for c in columns]
        new[1:] = np.logical_or.reduce([c[1:] != c[:-1] for c in ordered])
    inverse = np.empty(n, np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


class BulkConnects:
    """One drain's connects and outcomes as columns. ``note_leaving`` runs before the drain's other records are
    enriched (a shell exec'd in the same drain looks for an ancestor that connected out); ``events`` after them."""

    def __init__(self, batch: ArenaBatch, enricher: Enricher, ignore_pids: set[int]) -> None:
        conns = batch.arrays[pb.KIND_CONNECT]
        if ignore_pids:
            conns = conns[~np.isin(conns["hdr_tgid"], np.fromiter(ignore_pids, dtype=np.uint32))]
        results = batch.arrays.get(pb.KIND_CONNECT_RESULT)
        self.batch = batch
        self.conns = conns
        self.results = results if results is not None else np.zeros(0, dtype=DTYPES[pb.KIND_CONNECT_RESULT])
        self.enricher = enricher
        self.ignore_pids = ignore_pids
        first, self.dest = unique_rows(conns["family"], *words(conns["daddr"]))          # each address once
        where = conns[["family", "daddr"]][first]
        self.addrs = [_addr(fam, bytes(raw)) for fam, raw in where.tolist()]
        self.families = [family_name(fam) for fam, _raw in where.tolist()]
        self.tcp = conns["sock_type"] == SOCK_STREAM

    def __len__(self) -> int:
        return int(self.conns.size + self.results.size)

    def note_leaving(self) -> None:
        """Each process's last TCP connect off the node (how a pty reverse shell's holder is found)."""
        conns, enricher = self.conns, self.enricher
        rows = np.flatnonzero(np.array([off_node(a) for a in self.addrs], bool)[self.dest] & self.tcp)
        if not rows.size:
            return
        pids = conns["hdr_tgid"][rows].astype(np.int64)
        _u, last_from_end = np.unique(pids[::-1], return_index=True)
        for i in sorted(rows[rows.size - 1 - last_from_end].tolist()):
            enricher.note_connected_out(int(conns["hdr_tgid"][i]), self.addrs[self.dest[i]], int(conns["dport"][i]))

    def events(self) -> list:
        """The drain's connects with their outcomes (EncodedEvent; a pb.Event for the outcome of a connect an
        earlier drain left pending through the ordered loop). Connects still waiting for their outcome go to the
        enricher's pending table, like the ordered loop's."""
        conns, results, enricher = self.conns, self.results, self.enricher
        n = conns.size
        # who: one process, job and serialised prefix per distinct identity
        first, who = unique_rows(conns["hdr_tgid"], conns["hdr_tid"], *words(conns["hdr_comm"]),
                                 conns["hdr_cgroup_id"], conns["hdr_uid"], conns["hdr_gid"])
        idents = conns[IDENTITY][first]
        count = idents.size
        prefixes, jobs, pids, name_keys = [b""] * count, [""] * count, [0] * count, [""] * count
        with_ancestry: dict[int, bytes] = {}        # row -> its prefix: a process image's first event carries its
        for w in np.argsort(first, kind="stable").tolist():     # ancestry (identities by first row: that is it)
            tgid, tid, comm, cgroup, uid, gid = idents[w].tolist()
            hdr = Header(int(conns["hdr_ts_ns"][first[w]]), cgroup, tid, tgid, uid, gid, 0, _cstr(comm))
            p = enricher._process(hdr)
            job = enricher._job_for(p, hdr)
            if not p.ancestry_sent:
                with_ancestry[int(first[w])] = enricher._connect_prefix(hdr, p, job)
            prefixes[w] = enricher._connect_prefix(hdr, p, job)
            jobs[w], pids[w], name_keys[w] = job.id, tgid, enricher._names_key(cgroup)
        dest, addrs, families, tcp, ignore_pids = self.dest, self.addrs, self.families, self.tcp, self.ignore_pids
        # outcome join in kernel order: connects and outcomes sorted by (sk, time, connect first); an outcome pairs with
        # the connect just before it on the same socket address
        rows = np.flatnonzero(tcp & (conns["sk"] != 0))
        sk = np.concatenate([conns["sk"][rows], results["sk"]])
        ts = np.concatenate([conns["hdr_ts_ns"][rows], results["hdr_ts_ns"]])
        is_outcome = np.concatenate([np.zeros(rows.size, bool), np.ones(results.size, bool)])
        index = np.concatenate([rows, np.arange(results.size)])
        order = np.lexsort((is_outcome, ts, sk))
        sk, is_outcome, index = sk[order], is_outcome[order], index[order]
        after_connect = np.zeros(sk.size, bool)
        after_connect[1:] = ~is_outcome[:-1] & (sk[1:] == sk[:-1])
        paired = np.flatnonzero(is_outcome & after_connect)
        result = np.zeros(n, np.int64)
        result[index[paired - 1]] = results["hdr_result"][index[paired]]
        done = np.zeros(n, bool)
        done[index[paired - 1]] = True
        done[~(tcp & (conns["sk"] != 0))] = True          # UDP and unconnected sends: no outcome to wait for
        out: list = []
        for i in index[np.flatnonzero(is_outcome & ~after_connect)].tolist():   # outcomes of earlier drains' connects
            rec = enricher.connects.outcome(int(results["sk"][i]), int(results["hdr_result"][i]))
            if rec is not None and pid_of(rec) not in ignore_pids:
                out.append(rec)
        wall = conns["hdr_ts_ns"].astype(np.int64) + np.int64(enricher.clock.offset_ns)
        nolink = (conns["flags"] & CONNECT_IMAGE_NOLINK) != 0
        # the parts many events share, each made once: prefixes (one per identity, and a process image's first
        # event's with its ancestry), addresses (fields 1-3, per destination and socket type), names (fields 6-7,
        # per identity and destination); each row's event is then its columns and three indexes into `pieces`
        pieces: list[bytes] = list(prefixes)
        prefix_at = who.astype(np.int64)
        for row, prefix in with_ancestry.items():
            prefix_at[row] = len(pieces)
            pieces.append(prefix)
        address_keys, address_at = np.unique((dest.astype(np.int64) << 32) | conns["sock_type"], return_inverse=True)
        address_at = address_at + len(pieces)
        for key in address_keys.tolist():
            d = key >> 32
            pieces.append(connect_address(families[d], SOCK_TYPES.get(key & 0xFFFFFFFF, "unknown"), addrs[d]))
        name_keys_at, name_at = np.unique((who.astype(np.int64) << 32) | dest, return_inverse=True)
        name_at = name_at + len(pieces)
        for key in name_keys_at.tolist():
            pieces.append(connect_name(*enricher.names.name_of(name_keys[key >> 32], addrs[key & 0xFFFFFFFF])))
        finished = np.flatnonzero(done)
        if finished.size:
            data, ends = wire.encode_connects(wall[finished], prefix_at[finished], address_at[finished],
                                              name_at[finished], conns["dport"][finished], result[finished],
                                              conns["repeats"][finished], nolink[finished], pieces)
            out.append(EncodedRun(data, ends, np.asarray(pids, np.int64)[who[finished]], who[finished], jobs))
        for row in np.flatnonzero(~done).tolist():          # waits for its outcome, like the ordered loop's
            w, d = int(who[row]), int(dest[row])
            pending = EncodedConnect(int(wall[row]), pieces[prefix_at[row]], pieces[address_at[row]],
                                     int(conns["dport"][row]), pieces[name_at[row]], int(conns["repeats"][row]),
                                     pids[w], jobs[w], addrs[d], bool(nolink[row]))
            enricher.connects.attempt(pending, pids[w], int(conns["sk"][row]), True, addrs[d],
                                      int(conns["dport"][row]))
        return out
