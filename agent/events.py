"""Typed events, as decoded from the kernel (before enrichment)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Header:
    ts_boot_ns: int   # CLOCK_BOOTTIME nanoseconds
    cgroup_id: int
    tid: int
    pid: int          # the process (thread-group) id
    uid: int
    gid: int
    result: int
    comm: str


class ExecShape:
    """What identical exec records share: a shell loop or a build execs the same image with the same argv thousands
    of times, and the batch decoder (agent/batch.py) hands every such record one shape. What the agent derives from
    the record alone - its Exec body's bytes, the configuration files its argv names, the shell script it runs,
    whether it is an ssh client - is kept here and made once per shape (agent/enrich.py), not once per exec."""

    __slots__ = ("body", "config_paths", "script", "ssh_client")

    def __init__(self) -> None:
        self.body: bytes | None = None                 # the Exec body when nothing about the process adds to it
        self.config_paths: list[str] | None = None     # agent/config_peek.py candidate_paths
        self.script: str | None = None                 # the shell script it runs (gpuguard/scripts.py script_of)
        self.ssh_client: bool | None = None


@dataclass(slots=True)
class ExecEvent:
    hdr: Header
    filename: str
    argv: list[str]
    argv_truncated: bool
    argv_fault: bool
    slurm_job_env: str
    ppid: int = 0     # the real parent, from the kernel
    stdio: list[str] | None = None   # what fds 0-2 are at exec: socket | fifo | other
    traits: list[str] | None = None  # what the image is (ExecTrait names): image_nolink, via_loader, ...
    tty: int = -1                    # the pts number of the first pty slave on fds 0-2 (-1: none)
    argv_bytes: int = 0              # the whole argv's size in memory (NUL-separated), however much was read
    exe_inode: tuple[int, int, int] | None = None   # (kernel dev, inode, ctime ns) of the new image
    shape: ExecShape | None = field(default=None, compare=False, repr=False)   # shared by identical records


@dataclass(slots=True)
class ForkEvent:
    hdr: Header       # the thread that forked
    child_pid: int
    parent_pid: int = 0   # the child's real parent (differs from hdr.pid for CLONE_PARENT)


@dataclass(slots=True)
class ExitEvent:
    hdr: Header       # result: raw task->exit_code
    code: int = 0     # exit status
    signal: int = 0   # terminating signal (0: normal exit)


@dataclass(slots=True)
class ConnectEvent:
    hdr: Header
    family: int       # 2 = AF_INET, 10 = AF_INET6
    sock_type: int    # 1 = TCP, 2 = UDP
    daddr: str
    dport: int
    sk: int = 0       # the socket's kernel address: ties the TCP outcome to this connect
    protocol: int = 0
    sendmsg: bool = False   # an unconnected UDP send, not a connect()
    repeats: int = 0        # identical connects folded into this one in the kernel
    image_nolink: bool = False   # the connecting task's image had no link on disk (deleted since it started, memfd)


@dataclass(slots=True)
class ConnectResultEvent:
    hdr: Header       # result: 0 established, -errno when the handshake failed
    sk: int


@dataclass(slots=True)
class GpuOpenEvent:
    hdr: Header
    path: str         # named by the agent from the device number (agent/gpu_names.py)
    flags: int        # access: 2 read, 4 write (GPU_OPEN_IMAGE_NOLINK taken out into image_nolink)
    major: int = 0
    minor: int = 0
    image_nolink: bool = False   # the opening task's image had no link on disk (deleted since it started, memfd)


@dataclass(slots=True)
class EnforceEvent:
    hdr: Header
    action: str       # an EnforcementAction name (gpuguard.vocab.ACTION_NAMES)
    rule_index: int
    daddr: str
    dport: int
    peer_pid: int = 0        # pipe actions: the process at the pipe's other end
    payload: bytes = b""     # payload actions: the first bytes of the packet that matched
    repeats: int = 0         # identical actions folded into this one in the kernel


@dataclass(slots=True)
class CgroupEvent:
    hdr: Header
    cgroup_id: int
    level: int
    path: str         # relative to its hierarchy's root


@dataclass(slots=True)
class FlowEvent:
    """First bytes of a flow that name its destination (probes/flow.c)."""

    hdr: Header       # pid 0 for DNS answers (received in softirq); cgroup_id is the socket's
    what: int         # FLOW_TLS_HELLO | FLOW_DNS_QUERY | FLOW_DNS_ANSWER | FLOW_UDP_FIRST
    raddr: str        # the remote address: destination of a send, source of an answer
    rport: int
    lport: int
    proto: int        # 6 TCP, 17 UDP
    length: int       # payload bytes in the packet
    cookie: int
    data: bytes       # the first min(length, 512) payload bytes


@dataclass(slots=True)
class SocketEvent:
    """A raw IP or ICMP socket created (cgroup/sock_create), or a packet socket at its first send or receive
    (probes/flow.c packet_use)."""

    hdr: Header       # result: 0, or -1 when a policy refused it (EPERM)
    family: int
    type: int
    protocol: int
    rule_index: int = 0


@dataclass(slots=True)
class InboundEvent:
    """A TCP connection from off the node completed its handshake to a listening socket."""

    hdr: Header       # pid 0 (no process has accepted it yet); cgroup_id is the listener's
    family: int
    lport: int
    rport: int
    raddr: str
    repeats: int = 0


@dataclass(slots=True)
class ListenEvent:
    """A process started listening on a TCP port."""

    hdr: Header       # the listening process (listen() runs in its context)
    family: int
    port: int
    addr: str


KernelEvent = (ExecEvent | ForkEvent | ExitEvent | ConnectEvent | ConnectResultEvent | GpuOpenEvent | EnforceEvent
               | CgroupEvent | FlowEvent | SocketEvent | InboundEvent | ListenEvent)


@dataclass(slots=True)
class DecodeStats:
    decoded: int = 0
    malformed: int = 0

