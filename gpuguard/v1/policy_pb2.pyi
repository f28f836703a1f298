from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

from gpuguard.v1 import events_pb2 as _events_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(_message.Message):
    __slots__ = ("host_wide", "job_ids")
    HOST_WIDE_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    host_wide: bool
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host_wide: bool | None = ..., job_ids: _Iterable[str] | None = ...) -> None: ...

class DenyDestination(_message.Message):
    __slots__ = ("rule_id", "cidr", "port", "scope")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    CIDR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    cidr: str
    port: int
    scope: Scope
    def __init__(self, rule_id: str | None = ..., cidr: str | None = ..., port: int | None = ..., scope: Scope | _Mapping | None = ...) -> None: ...

class KillBinary(_message.Message):
    __slots__ = ("rule_id", "comm", "sha256", "scope")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    comm: str
    sha256: str
    scope: Scope
    def __init__(self, rule_id: str | None = ..., comm: str | None = ..., sha256: str | None = ..., scope: Scope | _Mapping | None = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("version", "deny", "kill", "drop_stratum", "rules")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    DROP_STRATUM_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    version: int
    deny: _containers.RepeatedCompositeFieldContainer[DenyDestination]
    kill: _containers.RepeatedCompositeFieldContainer[KillBinary]
    drop_stratum: Scope
    rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: int | None = ..., deny: _Iterable[DenyDestination | _Mapping] | None = ..., kill: _Iterable[KillBinary | _Mapping] | None = ..., drop_stratum: Scope | _Mapping | None = ..., rules: _Iterable[str] | None = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "rule_id", "description", "severity", "action", "outcome", "host_id", "job", "process", "evidence_seqs", "ts_ns", "matched")
    class MatchedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SEQS_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    rule_id: str
    description: str
    severity: str
    action: str
    outcome: str
    host_id: str
    job: _events_pb2.Job
    process: _events_pb2.Process
    evidence_seqs: _containers.RepeatedScalarFieldContainer[int]
    ts_ns: int
    matched: _containers.ScalarMap[str, str]
    def __init__(self, id: str | None = ..., rule_id: str | None = ..., description: str | None = ..., severity: str | None = ..., action: str | None = ..., outcome: str | None = ..., host_id: str | None = ..., job: _events_pb2.Job | _Mapping | None = ..., process: _events_pb2.Process | _Mapping | None = ..., evidence_seqs: _Iterable[int] | None = ..., ts_ns: int | None = ..., matched: _Mapping[str, str] | None = ...) -> None: ...
