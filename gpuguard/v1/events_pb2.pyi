from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KernelEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[KernelEventKind]
    KIND_EXEC: _ClassVar[KernelEventKind]
    KIND_FORK: _ClassVar[KernelEventKind]
    KIND_EXIT: _ClassVar[KernelEventKind]
    KIND_CONNECT: _ClassVar[KernelEventKind]
    KIND_GPU_OPEN: _ClassVar[KernelEventKind]
    KIND_ENFORCE: _ClassVar[KernelEventKind]
    KIND_CGROUP: _ClassVar[KernelEventKind]
    KIND_CONNECT_RESULT: _ClassVar[KernelEventKind]
    KIND_FLOW: _ClassVar[KernelEventKind]
    KIND_SOCKET: _ClassVar[KernelEventKind]
    KIND_INBOUND: _ClassVar[KernelEventKind]
    KIND_LISTEN: _ClassVar[KernelEventKind]

class EnforcementAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[EnforcementAction]
    ACTION_KILL_EXEC: _ClassVar[EnforcementAction]
    ACTION_DENY_CONNECT: _ClassVar[EnforcementAction]
    ACTION_DROP_STRATUM: _ClassVar[EnforcementAction]
    ACTION_SEEN_STRATUM: _ClassVar[EnforcementAction]
    ACTION_KILL: _ClassVar[EnforcementAction]
    ACTION_KILL_TREE: _ClassVar[EnforcementAction]
    ACTION_DROP_PAYLOAD: _ClassVar[EnforcementAction]
    ACTION_SEEN_PAYLOAD: _ClassVar[EnforcementAction]
    ACTION_DENY_PIPE_CONNECT: _ClassVar[EnforcementAction]
    ACTION_SEEN_REVERSE_SHELL: _ClassVar[EnforcementAction]
    ACTION_KILL_ESCAPE: _ClassVar[EnforcementAction]
    ACTION_SEEN_ESCAPE: _ClassVar[EnforcementAction]
    ACTION_KILL_BIND_SHELL: _ClassVar[EnforcementAction]
    ACTION_SEEN_AGENT_SIGNAL: _ClassVar[EnforcementAction]

class KillCondition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KILL_IF_ALWAYS: _ClassVar[KillCondition]
    KILL_IF_STDIO_SOCKET: _ClassVar[KillCondition]
    KILL_IF_PIPE_NETWORK: _ClassVar[KillCondition]
    KILL_IF_PTY_NETWORK: _ClassVar[KillCondition]

class ExecTrait(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAIT_NONE: _ClassVar[ExecTrait]
    TRAIT_IMAGE_NOLINK: _ClassVar[ExecTrait]
    TRAIT_VIA_LOADER: _ClassVar[ExecTrait]
    TRAIT_LD_PRELOAD: _ClassVar[ExecTrait]
    TRAIT_LD_AUDIT: _ClassVar[ExecTrait]
    TRAIT_PRELOAD_STAGING: _ClassVar[ExecTrait]
    TRAIT_ENV_UNSCANNED: _ClassVar[ExecTrait]
    TRAIT_HOOK_ENV_STAGING: _ClassVar[ExecTrait]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_HOST: _ClassVar[JobKind]
    JOB_KIND_SLURM: _ClassVar[JobKind]
    JOB_KIND_K8S: _ClassVar[JobKind]
    JOB_KIND_CONTAINER: _ClassVar[JobKind]
    JOB_KIND_SYSTEMD: _ClassVar[JobKind]
KIND_UNSPECIFIED: KernelEventKind
KIND_EXEC: KernelEventKind
KIND_FORK: KernelEventKind
KIND_EXIT: KernelEventKind
KIND_CONNECT: KernelEventKind
KIND_GPU_OPEN: KernelEventKind
KIND_ENFORCE: KernelEventKind
KIND_CGROUP: KernelEventKind
KIND_CONNECT_RESULT: KernelEventKind
KIND_FLOW: KernelEventKind
KIND_SOCKET: KernelEventKind
KIND_INBOUND: KernelEventKind
KIND_LISTEN: KernelEventKind
ACTION_UNSPECIFIED: EnforcementAction
ACTION_KILL_EXEC: EnforcementAction
ACTION_DENY_CONNECT: EnforcementAction
ACTION_DROP_STRATUM: EnforcementAction
ACTION_SEEN_STRATUM: EnforcementAction
ACTION_KILL: EnforcementAction
ACTION_KILL_TREE: EnforcementAction
ACTION_DROP_PAYLOAD: EnforcementAction
ACTION_SEEN_PAYLOAD: EnforcementAction
ACTION_DENY_PIPE_CONNECT: EnforcementAction
ACTION_SEEN_REVERSE_SHELL: EnforcementAction
ACTION_KILL_ESCAPE: EnforcementAction
ACTION_SEEN_ESCAPE: EnforcementAction
ACTION_KILL_BIND_SHELL: EnforcementAction
ACTION_SEEN_AGENT_SIGNAL: EnforcementAction
KILL_IF_ALWAYS: KillCondition
KILL_IF_STDIO_SOCKET: KillCondition
KILL_IF_PIPE_NETWORK: KillCondition
KILL_IF_PTY_NETWORK: KillCondition
TRAIT_NONE: ExecTrait
TRAIT_IMAGE_NOLINK: ExecTrait
TRAIT_VIA_LOADER: ExecTrait
TRAIT_LD_PRELOAD: ExecTrait
TRAIT_LD_AUDIT: ExecTrait
TRAIT_PRELOAD_STAGING: ExecTrait
TRAIT_ENV_UNSCANNED: ExecTrait
TRAIT_HOOK_ENV_STAGING: ExecTrait
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_HOST: JobKind
JOB_KIND_SLURM: JobKind
JOB_KIND_K8S: JobKind
JOB_KIND_CONTAINER: JobKind
JOB_KIND_SYSTEMD: JobKind

class Host(_message.Message):
    __slots__ = ("host_id", "hostname", "boot_id")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    hostname: str
    boot_id: str
    def __init__(self, host_id: _Optional[str] = ..., hostname: _Optional[str] = ..., boot_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("kind", "id", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ProcessRef(_message.Message):
    __slots__ = ("pid", "key", "comm", "exe", "argv")
    PID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    pid: int
    key: str
    comm: str
    exe: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pid: _Optional[int] = ..., key: _Optional[str] = ..., comm: _Optional[str] = ..., exe: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("key", "parent_key", "pid", "tid", "ppid", "comm", "exe", "argv", "uid", "gid", "cgroup_id", "cgroup", "exe_sha256", "ancestors")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    EXE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    key: str
    parent_key: str
    pid: int
    tid: int
    ppid: int
    comm: str
    exe: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    uid: int
    gid: int
    cgroup_id: int
    cgroup: str
    exe_sha256: str
    ancestors: _containers.RepeatedCompositeFieldContainer[ProcessRef]
    def __init__(self, key: _Optional[str] = ..., parent_key: _Optional[str] = ..., pid: _Optional[int] = ..., tid: _Optional[int] = ..., ppid: _Optional[int] = ..., comm: _Optional[str] = ..., exe: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., cgroup_id: _Optional[int] = ..., cgroup: _Optional[str] = ..., exe_sha256: _Optional[str] = ..., ancestors: _Optional[_Iterable[_Union[ProcessRef, _Mapping]]] = ...) -> None: ...

class Exec(_message.Message):
    __slots__ = ("filename", "argv", "argv_truncated", "result", "stdio", "ssh_forwards", "traits", "argv_bytes", "pty_peer", "config_lines")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ARGV_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STDIO_FIELD_NUMBER: _ClassVar[int]
    SSH_FORWARDS_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    ARGV_BYTES_FIELD_NUMBER: _ClassVar[int]
    PTY_PEER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_LINES_FIELD_NUMBER: _ClassVar[int]
    filename: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    argv_truncated: bool
    result: int
    stdio: _containers.RepeatedScalarFieldContainer[str]
    ssh_forwards: _containers.RepeatedScalarFieldContainer[str]
    traits: _containers.RepeatedScalarFieldContainer[str]
    argv_bytes: int
    pty_peer: str
    config_lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, filename: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., argv_truncated: _Optional[bool] = ..., result: _Optional[int] = ..., stdio: _Optional[_Iterable[str]] = ..., ssh_forwards: _Optional[_Iterable[str]] = ..., traits: _Optional[_Iterable[str]] = ..., argv_bytes: _Optional[int] = ..., pty_peer: _Optional[str] = ..., config_lines: _Optional[_Iterable[str]] = ...) -> None: ...

class Connect(_message.Message):
    __slots__ = ("family", "proto", "daddr", "dport", "result", "name", "name_scope", "repeats", "image_nolink")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    DADDR_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_SCOPE_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_NOLINK_FIELD_NUMBER: _ClassVar[int]
    family: str
    proto: str
    daddr: str
    dport: int
    result: int
    name: str
    name_scope: str
    repeats: int
    image_nolink: bool
    def __init__(self, family: _Optional[str] = ..., proto: _Optional[str] = ..., daddr: _Optional[str] = ..., dport: _Optional[int] = ..., result: _Optional[int] = ..., name: _Optional[str] = ..., name_scope: _Optional[str] = ..., repeats: _Optional[int] = ..., image_nolink: _Optional[bool] = ...) -> None: ...

class Tls(_message.Message):
    __slots__ = ("sni", "alpn", "version", "ja4", "daddr", "dport", "transport")
    SNI_FIELD_NUMBER: _ClassVar[int]
    ALPN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    JA4_FIELD_NUMBER: _ClassVar[int]
    DADDR_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    sni: str
    alpn: _containers.RepeatedScalarFieldContainer[str]
    version: str
    ja4: str
    daddr: str
    dport: int
    transport: str
    def __init__(self, sni: _Optional[str] = ..., alpn: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., ja4: _Optional[str] = ..., daddr: _Optional[str] = ..., dport: _Optional[int] = ..., transport: _Optional[str] = ...) -> None: ...

class Dns(_message.Message):
    __slots__ = ("name", "qtype", "server", "server_port", "transport")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QTYPE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    qtype: str
    server: str
    server_port: int
    transport: str
    def __init__(self, name: _Optional[str] = ..., qtype: _Optional[str] = ..., server: _Optional[str] = ..., server_port: _Optional[int] = ..., transport: _Optional[str] = ...) -> None: ...

class Datagram(_message.Message):
    __slots__ = ("shape", "daddr", "dport", "length", "excerpt")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DADDR_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    EXCERPT_FIELD_NUMBER: _ClassVar[int]
    shape: str
    daddr: str
    dport: int
    length: int
    excerpt: bytes
    def __init__(self, shape: _Optional[str] = ..., daddr: _Optional[str] = ..., dport: _Optional[int] = ..., length: _Optional[int] = ..., excerpt: _Optional[bytes] = ...) -> None: ...

class Socket(_message.Message):
    __slots__ = ("family", "type", "protocol", "what", "result")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    family: str
    type: str
    protocol: int
    what: str
    result: int
    def __init__(self, family: _Optional[str] = ..., type: _Optional[str] = ..., protocol: _Optional[int] = ..., what: _Optional[str] = ..., result: _Optional[int] = ...) -> None: ...

class Inbound(_message.Message):
    __slots__ = ("family", "peer", "peer_port", "local_port", "repeats", "proto")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    family: str
    peer: str
    peer_port: int
    local_port: int
    repeats: int
    proto: str
    def __init__(self, family: _Optional[str] = ..., peer: _Optional[str] = ..., peer_port: _Optional[int] = ..., local_port: _Optional[int] = ..., repeats: _Optional[int] = ..., proto: _Optional[str] = ...) -> None: ...

class Listen(_message.Message):
    __slots__ = ("family", "addr", "port")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    family: str
    addr: str
    port: int
    def __init__(self, family: _Optional[str] = ..., addr: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class GpuOpen(_message.Message):
    __slots__ = ("path", "flags", "result", "major", "minor", "image_nolink")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_NOLINK_FIELD_NUMBER: _ClassVar[int]
    path: str
    flags: int
    result: int
    major: int
    minor: int
    image_nolink: bool
    def __init__(self, path: _Optional[str] = ..., flags: _Optional[int] = ..., result: _Optional[int] = ..., major: _Optional[int] = ..., minor: _Optional[int] = ..., image_nolink: _Optional[bool] = ...) -> None: ...

class Exit(_message.Message):
    __slots__ = ("code", "signal")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    code: int
    signal: int
    def __init__(self, code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("events_per_sec", "events_total", "kernel_lost", "spool_depth", "spool_bytes", "dropped", "policy_version", "agent_started_ns", "heartbeat_s", "programs", "quarantined", "enforcing", "stopping", "enforcement_unavailable")
    class KernelLostEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EVENTS_PER_SEC_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LOST_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    ENFORCING_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    events_per_sec: float
    events_total: int
    kernel_lost: _containers.ScalarMap[str, int]
    spool_depth: int
    spool_bytes: int
    dropped: int
    policy_version: int
    agent_started_ns: int
    heartbeat_s: float
    programs: _containers.RepeatedScalarFieldContainer[str]
    quarantined: int
    enforcing: bool
    stopping: bool
    enforcement_unavailable: str
    def __init__(self, events_per_sec: _Optional[float] = ..., events_total: _Optional[int] = ..., kernel_lost: _Optional[_Mapping[str, int]] = ..., spool_depth: _Optional[int] = ..., spool_bytes: _Optional[int] = ..., dropped: _Optional[int] = ..., policy_version: _Optional[int] = ..., agent_started_ns: _Optional[int] = ..., heartbeat_s: _Optional[float] = ..., programs: _Optional[_Iterable[str]] = ..., quarantined: _Optional[int] = ..., enforcing: _Optional[bool] = ..., stopping: _Optional[bool] = ..., enforcement_unavailable: _Optional[str] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("from_seq", "to_seq", "reason")
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    to_seq: int
    reason: str
    def __init__(self, from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Enforcement(_message.Message):
    __slots__ = ("rule_id", "action", "detail", "payload", "daddr", "dport", "peer_pid", "repeats", "signal")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DADDR_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PEER_PID_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    action: str
    detail: str
    payload: bytes
    daddr: str
    dport: int
    peer_pid: int
    repeats: int
    signal: int
    def __init__(self, rule_id: _Optional[str] = ..., action: _Optional[str] = ..., detail: _Optional[str] = ..., payload: _Optional[bytes] = ..., daddr: _Optional[str] = ..., dport: _Optional[int] = ..., peer_pid: _Optional[int] = ..., repeats: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class CaptureLoss(_message.Message):
    __slots__ = ("suppressed", "lost", "from_ts_ns", "to_ts_ns", "cgroup_id", "cgroup")
    class SuppressedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LostEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    FROM_TS_NS_FIELD_NUMBER: _ClassVar[int]
    TO_TS_NS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    suppressed: _containers.ScalarMap[str, int]
    lost: _containers.ScalarMap[str, int]
    from_ts_ns: int
    to_ts_ns: int
    cgroup_id: int
    cgroup: str
    def __init__(self, suppressed: _Optional[_Mapping[str, int]] = ..., lost: _Optional[_Mapping[str, int]] = ..., from_ts_ns: _Optional[int] = ..., to_ts_ns: _Optional[int] = ..., cgroup_id: _Optional[int] = ..., cgroup: _Optional[str] = ...) -> None: ...

class GpuUsage(_message.Message):
    __slots__ = ("gpu", "uuid", "memory_bytes", "sm_util", "device_util", "power_mw")
    GPU_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SM_UTIL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UTIL_FIELD_NUMBER: _ClassVar[int]
    POWER_MW_FIELD_NUMBER: _ClassVar[int]
    gpu: int
    uuid: str
    memory_bytes: int
    sm_util: int
    device_util: int
    power_mw: int
    def __init__(self, gpu: _Optional[int] = ..., uuid: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., sm_util: _Optional[int] = ..., device_util: _Optional[int] = ..., power_mw: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "ts_ns", "boot_id", "process", "job", "clock_suspect", "exec", "connect", "gpu_open", "exit", "status", "gap", "enforcement", "tls", "dns", "datagram", "socket", "capture_loss", "gpu_usage", "inbound", "listen")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SUSPECT_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    GPU_OPEN_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    DATAGRAM_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_LOSS_FIELD_NUMBER: _ClassVar[int]
    GPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    INBOUND_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ts_ns: int
    boot_id: str
    process: Process
    job: Job
    clock_suspect: bool
    exec: Exec
    connect: Connect
    gpu_open: GpuOpen
    exit: Exit
    status: AgentStatus
    gap: Gap
    enforcement: Enforcement
    tls: Tls
    dns: Dns
    datagram: Datagram
    socket: Socket
    capture_loss: CaptureLoss
    gpu_usage: GpuUsage
    inbound: Inbound
    listen: Listen
    def __init__(self, seq: _Optional[int] = ..., ts_ns: _Optional[int] = ..., boot_id: _Optional[str] = ..., process: _Optional[_Union[Process, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., clock_suspect: _Optional[bool] = ..., exec: _Optional[_Union[Exec, _Mapping]] = ..., connect: _Optional[_Union[Connect, _Mapping]] = ..., gpu_open: _Optional[_Union[GpuOpen, _Mapping]] = ..., exit: _Optional[_Union[Exit, _Mapping]] = ..., status: _Optional[_Union[AgentStatus, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ..., enforcement: _Optional[_Union[Enforcement, _Mapping]] = ..., tls: _Optional[_Union[Tls, _Mapping]] = ..., dns: _Optional[_Union[Dns, _Mapping]] = ..., datagram: _Optional[_Union[Datagram, _Mapping]] = ..., socket: _Optional[_Union[Socket, _Mapping]] = ..., capture_loss: _Optional[_Union[CaptureLoss, _Mapping]] = ..., gpu_usage: _Optional[_Union[GpuUsage, _Mapping]] = ..., inbound: _Optional[_Union[Inbound, _Mapping]] = ..., listen: _Optional[_Union[Listen, _Mapping]] = ...) -> None: ...
