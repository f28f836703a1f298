from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class Host(_message.Message):
    __slots__ = ("host_id", "hostname", "boot_id")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    hostname: str
    boot_id: str
    def __init__(self, host_id: str | None = ..., hostname: str | None = ..., boot_id: str | None = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("kind", "id", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    name: str
    def __init__(self, kind: str | None = ..., id: str | None = ..., name: str | None = ...) -> None: ...

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
    def __init__(self, pid: int | None = ..., key: str | None = ..., comm: str | None = ..., exe: str | None = ..., argv: _Iterable[str] | None = ...) -> None: ...

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
    def __init__(self, key: str | None = ..., parent_key: str | None = ..., pid: int | None = ..., tid: int | None = ..., ppid: int | None = ..., comm: str | None = ..., exe: str | None = ..., argv: _Iterable[str] | None = ..., uid: int | None = ..., gid: int | None = ..., cgroup_id: int | None = ..., cgroup: str | None = ..., exe_sha256: str | None = ..., ancestors: _Iterable[ProcessRef | _Mapping] | None = ...) -> None: ...

class Exec(_message.Message):
    __slots__ = ("filename", "argv", "argv_truncated", "result")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ARGV_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    filename: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    argv_truncated: bool
    result: int
    def __init__(self, filename: str | None = ..., argv: _Iterable[str] | None = ..., argv_truncated: bool | None = ..., result: int | None = ...) -> None: ...

class Connect(_message.Message):
    __slots__ = ("family", "proto", "daddr", "dport", "result")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    DADDR_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    family: str
    proto: str
    daddr: str
    dport: int
    result: int
    def __init__(self, family: str | None = ..., proto: str | None = ..., daddr: str | None = ..., dport: int | None = ..., result: int | None = ...) -> None: ...

class GpuOpen(_message.Message):
    __slots__ = ("path", "flags", "result")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    path: str
    flags: int
    result: int
    def __init__(self, path: str | None = ..., flags: int | None = ..., result: int | None = ...) -> None: ...

class Exit(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: int
    def __init__(self, code: int | None = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("events_per_sec", "events_total", "kernel_lost", "spool_depth", "spool_bytes", "dropped", "policy_version")
    class KernelLostEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: str | None = ..., value: int | None = ...) -> None: ...
    EVENTS_PER_SEC_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LOST_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    events_per_sec: float
    events_total: int
    kernel_lost: _containers.ScalarMap[str, int]
    spool_depth: int
    spool_bytes: int
    dropped: int
    policy_version: int
    def __init__(self, events_per_sec: float | None = ..., events_total: int | None = ..., kernel_lost: _Mapping[str, int] | None = ..., spool_depth: int | None = ..., spool_bytes: int | None = ..., dropped: int | None = ..., policy_version: int | None = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("from_seq", "to_seq", "reason")
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    to_seq: int
    reason: str
    def __init__(self, from_seq: int | None = ..., to_seq: int | None = ..., reason: str | None = ...) -> None: ...

class Enforcement(_message.Message):
    __slots__ = ("rule_id", "action", "detail")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    action: str
    detail: str
    def __init__(self, rule_id: str | None = ..., action: str | None = ..., detail: str | None = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "ts_ns", "boot_id", "process", "job", "exec", "connect", "gpu_open", "exit", "status", "gap", "enforcement")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    GPU_OPEN_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ts_ns: int
    boot_id: str
    process: Process
    job: Job
    exec: Exec
    connect: Connect
    gpu_open: GpuOpen
    exit: Exit
    status: AgentStatus
    gap: Gap
    enforcement: Enforcement
    def __init__(self, seq: int | None = ..., ts_ns: int | None = ..., boot_id: str | None = ..., process: Process | _Mapping | None = ..., job: Job | _Mapping | None = ..., exec: Exec | _Mapping | None = ..., connect: Connect | _Mapping | None = ..., gpu_open: GpuOpen | _Mapping | None = ..., exit: Exit | _Mapping | None = ..., status: AgentStatus | _Mapping | None = ..., gap: Gap | _Mapping | None = ..., enforcement: Enforcement | _Mapping | None = ...) -> None: ...
