from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

from gpuguard.v1 import events_pb2 as _events_pb2
from gpuguard.v1 import policy_pb2 as _policy_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("host", "agent_version", "first_unacked_seq", "policy_version", "token")
    HOST_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRST_UNACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    host: _events_pb2.Host
    agent_version: str
    first_unacked_seq: int
    policy_version: int
    token: str
    def __init__(self, host: _events_pb2.Host | _Mapping | None = ..., agent_version: str | None = ..., first_unacked_seq: int | None = ..., policy_version: int | None = ..., token: str | None = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, events: _Iterable[_events_pb2.Event | _Mapping] | None = ...) -> None: ...

class PolicyAck(_message.Message):
    __slots__ = ("version", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: int
    error: str
    def __init__(self, version: int | None = ..., error: str | None = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "batch", "policy_ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    POLICY_ACK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: EventBatch
    policy_ack: PolicyAck
    def __init__(self, hello: Hello | _Mapping | None = ..., batch: EventBatch | _Mapping | None = ..., policy_ack: PolicyAck | _Mapping | None = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("stored_through_seq", "collector_version")
    STORED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    stored_through_seq: int
    collector_version: str
    def __init__(self, stored_through_seq: int | None = ..., collector_version: str | None = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: int | None = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: str | None = ..., message: str | None = ...) -> None: ...

class KillProcess(_message.Message):
    __slots__ = ("pid", "process_key", "rule_id", "tree")
    PID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    process_key: str
    rule_id: str
    tree: bool
    def __init__(self, pid: int | None = ..., process_key: str | None = ..., rule_id: str | None = ..., tree: bool | None = ...) -> None: ...

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
    def __init__(self, hello: HelloReply | _Mapping | None = ..., ack: Ack | _Mapping | None = ..., error: StreamError | _Mapping | None = ..., policy: _policy_pb2.Policy | _Mapping | None = ..., kill: KillProcess | _Mapping | None = ...) -> None: ...

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
    def __init__(self, job: _events_pb2.Job | _Mapping | None = ..., hosts: _Iterable[str] | None = ..., first_ts_ns: int | None = ..., last_ts_ns: int | None = ..., events: int | None = ..., alerts: int | None = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("since_ns", "limit")
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since_ns: int
    limit: int
    def __init__(self, since_ns: int | None = ..., limit: int | None = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    def __init__(self, jobs: _Iterable[JobSummary | _Mapping] | None = ...) -> None: ...

class TimelineRequest(_message.Message):
    __slots__ = ("job_id", "host", "since_ns", "until_ns", "kinds", "subtree_key", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    SUBTREE_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    host: str
    since_ns: int
    until_ns: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    subtree_key: str
    limit: int
    def __init__(self, job_id: str | None = ..., host: str | None = ..., since_ns: int | None = ..., until_ns: int | None = ..., kinds: _Iterable[str] | None = ..., subtree_key: str | None = ..., limit: int | None = ...) -> None: ...

class StoredEvent(_message.Message):
    __slots__ = ("host_id", "event")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    event: _events_pb2.Event
    def __init__(self, host_id: str | None = ..., event: _events_pb2.Event | _Mapping | None = ...) -> None: ...

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
    def __init__(self, process_key: str | None = ..., host_id: str | None = ..., ts_ns: int | None = ..., path: str | None = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("daddr", "dport", "proto", "count", "last_result")
    DADDR_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_FIELD_NUMBER: _ClassVar[int]
    daddr: str
    dport: int
    proto: str
    count: int
    last_result: int
    def __init__(self, daddr: str | None = ..., dport: int | None = ..., proto: str | None = ..., count: int | None = ..., last_result: int | None = ...) -> None: ...

class TimelineReply(_message.Message):
    __slots__ = ("events", "first_gpu_use", "destinations", "alerts", "truncated")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_GPU_USE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    first_gpu_use: _containers.RepeatedCompositeFieldContainer[FirstGpuUse]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    alerts: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Alert]
    truncated: bool
    def __init__(self, events: _Iterable[StoredEvent | _Mapping] | None = ..., first_gpu_use: _Iterable[FirstGpuUse | _Mapping] | None = ..., destinations: _Iterable[Destination | _Mapping] | None = ..., alerts: _Iterable[_policy_pb2.Alert | _Mapping] | None = ..., truncated: bool | None = ...) -> None: ...

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
    def __init__(self, key: str | None = ..., parent_key: str | None = ..., host_id: str | None = ..., pid: int | None = ..., comm: str | None = ..., exe: str | None = ..., argv: _Iterable[str] | None = ..., first_ts_ns: int | None = ..., used_gpu: bool | None = ...) -> None: ...

class TreeRequest(_message.Message):
    __slots__ = ("job_id", "host")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    host: str
    def __init__(self, job_id: str | None = ..., host: str | None = ...) -> None: ...

class TreeReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[TreeNode]
    def __init__(self, nodes: _Iterable[TreeNode | _Mapping] | None = ...) -> None: ...

class AlertsRequest(_message.Message):
    __slots__ = ("job_id", "since_ns", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    since_ns: int
    limit: int
    def __init__(self, job_id: str | None = ..., since_ns: int | None = ..., limit: int | None = ...) -> None: ...

class AlertsReply(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Alert]
    def __init__(self, alerts: _Iterable[_policy_pb2.Alert | _Mapping] | None = ...) -> None: ...

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
    def __init__(self, host_id: str | None = ..., version: int | None = ..., connected: bool | None = ..., error: str | None = ..., last_seen_ns: int | None = ...) -> None: ...

class PolicyReply(_message.Message):
    __slots__ = ("policy", "agents")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    policy: _policy_pb2.Policy
    agents: _containers.RepeatedCompositeFieldContainer[AgentPolicyState]
    def __init__(self, policy: _policy_pb2.Policy | _Mapping | None = ..., agents: _Iterable[AgentPolicyState | _Mapping] | None = ...) -> None: ...

class ApplyPolicyRequest(_message.Message):
    __slots__ = ("rules_yaml",)
    RULES_YAML_FIELD_NUMBER: _ClassVar[int]
    rules_yaml: str
    def __init__(self, rules_yaml: str | None = ...) -> None: ...

class ApplyPolicyReply(_message.Message):
    __slots__ = ("policy", "error")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    policy: _policy_pb2.Policy
    error: str
    def __init__(self, policy: _policy_pb2.Policy | _Mapping | None = ..., error: str | None = ...) -> None: ...
