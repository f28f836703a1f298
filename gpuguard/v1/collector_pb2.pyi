from gpuguard.v1 import events_pb2 as _events_pb2
from gpuguard.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("host", "agent_version", "first_unacked_seq", "policy_version", "agent_started_ns", "heartbeat_s")
    HOST_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRST_UNACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    host: _events_pb2.Host
    agent_version: str
    first_unacked_seq: int
    policy_version: int
    agent_started_ns: int
    heartbeat_s: float
    def __init__(self, host: _Optional[_Union[_events_pb2.Host, _Mapping]] = ..., agent_version: _Optional[str] = ..., first_unacked_seq: _Optional[int] = ..., policy_version: _Optional[int] = ..., agent_started_ns: _Optional[int] = ..., heartbeat_s: _Optional[float] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ...) -> None: ...

class RawBatch(_message.Message):
    __slots__ = ("frames", "seqs", "ends", "kinds", "jobs", "job_ids")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    frames: bytes
    seqs: _containers.RepeatedScalarFieldContainer[int]
    ends: _containers.RepeatedScalarFieldContainer[int]
    kinds: _containers.RepeatedScalarFieldContainer[int]
    jobs: _containers.RepeatedScalarFieldContainer[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, frames: _Optional[bytes] = ..., seqs: _Optional[_Iterable[int]] = ..., ends: _Optional[_Iterable[int]] = ..., kinds: _Optional[_Iterable[int]] = ..., jobs: _Optional[_Iterable[int]] = ..., job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("host_id", "hostname", "boot_id", "events", "received_ns", "unchecked", "seqs")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_NS_FIELD_NUMBER: _ClassVar[int]
    UNCHECKED_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    hostname: str
    boot_id: str
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    received_ns: int
    unchecked: bool
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host_id: _Optional[str] = ..., hostname: _Optional[str] = ..., boot_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., received_ns: _Optional[int] = ..., unchecked: _Optional[bool] = ..., seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class PolicyAck(_message.Message):
    __slots__ = ("version", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: int
    error: str
    def __init__(self, version: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class KillAck(_message.Message):
    __slots__ = ("order_id", "executed", "detail")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    executed: bool
    detail: str
    def __init__(self, order_id: _Optional[str] = ..., executed: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "batch", "policy_ack", "kill_ack", "raw")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    POLICY_ACK_FIELD_NUMBER: _ClassVar[int]
    KILL_ACK_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: EventBatch
    policy_ack: PolicyAck
    kill_ack: KillAck
    raw: RawBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[EventBatch, _Mapping]] = ..., policy_ack: _Optional[_Union[PolicyAck, _Mapping]] = ..., kill_ack: _Optional[_Union[KillAck, _Mapping]] = ..., raw: _Optional[_Union[RawBatch, _Mapping]] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("stored_through_seq", "collector_version", "raw_batches")
    STORED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    RAW_BATCHES_FIELD_NUMBER: _ClassVar[int]
    stored_through_seq: int
    collector_version: str
    raw_batches: bool
    def __init__(self, stored_through_seq: _Optional[int] = ..., collector_version: _Optional[str] = ..., raw_batches: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message", "retry_after_ms", "seq")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retry_after_ms: int
    seq: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class KillProcess(_message.Message):
    __slots__ = ("pid", "process_key", "rule_id", "tree", "order_id")
    PID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    process_key: str
    rule_id: str
    tree: bool
    order_id: str
    def __init__(self, pid: _Optional[int] = ..., process_key: _Optional[str] = ..., rule_id: _Optional[str] = ..., tree: _Optional[bool] = ..., order_id: _Optional[str] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("hello", "ack", "error", "policy", "kill")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    hello: HelloReply
    ack: Ack
    error: StreamError
    policy: _policy_pb2.Policy
    kill: KillProcess
    def __init__(self, hello: _Optional[_Union[HelloReply, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ..., policy: _Optional[_Union[_policy_pb2.Policy, _Mapping]] = ..., kill: _Optional[_Union[KillProcess, _Mapping]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: _events_pb2.Host
    def __init__(self, host: _Optional[_Union[_events_pb2.Host, _Mapping]] = ...) -> None: ...

class EnrollReply(_message.Message):
    __slots__ = ("name", "token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    token: str
    def __init__(self, name: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ("job", "hosts", "first_ts_ns", "last_ts_ns", "events", "alerts")
    JOB_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TS_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_TS_NS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    job: _events_pb2.Job
    hosts: _containers.RepeatedScalarFieldContainer[str]
    first_ts_ns: int
    last_ts_ns: int
    events: int
    alerts: int
    def __init__(self, job: _Optional[_Union[_events_pb2.Job, _Mapping]] = ..., hosts: _Optional[_Iterable[str]] = ..., first_ts_ns: _Optional[int] = ..., last_ts_ns: _Optional[int] = ..., events: _Optional[int] = ..., alerts: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("since_ns", "limit")
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since_ns: int
    limit: int
    def __init__(self, since_ns: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ...) -> None: ...

class TimelineRequest(_message.Message):
    __slots__ = ("job_id", "host", "since_ns", "until_ns", "kinds", "subtree_key", "limit", "cursor", "max_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    SUBTREE_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    host: str
    since_ns: int
    until_ns: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    subtree_key: str
    limit: int
    cursor: str
    max_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., host: _Optional[str] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., kinds: _Optional[_Iterable[str]] = ..., subtree_key: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class StoredEvent(_message.Message):
    __slots__ = ("host_id", "event")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    event: _events_pb2.Event
    def __init__(self, host_id: _Optional[str] = ..., event: _Optional[_Union[_events_pb2.Event, _Mapping]] = ...) -> None: ...

class FirstGpuUse(_message.Message):
    __slots__ = ("process_key", "host_id", "ts_ns", "path")
    PROCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    process_key: str
    host_id: str
    ts_ns: int
    path: str
    def __init__(self, process_key: _Optional[str] = ..., host_id: _Optional[str] = ..., ts_ns: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("daddr", "dport", "proto", "count", "last_result", "names")
    DADDR_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    daddr: str
    dport: int
    proto: str
    count: int
    last_result: int
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, daddr: _Optional[str] = ..., dport: _Optional[int] = ..., proto: _Optional[str] = ..., count: _Optional[int] = ..., last_result: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class TimelineReply(_message.Message):
    __slots__ = ("events", "first_gpu_use", "destinations", "alerts", "truncated", "next_cursor")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_GPU_USE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    first_gpu_use: _containers.RepeatedCompositeFieldContainer[FirstGpuUse]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    alerts: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Alert]
    truncated: bool
    next_cursor: str
    def __init__(self, events: _Optional[_Iterable[_Union[StoredEvent, _Mapping]]] = ..., first_gpu_use: _Optional[_Iterable[_Union[FirstGpuUse, _Mapping]]] = ..., destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[_policy_pb2.Alert, _Mapping]]] = ..., truncated: _Optional[bool] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class TreeNode(_message.Message):
    __slots__ = ("key", "parent_key", "host_id", "pid", "comm", "exe", "argv", "first_ts_ns", "used_gpu")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    FIRST_TS_NS_FIELD_NUMBER: _ClassVar[int]
    USED_GPU_FIELD_NUMBER: _ClassVar[int]
    key: str
    parent_key: str
    host_id: str
    pid: int
    comm: str
    exe: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    first_ts_ns: int
    used_gpu: bool
    def __init__(self, key: _Optional[str] = ..., parent_key: _Optional[str] = ..., host_id: _Optional[str] = ..., pid: _Optional[int] = ..., comm: _Optional[str] = ..., exe: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., first_ts_ns: _Optional[int] = ..., used_gpu: _Optional[bool] = ...) -> None: ...

class TreeRequest(_message.Message):
    __slots__ = ("job_id", "host")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    host: str
    def __init__(self, job_id: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class TreeReply(_message.Message):
    __slots__ = ("nodes", "truncated")
    NODES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[TreeNode]
    truncated: bool
    def __init__(self, nodes: _Optional[_Iterable[_Union[TreeNode, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class AlertsRequest(_message.Message):
    __slots__ = ("job_id", "since_ns", "limit", "rule_id", "host", "until_ns", "cursor", "max_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    since_ns: int
    limit: int
    rule_id: str
    host: str
    until_ns: int
    cursor: str
    max_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., since_ns: _Optional[int] = ..., limit: _Optional[int] = ..., rule_id: _Optional[str] = ..., host: _Optional[str] = ..., until_ns: _Optional[int] = ..., cursor: _Optional[str] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class ConnectionsRequest(_message.Message):
    __slots__ = ("cidr", "since_ns", "until_ns", "limit", "cursor", "max_bytes")
    CIDR_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    cidr: str
    since_ns: int
    until_ns: int
    limit: int
    cursor: str
    max_bytes: int
    def __init__(self, cidr: _Optional[str] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class ExecutionsRequest(_message.Message):
    __slots__ = ("sha256", "exe", "name", "since_ns", "until_ns", "limit", "cursor", "max_bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    exe: str
    name: str
    since_ns: int
    until_ns: int
    limit: int
    cursor: str
    max_bytes: int
    def __init__(self, sha256: _Optional[str] = ..., exe: _Optional[str] = ..., name: _Optional[str] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class FleetReply(_message.Message):
    __slots__ = ("events", "truncated", "next_cursor")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    truncated: bool
    next_cursor: str
    def __init__(self, events: _Optional[_Iterable[_Union[StoredEvent, _Mapping]]] = ..., truncated: _Optional[bool] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class GpuProcessesRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GpuProcess(_message.Message):
    __slots__ = ("process", "events_by_kind", "destinations")
    class EventsByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    process: TreeNode
    events_by_kind: _containers.ScalarMap[str, int]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    def __init__(self, process: _Optional[_Union[TreeNode, _Mapping]] = ..., events_by_kind: _Optional[_Mapping[str, int]] = ..., destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ...) -> None: ...

class GpuProcessesReply(_message.Message):
    __slots__ = ("processes",)
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[GpuProcess]
    def __init__(self, processes: _Optional[_Iterable[_Union[GpuProcess, _Mapping]]] = ...) -> None: ...

class AlertsReply(_message.Message):
    __slots__ = ("alerts", "truncated", "next_cursor")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Alert]
    truncated: bool
    next_cursor: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[_policy_pb2.Alert, _Mapping]]] = ..., truncated: _Optional[bool] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentPolicyState(_message.Message):
    __slots__ = ("host_id", "version", "connected", "error", "last_seen_ns")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    version: int
    connected: bool
    error: str
    last_seen_ns: int
    def __init__(self, host_id: _Optional[str] = ..., version: _Optional[int] = ..., connected: _Optional[bool] = ..., error: _Optional[str] = ..., last_seen_ns: _Optional[int] = ...) -> None: ...

class PolicyReply(_message.Message):
    __slots__ = ("policy", "agents")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    policy: _policy_pb2.Policy
    agents: _containers.RepeatedCompositeFieldContainer[AgentPolicyState]
    def __init__(self, policy: _Optional[_Union[_policy_pb2.Policy, _Mapping]] = ..., agents: _Optional[_Iterable[_Union[AgentPolicyState, _Mapping]]] = ...) -> None: ...

class ApplyPolicyRequest(_message.Message):
    __slots__ = ("rules_yaml", "source")
    RULES_YAML_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    rules_yaml: str
    source: str
    def __init__(self, rules_yaml: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ApplyPolicyReply(_message.Message):
    __slots__ = ("policy", "error")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    policy: _policy_pb2.Policy
    error: str
    def __init__(self, policy: _Optional[_Union[_policy_pb2.Policy, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class HostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ("job_id", "host", "kinds", "alerts", "events")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    host: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    alerts: bool
    events: bool
    def __init__(self, job_id: _Optional[str] = ..., host: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ..., alerts: _Optional[bool] = ..., events: _Optional[bool] = ...) -> None: ...

class FollowItem(_message.Message):
    __slots__ = ("alert", "event", "dropped")
    ALERT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    alert: _policy_pb2.Alert
    event: StoredEvent
    dropped: int
    def __init__(self, alert: _Optional[_Union[_policy_pb2.Alert, _Mapping]] = ..., event: _Optional[_Union[StoredEvent, _Mapping]] = ..., dropped: _Optional[int] = ...) -> None: ...

class ForgetHostRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class ForgetHostReply(_message.Message):
    __slots__ = ("forgotten", "error")
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    forgotten: bool
    error: str
    def __init__(self, forgotten: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class HostState(_message.Message):
    __slots__ = ("host_id", "hostname", "state", "connected", "last_seen_ns", "policy_version", "policy_current", "drift", "agent_started_ns", "kernel_lost", "programs", "incomplete_jobs")
    class KernelLostEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_CURRENT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LOST_FIELD_NUMBER: _ClassVar[int]
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_JOBS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    hostname: str
    state: str
    connected: bool
    last_seen_ns: int
    policy_version: int
    policy_current: int
    drift: str
    agent_started_ns: int
    kernel_lost: _containers.ScalarMap[str, int]
    programs: _containers.RepeatedScalarFieldContainer[str]
    incomplete_jobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host_id: _Optional[str] = ..., hostname: _Optional[str] = ..., state: _Optional[str] = ..., connected: _Optional[bool] = ..., last_seen_ns: _Optional[int] = ..., policy_version: _Optional[int] = ..., policy_current: _Optional[int] = ..., drift: _Optional[str] = ..., agent_started_ns: _Optional[int] = ..., kernel_lost: _Optional[_Mapping[str, int]] = ..., programs: _Optional[_Iterable[str]] = ..., incomplete_jobs: _Optional[_Iterable[str]] = ...) -> None: ...

class HostsReply(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[HostState]
    def __init__(self, hosts: _Optional[_Iterable[_Union[HostState, _Mapping]]] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("since_ns", "limit")
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since_ns: int
    limit: int
    def __init__(self, since_ns: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("ts_ns", "who", "role", "peer", "action", "detail", "ok")
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ts_ns: int
    who: str
    role: str
    peer: str
    action: str
    detail: str
    ok: bool
    def __init__(self, ts_ns: _Optional[int] = ..., who: _Optional[str] = ..., role: _Optional[str] = ..., peer: _Optional[str] = ..., action: _Optional[str] = ..., detail: _Optional[str] = ..., ok: _Optional[bool] = ...) -> None: ...

class AuditReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
