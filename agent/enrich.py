"""Typed kernel events -> enriched ``gpuguard.v1.Event`` protobufs (process, ancestry, job, wall time).

The event built here is the one shape from enrichment to the wire: the spool
stores its bytes and the shipper sends them. In the agent's own pipeline
(``encode_events``) connects, execs and exits are made as those bytes directly
(agent/encoded.py), the same event without a protobuf object per record. Fork
and cgroup events only feed the process table and the job resolver; they are
not shipped.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

from agent.config_peek import ConfigPeek, candidate_paths
from agent.encoded import (
    EXEC_FIELD,
    EXIT_FIELD,
    JOB_TAG,
    EncodedConnect,
    EncodedEvent,
    ImageRecord,
    ImageTail,
    encoded_connect,
    event_data,
    event_prefix,
    int_field,
    length_delimited,
    process_data,
    process_head,
    text_field,
)
from agent.events import (
    CgroupEvent,
    ConnectEvent,
    ConnectResultEvent,
    EnforceEvent,
    ExecEvent,
    ExecShape,
    ExitEvent,
    FlowEvent,
    ForkEvent,
    GpuOpenEvent,
    Header,
    InboundEvent,
    KernelEvent,
    ListenEvent,
    SocketEvent,
)
from agent.exe_hash import ExeHasher, is_image
from agent.flows import (
    FLOW_DNS_ANSWER,
    FLOW_DNS_QUERY,
    FLOW_TLS_HELLO,
    FLOW_UDP_FIRST,
    FLOW_UDP_INBOUND,
    IPPROTO_TCP,
    DestinationNames,
    datagram_shape,
    off_node,
    parse_client_hello,
    parse_dns,
)
from agent.gpu_names import gpu_node_name
from agent.identity import BootClock, HostIdentity
from agent.jobs import Job, JobResolver, job_from_environ
from agent.process_table import Process, ProcessTable
from agent.ssh_config import ssh_forwards
from agent.text import clean
from gpuguard.render import hostport, printable
from gpuguard.scripts import script_of
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import (
    DENY_CONNECT,
    DENY_PIPE_CONNECT,
    DROP_PAYLOAD,
    DROP_STRATUM,
    ESCAPE_ACTIONS,
    JOB_HOST,
    JOB_SLURM,
    JOB_SYSTEMD,
    KILL_BIND_SHELL,
    KILL_ESCAPE,
    KILL_EXEC,
    SEEN_PAYLOAD,
    SEEN_REVERSE_SHELL,
    SEEN_STRATUM,
    TAMPER_ACTIONS,
)

SSH_CLIENTS = ("ssh", "autossh")
SOCK_STREAM = 1
SOCK_TYPES = {SOCK_STREAM: "tcp", 2: "udp"}
SOCKET_TYPE_NAMES = {1: "stream", 2: "dgram", 3: "raw", 10: "packet"}
AF_PACKET = 17
FAMILY_NAMES = {10: "inet6", AF_PACKET: "packet"}
PTY_HOLDER_DEPTH = 8         # ancestors looked at for a pty master's holder
MAX_CONNECTED_OUT = 16384
QUERY_REPEAT_S = 30.0        # the same query from the same process within this is not recorded again
MAX_QUERIES_TRACKED = 16384
MAX_ANCESTRIES = 4096        # ancestor messages kept (one per distinct parent image)
MAX_JOB_FIELDS = 4096        # serialised jobs kept (one per job seen lately)
MAX_SHARED_TAILS = 4096      # image tails shared by processes of one exec shape (cleared when exceeded)
MAX_RESOLVED_PATHS = 4096    # relative execs resolved to the file that ran (cleared when exceeded)
RESOLVES_PER_DRAIN = 64      # new relative execs looked up in /proc per drain (a storm of them costs its job only)


class Enricher:
    def __init__(self, identity: HostIdentity, table: ProcessTable, jobs: JobResolver,
                 hasher: ExeHasher | None = None, clock: BootClock | None = None) -> None:
        self.identity = identity
        self.table = table
        self.jobs = jobs
        self.hasher = hasher
        self.clock = clock or BootClock()
        self.rule_name: Callable[[int], str] = lambda index: f"rule#{index}"   # set by the enforcer
        self.cgroup_listeners: list[Callable[[int, str], None]] = []
        self.gpu_drivers: dict[int, str] = {}                 # GPU majors -> driver, from the loader
        self.connects = PendingConnects()
        self.config_peek = ConfigPeek()     # configuration files an exec names (agent/config_peek.py)
        self.names = DestinationNames()
        self.recent_queries: OrderedDict[tuple[int, str, str], float] = OrderedDict()
        self.connected_out: OrderedDict[int, str] = OrderedDict()   # pid -> its last TCP connect off the node
        self.encode_events = False      # connects, execs, exits as bytes (agent/encoded.py): set by the agent
        self._job_fields: dict[Job, bytes] = {}     # a job as Event field 5, made once per job
        self._tails: dict[tuple, ImageTail] = {}    # (exec shape, file, cgroup, uid, gid) -> its processes' tail
        self._resolved: dict[tuple, str] = {}       # (relative filename, image) -> the absolute path that ran
        self._resolve_budget = RESOLVES_PER_DRAIN
        self._boot_field = text_field(3, identity.boot_id)
        self.flow_stats = {"dns_answers": 0, "dns_unparsed": 0, "tls_hellos": 0, "datagrams": 0}
        self._ancestries: OrderedDict[int, tuple[list, pb.Process, bytes]] = OrderedDict()  # id(lineage) -> it
        self._handlers: dict[type, Callable[[KernelEvent], pb.Event | EncodedEvent | None]] = {
            ForkEvent: self._fork, CgroupEvent: self._cgroup, ConnectResultEvent: self._connect_result,
            ExecEvent: self._exec, ExitEvent: self._exit, ConnectEvent: self._connect,
            GpuOpenEvent: self._gpu_open, EnforceEvent: self._enforcement, FlowEvent: self._flow_event,
            SocketEvent: self._socket, InboundEvent: self._inbound, ListenEvent: self._listen}

    def _job_for(self, p: Process, hdr: Header, env_job: str = "") -> Job:
        """cgroup first; then the in-kernel SLURM_JOB_ID; then the parent's job; then /proc environ."""
        job = self.jobs.job_of(hdr.cgroup_id)
        if not hdr.pid:
            return job                       # no process: the socket's cgroup is all there is
        if job.kind in (JOB_HOST, JOB_SYSTEMD):
            if env_job:
                job = Job(JOB_SLURM, env_job)
            elif p.job is not None and p.job.kind not in (JOB_HOST, JOB_SYSTEMD):
                job = p.job
            elif p.job is None:
                job = job_from_environ(hdr.pid) or job
        p.job = job
        p.cgroup_id = hdr.cgroup_id
        return job

    def event_for_pid(self, pid: int, ts_boot_ns: int) -> pb.Event | None:
        """An event about a process that no kernel record names now (a GPU sample): its process and job."""
        p = self.table.get(pid)
        if p is None:
            return None
        cgroup = self.jobs.cgroup_of_pid(pid) or p.cgroup_id
        hdr = Header(ts_boot_ns, cgroup, pid, pid, p.uid, 0, 0, p.comm)
        return self._event(hdr, p, self._job_for(p, hdr), with_ancestry=False)

    def _process(self, hdr: Header) -> Process:
        if not hdr.pid:   # a packet no process can be named for (sent from softirq by a socket with no owner)
            return Process(0, 0, 0, "", comm=hdr.comm)
        p = self.table.get(hdr.pid)
        if p is None:  # gone before we could look: keep what the kernel told us
            p = self.table.on_fork(0, hdr.pid, hdr.ts_boot_ns)
            p.comm = hdr.comm
        p.uid = hdr.uid
        return p

    def _image(self, hdr: Header, p: Process) -> ImageRecord:
        """The parts of this image's Process that every event of it shares (without ancestors), made once per
        (process image, cgroup, uid, gid) and remade when the image's hash becomes known: a storm of events from
        one process then costs a copy or a concatenation, not a rebuild. Processes that exec'd one shape from one
        executable file share the part from exe on (``_tail``)."""
        ident = (hdr.cgroup_id, hdr.uid, hdr.gid)
        image = p.image
        if image is None or image.ident != ident:
            image = p.image = ImageRecord(ident, self._tail(p, ident))
        self.learn_hash(image.tail, p)
        return image

    def learn_hash(self, tail: ImageTail, p: Process) -> None:
        """The image's executable hash into its tail, once the hasher knows it (that inode's; "" until computed):
        every image sharing the tail remakes its pieces (staleness checks)."""
        if not tail.message.exe_sha256 and self.hasher and p.exe:
            digest = self.hasher.lookup(p.exe, p.pid, p.exe_inode)
            if digest:
                tail.set_hash(digest)

    def _tail(self, p: Process, ident: tuple[int, int, int]) -> ImageTail:
        shared = p.shape is not None and p.exe_inode is not None      # the same file, run the same way
        key = (p.shape, p.exe_inode, ident)
        if shared:
            tail = self._tails.get(key)
            if tail is not None:
                return tail
        cgroup_id, uid, gid = ident
        tail = ImageTail(pb.Process(exe=p.exe, argv=p.argv, uid=uid, gid=gid, cgroup_id=cgroup_id,
                                    cgroup=self.jobs.path_of(cgroup_id)[:4096]))
        if shared:
            if len(self._tails) > MAX_SHARED_TAILS:
                self._tails.clear()
            self._tails[key] = tail
        return tail

    def _proc_base(self, hdr: Header, p: Process) -> pb.Process:
        """The image's Process as a message, for events built as objects. The ancestors are merged into the event
        itself when it carries them (once per image)."""
        image = self._image(hdr, p)
        if image.message is None or image.message.exe_sha256 != image.tail.message.exe_sha256:
            image.message = pb.Process(key=p.key, pid=hdr.pid, ppid=p.ppid, parent_key=self.table.parent_key(p))
            image.message.MergeFrom(image.tail.message)
        return image.message

    def _process_fields(self, hdr: Header, p: Process) -> tuple[bytes, bytes, bytes]:
        """The same as bytes, for encoded events (agent/encoded.py process_data): fields 1-3, field 5, fields
        7-13, so the thread's fields go between."""
        image = self._image(hdr, p)
        tail = image.tail.serialized()
        if image.fields is None or image.fields[2] is not tail:      # a shared tail may have learnt its hash
            image.fields = (process_head(p.key, self.table.parent_key(p), hdr.pid), int_field(5, p.ppid), tail)
        return image.fields

    def _ancestry(self, p: Process) -> pb.Process:
        """A Process holding only the ancestors, built once per lineage (siblings share their parent's)."""
        return self._ancestry_made(p)[1]

    def _ancestry_bytes(self, p: Process) -> bytes:
        """The same serialised: the ancestors' entries of Process field 14."""
        return self._ancestry_made(p)[2]

    def _ancestry_made(self, p: Process) -> tuple[list, pb.Process, bytes]:
        lineage = self.table.lineage(p)
        made = self._ancestries.get(id(lineage))
        if made is None or made[0] is not lineage:
            msg = pb.Process()
            for a in lineage:
                msg.ancestors.add(**a)
            made = self._ancestries[id(lineage)] = (lineage, msg, msg.SerializeToString())
            if len(self._ancestries) > MAX_ANCESTRIES:
                self._ancestries.popitem(last=False)
        return made

    def _job_field(self, job: Job) -> bytes:
        field = self._job_fields.get(job)
        if field is None:
            if len(self._job_fields) > MAX_JOB_FIELDS:
                self._job_fields.clear()
            field = self._job_fields[job] = length_delimited(
                JOB_TAG, pb.Job(kind=job.kind, id=job.id, name=job.name).SerializeToString())
        return field

    def _thread_process(self, hdr: Header, p: Process) -> bytes:
        """The Process without its ancestors as bytes, for this thread: made once per image and thread (an exec
        and its exit share it, and so does a storm of connects from one thread)."""
        fields = self._process_fields(hdr, p)
        image = p.image
        comm = hdr.comm or p.comm
        made = image.thread
        if made is None or made[0] is not fields or made[1] != hdr.tid or made[2] != comm:
            made = image.thread = (fields, hdr.tid, comm, process_data(fields, hdr.tid, comm))
        return made[3]

    def _encoded(self, hdr: Header, p: Process, job: Job, body_field: int, body: bytes,
                 with_ancestry: bool) -> EncodedEvent:
        """The event ``_event`` plus a body would make, as its bytes (agent/encoded.py): the same ancestry rule,
        the same fields, parsed back they are equal (tests/test_encoded.py)."""
        process = self._thread_process(hdr, p)
        if with_ancestry:
            p.ancestry_sent = True
            process += self._ancestry_bytes(p)
        data = event_data(self.clock.to_wall(hdr.ts_boot_ns), event_prefix(self._boot_field, process,
                                                                           self._job_field(job)), body_field, body)
        return EncodedEvent(data, hdr.pid, job.id, body_field)

    def _event(self, hdr: Header, p: Process, job: Job, with_ancestry: bool = True, exec_: bool = False) -> pb.Event:
        """One event. The ancestry rides on a process image's first event only (and on every exec):
        later events carry the parent key, which ties them to the same tree at a fraction of the size."""
        ancestry = with_ancestry and (exec_ or not p.ancestry_sent)
        if ancestry:
            p.ancestry_sent = True
        ev = pb.Event(ts_ns=self.clock.to_wall(hdr.ts_boot_ns), boot_id=self.identity.boot_id)
        proc = ev.process
        proc.CopyFrom(self._proc_base(hdr, p))
        if ancestry:
            proc.MergeFrom(self._ancestry(p))          # appends the ancestors: one C call
        proc.tid = hdr.tid
        proc.comm = hdr.comm or p.comm
        ev.job.kind, ev.job.id, ev.job.name = job.kind, job.id, job.name
        return ev

    def note_connected_out(self, pid: int, daddr: str, dport: int) -> None:
        """A process's last TCP connect off the node (how a pty reverse shell's holder is found), bounded."""
        self.connected_out[pid] = f"{daddr}:{dport}"
        self.connected_out.move_to_end(pid)
        if len(self.connected_out) > MAX_CONNECTED_OUT:
            self.connected_out.popitem(last=False)

    def _connect_prefix(self, hdr: Header, p: Process, job: Job) -> bytes:
        """The serialised boot id, process and job a connect event carries (agent/encoded.py), made once per
        (process image, thread, comm, job, ancestry or not, hash known or not): a storm of connects from one
        thread serialises its process once. The ancestry rides on the image's first event only, as ``_event``
        has it."""
        ancestry = not p.ancestry_sent
        process = self._thread_process(hdr, p)
        cached = p.connect_prefix
        if cached is not None and cached[0] is process and cached[1] == job and cached[2] == ancestry:
            return cached[3]
        p.ancestry_sent = True
        prefix = event_prefix(self._boot_field, process + self._ancestry_bytes(p) if ancestry else process,
                              self._job_field(job))
        p.connect_prefix = (process, job, ancestry, prefix)
        return prefix

    @staticmethod
    def _ssh_forwards(hdr: Header, argv: list[str]) -> list[str]:
        """Forwards hidden in the ssh configuration this invocation reads (rare execs; bounded reads)."""
        try:
            cwd = os.readlink(f"/proc/{hdr.pid}/cwd")
        except OSError:
            cwd = "/"
        try:
            return [clean(f) for f in ssh_forwards(argv, hdr.uid, cwd)][:32]
        except Exception as exc:   # a hostile config file must not stop the exec record
            return [f"unreadable ssh configuration: {type(exc).__name__}"]

    def enrich(self, ev: KernelEvent) -> pb.Event | EncodedEvent | None:
        """The record's event (None for records that only feed the agent's state: forks, cgroups, DNS answers, a
        connect waiting for its outcome), by its kind."""
        handler = self._handlers.get(type(ev))
        if handler is None:
            raise TypeError(f"unhandled event type {type(ev).__name__}")
        return handler(ev)

    def _fork(self, ev: ForkEvent) -> None:
        self.table.on_fork(ev.parent_pid or ev.hdr.pid, ev.child_pid, ev.hdr.ts_boot_ns)

    def _cgroup(self, ev: CgroupEvent) -> None:
        if self.jobs.learn(ev.cgroup_id, ev.path):
            for listener in self.cgroup_listeners:
                listener(ev.cgroup_id, ev.path)

    def _connect_result(self, ev: ConnectResultEvent) -> pb.Event | EncodedEvent | None:
        return self.connects.outcome(ev.sk, ev.hdr.result)

    def _exit(self, ev: ExitEvent) -> pb.Event | EncodedEvent:
        hdr = ev.hdr
        p = self._process(hdr)
        job = self._job_for(p, hdr)
        self.connected_out.pop(hdr.pid, None)
        if self.encode_events:
            out = self._encoded(hdr, p, job, EXIT_FIELD, int_field(1, ev.code) + int_field(2, ev.signal),
                                with_ancestry=False)
        else:
            out = self._event(hdr, p, job, with_ancestry=False)
            out.exit.code, out.exit.signal = ev.code, ev.signal
        self.table.on_exit(hdr.pid)
        return out

    def _connect(self, ev: ConnectEvent) -> pb.Event | EncodedEvent | None:
        hdr = ev.hdr
        p = self._process(hdr)
        job = self._job_for(p, hdr)
        name, name_scope = self.names.name_of(self._names_key(hdr.cgroup_id), ev.daddr)
        family, proto = family_name(ev.family), SOCK_TYPES.get(ev.sock_type, "unknown")
        if ev.sock_type == SOCK_STREAM and off_node(ev.daddr):
            self.note_connected_out(hdr.pid, ev.daddr, ev.dport)
        if self.encode_events:
            rec = encoded_connect(self.clock.to_wall(hdr.ts_boot_ns), self._connect_prefix(hdr, p, job), family,
                                  proto, ev.daddr, ev.dport, name, name_scope, ev.repeats, hdr.pid, job.id,
                                  ev.image_nolink)
        else:
            rec = self._event(hdr, p, job)
            c = rec.connect
            c.family, c.proto, c.daddr, c.dport, c.repeats = family, proto, ev.daddr, ev.dport, ev.repeats
            c.name, c.name_scope, c.image_nolink = name, name_scope, ev.image_nolink
        return self.connects.attempt(rec, hdr.pid, ev.sk, ev.sock_type == SOCK_STREAM, ev.daddr, ev.dport)

    def _gpu_open(self, ev: GpuOpenEvent) -> pb.Event:
        out = self._object_event(ev)
        g = out.gpu_open
        g.path = ev.path or gpu_node_name(ev.major, ev.minor, self.gpu_drivers)
        g.flags, g.major, g.minor, g.image_nolink = ev.flags, ev.major, ev.minor, ev.image_nolink
        return out

    def _enforcement(self, ev: EnforceEvent) -> pb.Event:
        hdr = ev.hdr
        out = self._object_event(ev)
        e = out.enforcement
        e.action = ev.action
        if ev.action in TAMPER_ACTIONS:        # no rule made it: the record's rule field is the signal's number
            e.signal, e.detail = ev.rule_index, agent_signal_detail(ev)
        else:
            e.rule_id = self.rule_name(ev.rule_index)
            e.detail = escape_detail(ev, self.jobs.path_of(hdr.cgroup_id)) if ev.action in ESCAPE_ACTIONS \
                else enforcement_detail(ev)
        e.daddr, e.dport, e.peer_pid, e.payload = ev.daddr, ev.dport, ev.peer_pid, ev.payload
        e.repeats = ev.repeats
        if ev.action in (DENY_CONNECT, DENY_PIPE_CONNECT):
            self.connects.denied(hdr.pid, ev.daddr, ev.dport)
        return out

    def _flow_event(self, ev: FlowEvent) -> pb.Event | None:
        if ev.what == FLOW_DNS_ANSWER:
            self._learn_names(ev)
            return None
        p = self._process(ev.hdr)
        return self._flow(ev, p, self._job_for(p, ev.hdr))

    def _socket(self, ev: SocketEvent) -> pb.Event:
        out = self._object_event(ev)
        so = out.socket
        so.family = family_name(ev.family)
        so.type = SOCKET_TYPE_NAMES.get(ev.type, str(ev.type))
        so.protocol, so.what = socket_kind(ev.family, ev.type, ev.protocol)
        so.result = -errno.EPERM if ev.hdr.result else 0
        return out

    def _inbound(self, ev: InboundEvent) -> pb.Event:
        out = self._object_event(ev, with_ancestry=False)
        i = out.inbound
        i.family, i.peer, i.peer_port, i.local_port = family_name(ev.family), ev.raddr, ev.rport, ev.lport
        i.repeats, i.proto = ev.repeats, "tcp"
        return out

    def _listen(self, ev: ListenEvent) -> pb.Event:
        out = self._object_event(ev)
        out.listen.family, out.listen.addr, out.listen.port = family_name(ev.family), ev.addr, ev.port
        return out

    def _object_event(self, ev: KernelEvent, with_ancestry: bool = True) -> pb.Event:
        """The event of a rare kind, built as an object: its process and job, the body left to the caller."""
        p = self._process(ev.hdr)
        return self._event(ev.hdr, p, self._job_for(p, ev.hdr), with_ancestry=with_ancestry)

    def _exec(self, ev: ExecEvent) -> pb.Event | EncodedEvent:
        """An exec. What follows from the record alone (its body, the configuration files its argv names, whether
        it is an ssh client) is made once per shape (agent/events.py ExecShape): a storm of identical execs pays
        for its processes, not for its argv."""
        hdr = ev.hdr
        p = self._process(hdr)
        shape = ev.shape
        if ev.argv_truncated:
            full = full_cmdline(hdr.pid, ev.argv)
            if full is not None:
                ev.argv, ev.argv_truncated = full
                shape = None                     # this record now says more than its shape
        exe = self._absolute(hdr.pid, ev.filename, ev.exe_inode, ev.ppid)
        self.table.on_exec(hdr.pid, exe, ev.argv, hdr.comm, ev.ppid, ev.exe_inode, shape)
        job = self._job_for(p, hdr, ev.slurm_job_env)
        pty_peer = self._pty_peer(hdr.pid, ev.tty) if ev.tty >= 0 else ""
        if shape is None:
            shape = ExecShape()
        if shape.ssh_client is None:
            shape.ssh_client = os.path.basename(ev.filename) in SSH_CLIENTS
            shape.script = script_of(ev.argv)
            shape.config_paths = [c for c in candidate_paths(ev.argv, ev.filename) if c != shape.script]
        forwards = self._ssh_forwards(hdr, ev.argv) if shape.ssh_client else ()
        config_lines = self.config_peek.lines_from(shape.config_paths, hdr.pid, hdr.uid, hdr.gid) \
            if shape.config_paths else []
        if shape.script:                 # what a shell script does, which no exec of its own shows
            config_lines += self.config_peek.script(shape.script, hdr.pid, hdr.uid, hdr.gid)
        if self.encode_events and not (pty_peer or forwards or config_lines):   # nothing of this process's own
            if shape.body is None:
                shape.body = exec_body(ev).SerializeToString()
            data = shape.body
        else:
            body = exec_body(ev, pty_peer, forwards, config_lines)
            if not self.encode_events:
                out = self._event(hdr, p, job, exec_=True)
                out.exec.CopyFrom(body)
                return out
            data = body.SerializeToString()
        return self._encoded(hdr, p, job, EXEC_FIELD, data, with_ancestry=True)

    def new_drain(self) -> None:
        """A new drain of the ring: the per-drain budgets of what is read from /proc and files start again."""
        self.config_peek.new_drain()
        self._resolve_budget = RESOLVES_PER_DRAIN

    def _absolute(self, pid: int, filename: str, image: tuple[int, int, int] | None, ppid: int = 0) -> str:
        """A relative exec (``./w``, ``bin/x``: what execve was given) as the absolute path of the file that ran,
        for the process's exe: the rules that read where a program runs from (/tmp, /dev/shm, a hidden directory)
        must not be passed by ``cd /dev/shm && ./x``. The process's working directory joined to the name - or its
        parent's, which it inherited, when the process is gone already (a short-lived program) - kept only when that
        path, seen through that process's root, is the image the kernel reported (its inode), so neither a directory
        changed since nor a race names another file; otherwise the name as given."""
        if filename.startswith("/") or image is None:
            return filename
        key = (filename, image)
        path = self._resolved.get(key)
        if path is not None:
            return path
        if self._resolve_budget <= 0:
            return filename
        self._resolve_budget -= 1
        for holder in (pid, ppid) if ppid else (pid,):
            try:
                path = os.path.normpath(os.path.join(os.readlink(f"/proc/{holder}/cwd"), filename))
                if is_image(os.stat(f"/proc/{holder}/root{path}"), image):
                    break
            except OSError:           # gone already, or not ours to look at
                pass
        else:
            return filename
        if len(self._resolved) >= MAX_RESOLVED_PATHS:
            self._resolved.clear()
        self._resolved[key] = path
        return path

    def _pty_peer(self, pid: int, tty: int) -> str:
        """The ancestor holding the master of pts ``tty``, if it connected out of the node: a pty reverse shell
        (socat ...,pty; python pty.spawn after connect). Terminals served to inbound users (sshd, jupyter,
        tmux, script) hold masters too, but did not connect out. Only ancestors that connected out are
        looked at in /proc, so an ordinary terminal costs nothing."""
        for anc in self.table.ancestors(pid)[:PTY_HOLDER_DEPTH]:
            dest = self.connected_out.get(anc.pid)
            if dest and holds_pty_master(anc.pid, tty):
                return clean(f"pid {anc.pid} ({anc.comm}) holds the pty master and connected to {dest}".encode())
        return ""

    # -- flows: whom they are for -----------------------------------------------------------------
    def _names_key(self, cgroup_id: int) -> str:
        """The job whose DNS answers name its connects: by cgroup at both ends (answers carry no process)."""
        job = self.jobs.job_of(cgroup_id)
        return f"{job.kind}:{job.id}"

    def _learn_names(self, ev: FlowEvent) -> None:
        msg = parse_dns(ev.data, tcp=ev.proto == IPPROTO_TCP)
        if msg is None or not msg.response or not msg.questions:
            self.flow_stats["dns_unparsed"] += 1
            return
        self.flow_stats["dns_answers"] += 1
        asked = msg.questions[0][0]
        key = self._names_key(ev.hdr.cgroup_id)
        for answer in msg.answers:
            if answer.address:
                self.names.learn(key, asked, answer.address, answer.ttl)

    def _flow(self, ev: FlowEvent, p: Process, job: Job) -> pb.Event | None:
        hdr = ev.hdr
        if ev.what == FLOW_DNS_QUERY:
            msg = parse_dns(ev.data, tcp=ev.proto == IPPROTO_TCP)
            if msg is None or msg.response or not msg.questions:
                return None
            name, qtype = msg.questions[0]
            if not self._new_query(hdr.pid, name, qtype):
                return None
            out = self._event(hdr, p, job)
            d = out.dns
            d.name, d.qtype, d.server, d.server_port = clean(name.encode()), qtype, ev.raddr, ev.rport
            d.transport = "tcp" if ev.proto == IPPROTO_TCP else "udp"
            return out
        if ev.what == FLOW_TLS_HELLO:
            hello = parse_client_hello(ev.data)
            if hello is None:
                return None
            self.flow_stats["tls_hellos"] += 1
            out = self._event(hdr, p, job)
            t = out.tls
            t.sni, t.version, t.ja4 = clean(hello.sni.encode()), hello.version, hello.ja4
            t.alpn.extend(clean(a.encode()) for a in hello.alpn)
            t.daddr, t.dport, t.transport = ev.raddr, ev.rport, "tcp"
            return out
        if ev.what == FLOW_UDP_INBOUND:            # someone off the node reached a job's UDP socket first
            out = self._event(hdr, p, job, with_ancestry=False)
            i = out.inbound
            i.family = "inet6" if ":" in ev.raddr else "inet"      # the decoder writes v4 peers dotted
            i.peer, i.peer_port, i.local_port, i.proto = ev.raddr, ev.rport, ev.lport, "udp"
            return out
        if ev.what == FLOW_UDP_FIRST:
            shape = datagram_shape(ev.data, ev.length)
            if not shape:
                return None
            self.flow_stats["datagrams"] += 1
            out = self._event(hdr, p, job)
            g = out.datagram
            g.shape, g.daddr, g.dport, g.length, g.excerpt = shape, ev.raddr, ev.rport, ev.length, ev.data[:64]
            return out
        return None

    def _new_query(self, pid: int, name: str, qtype: str) -> bool:
        now = time.monotonic()
        key = (pid, name, qtype)
        last = self.recent_queries.get(key)
        self.recent_queries[key] = now
        self.recent_queries.move_to_end(key)
        while len(self.recent_queries) > MAX_QUERIES_TRACKED:
            self.recent_queries.popitem(last=False)
        return last is None or now - last > QUERY_REPEAT_S


class PendingConnects:
    """Ties a connect to its outcome. The cgroup hook sees a connect before it happens: a TCP connect
    waits (by socket address) for its handshake's end from inet_sock_set_state, at most ``wait_s``
    (then it is reported as -EINPROGRESS); a connect the enforcement hook just denied is -EPERM."""

    def __init__(self, wait_s: float = 2.0, max_pending: int = 65536) -> None:
        self.wait_s = wait_s
        self.max_pending = max_pending
        self.pending: OrderedDict[int, tuple[float, pb.Event | EncodedConnect]] = OrderedDict()
        self.recent_denies: OrderedDict[tuple[int, str, int], float] = OrderedDict()
        self.overflow: list[pb.Event | EncodedEvent] = []

    def attempt(self, rec: pb.Event | EncodedConnect, pid: int, sk: int, tcp: bool, daddr: str,
                dport: int) -> pb.Event | EncodedEvent | None:
        if self.recent_denies.pop((pid, daddr, dport), None) is not None:
            return with_result(rec, -errno.EPERM)
        if not tcp or not sk:
            return with_result(rec, 0)
        self.pending[sk] = (time.monotonic(), rec)
        if len(self.pending) > self.max_pending:
            _sk, (_t, oldest) = self.pending.popitem(last=False)
            self.overflow.append(with_result(oldest, -errno.EINPROGRESS))
        return None

    def outcome(self, sk: int, result: int) -> pb.Event | EncodedEvent | None:
        item = self.pending.pop(sk, None)
        if item is None:
            return None                       # a connect made before the agent started
        return with_result(item[1], result)

    def denied(self, pid: int, daddr: str, dport: int) -> None:
        self.recent_denies[(pid, daddr, dport)] = time.monotonic()
        self.recent_denies.move_to_end((pid, daddr, dport))   # kept in time order for expired()
        while len(self.recent_denies) > 4096:
            self.recent_denies.popitem(last=False)

    def expired(self) -> list[pb.Event | EncodedEvent]:
        """Connects whose outcome did not come in time (still connecting, or non-blocking and abandoned)."""
        out, self.overflow = self.overflow, []
        cutoff = time.monotonic() - self.wait_s
        while self.pending:
            sk, (t, rec) = next(iter(self.pending.items()))
            if t > cutoff:
                break
            del self.pending[sk]
            out.append(with_result(rec, -errno.EINPROGRESS))
        while self.recent_denies and next(iter(self.recent_denies.values())) <= cutoff:
            self.recent_denies.popitem(last=False)   # oldest first: stop at the first recent one
        return out


def with_result(rec: pb.Event | EncodedConnect, result: int) -> pb.Event | EncodedEvent:
    """The connect with its outcome: set on the event, or encoded into the bytes."""
    if isinstance(rec, EncodedConnect):
        return rec.done(result)
    rec.connect.result = result
    return rec


CMDLINE_MAX = 1 << 16          # bytes of /proc/PID/cmdline read for an exec the kernel could not record in full
CMDLINE_ARG_CHARS = 1024       # each argument kept up to this: every argument is kept, long ones clipped
CMDLINE_TOTAL_CHARS = 16384


def full_cmdline(pid: int, kernel_argv: list[str]) -> tuple[list[str], bool] | None:
    """Every argument of a process whose argv the kernel had to cut (more or longer arguments than its buffer),
    from /proc/PID/cmdline while it still runs the same image (its argv[0] begins as the kernel read it):
    (argv, still_truncated). Long-lived processes (miners, tunnels) are the ones this matters for; None when
    the process is gone or is no longer that image."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(CMDLINE_MAX + 1)
    except OSError:
        return None
    args = raw[:CMDLINE_MAX].split(b"\0")
    if args and args[-1] == b"":
        args.pop()
    if not args or not kernel_argv or not clean(args[0]).startswith(kernel_argv[0][:200]):
        return None
    out, total, cut = [], 0, len(raw) > CMDLINE_MAX
    for a in args:
        text = clean(a[:CMDLINE_ARG_CHARS])
        cut |= len(a) > CMDLINE_ARG_CHARS
        if total + len(text) > CMDLINE_TOTAL_CHARS:
            cut = True
            break
        out.append(text)
        total += len(text) + 1
    return out, cut


MAX_FDS_SCANNED = 4096


def holds_pty_master(pid: int, tty: int) -> bool:
    """Whether pid has an open /dev/ptmx whose pty is number tty (fdinfo's tty-index). Bounded, race-tolerant."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")[:MAX_FDS_SCANNED]
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") not in ("/dev/ptmx", "/dev/pts/ptmx"):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("tty-index:") and line.split(":", 1)[1].strip() == str(tty):
                        return True
        except OSError:
            continue
    return False


def escape_detail(ev: EnforceEvent, job_cgroup: str) -> str:
    """Who left which job for where, and who moved it (probes/enforce_escape.c)."""
    to = printable(ev.payload) or "?"
    by = "itself" if ev.peer_pid == ev.hdr.pid else f"pid {ev.peer_pid}"
    done = "the mover was killed in the kernel" if ev.action == KILL_ESCAPE else "reported"
    return f"{ev.hdr.comm} (pid {ev.hdr.pid}) left its job's cgroup {job_cgroup or '?'} for {to}, moved by {by}: {done}"


def agent_signal_detail(ev: EnforceEvent) -> str:
    """Which signal whom sent to the agent (probes/agent_guard.c): the signal's name comes first, rules match it."""
    try:
        name = signal.Signals(ev.rule_index).name
    except ValueError:
        name = f"signal {ev.rule_index}"
    return f"{name} sent to the agent (pid {ev.peer_pid}) by {ev.hdr.comm} (pid {ev.hdr.pid})"


def exec_body(ev: ExecEvent, pty_peer: str = "", forwards=(), config_lines=()) -> pb.Exec:
    """An exec record's body; the pty peer, ssh forwards and configuration lines are the process's own (empty:
    the body every exec of its shape shares)."""
    return pb.Exec(filename=ev.filename, argv=ev.argv, argv_truncated=ev.argv_truncated, argv_bytes=ev.argv_bytes,
                   stdio=ev.stdio or (), traits=ev.traits or (), pty_peer=pty_peer, ssh_forwards=forwards,
                   config_lines=config_lines)


def family_name(family: int) -> str:
    """How records name an address family: inet6, packet (AF_PACKET), else inet."""
    return FAMILY_NAMES.get(family, "inet")


def socket_kind(family: int, sock_type: int, protocol: int) -> tuple[int, str]:
    """(protocol as the caller meant it, what the socket is: raw-ip, icmp or packet) of a socket record. A
    packet socket's protocol is an Ethernet type in network byte order (htons(ETH_P_ALL) = 0x0300)."""
    if family == AF_PACKET:
        return socket.ntohs(protocol & 0xFFFF), "packet"
    return protocol, "raw-ip" if sock_type == 3 else "icmp"


def enforcement_detail(ev: EnforceEvent) -> str:
    dest = hostport(ev.daddr, ev.dport)
    peer = f"pid {ev.peer_pid}"
    if ev.action == KILL_EXEC and ev.peer_pid:
        return (f"{ev.hdr.comm} (pid {ev.hdr.pid}) killed at exec in the kernel: its stdio is a pipe to {peer}, "
                "which connected out")
    if ev.action == KILL_EXEC:
        return f"{ev.hdr.comm} (pid {ev.hdr.pid}) killed at exec in the kernel"
    if ev.action == DENY_PIPE_CONNECT:
        return f"connect to {dest} denied in the kernel (EPERM): this process's stdio is a pipe to shell {peer}"
    if ev.action == KILL_BIND_SHELL:
        return (f"{ev.hdr.comm} (pid {ev.hdr.pid}) killed at listen() on port {ev.dport} in the kernel: its stdio "
                f"is a pipe to shell {peer} (a bind shell)")
    if ev.action == SEEN_REVERSE_SHELL:
        return f"a shell wired to the network through a pipe ({ev.hdr.comm} pid {ev.hdr.pid} <-> {peer}), " \
               "monitor mode: nothing done"
    if ev.action in (DROP_PAYLOAD, SEEN_PAYLOAD):
        done = "dropped in the kernel" if ev.action == DROP_PAYLOAD else "seen (reported, not dropped)"
        return f"payload to {dest} {done}: {printable(ev.payload[:48])}"
    if ev.action == DENY_CONNECT:
        return f"connect/sendmsg to {dest} denied in the kernel (EPERM)"
    if ev.action == DROP_STRATUM:
        return f"stratum handshake to {dest} dropped in the kernel"
    if ev.action == SEEN_STRATUM:
        return f"stratum handshake to {dest} seen (monitor mode, not dropped)"
    return ev.action

