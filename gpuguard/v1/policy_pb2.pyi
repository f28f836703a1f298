from gpuguard.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlertState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_STATE_UNSPECIFIED: _ClassVar[AlertState]
    ALERT_MONITORED: _ClassVar[AlertState]
    ALERT_ALERTED: _ClassVar[AlertState]
    ALERT_BLOCK_EXPECTED: _ClassVar[AlertState]
    ALERT_KILL_ORDERED: _ClassVar[AlertState]
    ALERT_ALREADY_KILLED: _ClassVar[AlertState]
    ALERT_CONFIRMED: _ClassVar[AlertState]
ALERT_STATE_UNSPECIFIED: AlertState
ALERT_MONITORED: AlertState
ALERT_ALERTED: AlertState
ALERT_BLOCK_EXPECTED: AlertState
ALERT_KILL_ORDERED: AlertState
ALERT_ALREADY_KILLED: AlertState
ALERT_CONFIRMED: AlertState

class Scope(_message.Message):
    __slots__ = ("host_wide", "job_ids", "job_kinds", "exclude_job_ids")
    HOST_WIDE_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    JOB_KINDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    host_wide: bool
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    job_kinds: _containers.RepeatedScalarFieldContainer[str]
    exclude_job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host_wide: _Optional[bool] = ..., job_ids: _Optional[_Iterable[str]] = ..., job_kinds: _Optional[_Iterable[str]] = ..., exclude_job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

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
    def __init__(self, rule_id: _Optional[str] = ..., cidr: _Optional[str] = ..., port: _Optional[int] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ...) -> None: ...

class KillBinary(_message.Message):
    __slots__ = ("rule_id", "comm", "sha256", "scope", "options", "stdio_socket", "stdio_pipe_network", "stdio_pty_network")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STDIO_SOCKET_FIELD_NUMBER: _ClassVar[int]
    STDIO_PIPE_NETWORK_FIELD_NUMBER: _ClassVar[int]
    STDIO_PTY_NETWORK_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    comm: str
    sha256: str
    scope: Scope
    options: str
    stdio_socket: bool
    stdio_pipe_network: bool
    stdio_pty_network: bool
    def __init__(self, rule_id: _Optional[str] = ..., comm: _Optional[str] = ..., sha256: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., options: _Optional[str] = ..., stdio_socket: _Optional[bool] = ..., stdio_pipe_network: _Optional[bool] = ..., stdio_pty_network: _Optional[bool] = ...) -> None: ...

class EgressAllowlist(_message.Message):
    __slots__ = ("rule_id", "cidrs", "ports", "scope", "names", "resolvers")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    RESOLVERS_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedScalarFieldContainer[int]
    scope: Scope
    names: _containers.RepeatedScalarFieldContainer[str]
    resolvers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rule_id: _Optional[str] = ..., cidrs: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[int]] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., names: _Optional[_Iterable[str]] = ..., resolvers: _Optional[_Iterable[str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("version", "deny", "kill", "rules", "allow", "no_connect", "payload", "kill_traits", "deny_sockets", "argv_kill", "escape")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    NO_CONNECT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KILL_TRAITS_FIELD_NUMBER: _ClassVar[int]
    DENY_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    ARGV_KILL_FIELD_NUMBER: _ClassVar[int]
    ESCAPE_FIELD_NUMBER: _ClassVar[int]
    version: int
    deny: _containers.RepeatedCompositeFieldContainer[DenyDestination]
    kill: _containers.RepeatedCompositeFieldContainer[KillBinary]
    rules: _containers.RepeatedScalarFieldContainer[str]
    allow: _containers.RepeatedCompositeFieldContainer[EgressAllowlist]
    no_connect: _containers.RepeatedCompositeFieldContainer[NoConnect]
    payload: _containers.RepeatedCompositeFieldContainer[PayloadWatch]
    kill_traits: _containers.RepeatedCompositeFieldContainer[KillTrait]
    deny_sockets: _containers.RepeatedCompositeFieldContainer[SocketDeny]
    argv_kill: _containers.RepeatedCompositeFieldContainer[ArgvKill]
    escape: _containers.RepeatedCompositeFieldContainer[EscapeWatch]
    def __init__(self, version: _Optional[int] = ..., deny: _Optional[_Iterable[_Union[DenyDestination, _Mapping]]] = ..., kill: _Optional[_Iterable[_Union[KillBinary, _Mapping]]] = ..., rules: _Optional[_Iterable[str]] = ..., allow: _Optional[_Iterable[_Union[EgressAllowlist, _Mapping]]] = ..., no_connect: _Optional[_Iterable[_Union[NoConnect, _Mapping]]] = ..., payload: _Optional[_Iterable[_Union[PayloadWatch, _Mapping]]] = ..., kill_traits: _Optional[_Iterable[_Union[KillTrait, _Mapping]]] = ..., deny_sockets: _Optional[_Iterable[_Union[SocketDeny, _Mapping]]] = ..., argv_kill: _Optional[_Iterable[_Union[ArgvKill, _Mapping]]] = ..., escape: _Optional[_Iterable[_Union[EscapeWatch, _Mapping]]] = ...) -> None: ...

class EscapeWatch(_message.Message):
    __slots__ = ("rule_id", "scope", "kill")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    scope: Scope
    kill: bool
    def __init__(self, rule_id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., kill: _Optional[bool] = ...) -> None: ...

class ArgvKill(_message.Message):
    __slots__ = ("rule_id", "scope", "comms", "options", "all", "uninspectable", "any")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    COMMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    UNINSPECTABLE_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    scope: Scope
    comms: _containers.RepeatedScalarFieldContainer[str]
    options: str
    all: _containers.RepeatedScalarFieldContainer[str]
    uninspectable: bool
    any: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rule_id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., comms: _Optional[_Iterable[str]] = ..., options: _Optional[str] = ..., all: _Optional[_Iterable[str]] = ..., uninspectable: _Optional[bool] = ..., any: _Optional[_Iterable[str]] = ...) -> None: ...

class SocketDeny(_message.Message):
    __slots__ = ("rule_id", "scope", "kinds")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    scope: Scope
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rule_id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class KillTrait(_message.Message):
    __slots__ = ("rule_id", "scope", "traits", "exempt")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    EXEMPT_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    scope: Scope
    traits: int
    exempt: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rule_id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., traits: _Optional[int] = ..., exempt: _Optional[_Iterable[str]] = ...) -> None: ...

class PayloadWatch(_message.Message):
    __slots__ = ("rule_id", "scope", "drop", "stratum", "pattern", "mask", "offset_min", "offset_max", "min_len", "exempt")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    STRATUM_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MIN_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_LEN_FIELD_NUMBER: _ClassVar[int]
    EXEMPT_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    scope: Scope
    drop: bool
    stratum: bool
    pattern: bytes
    mask: bytes
    offset_min: int
    offset_max: int
    min_len: int
    exempt: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rule_id: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., drop: _Optional[bool] = ..., stratum: _Optional[bool] = ..., pattern: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., offset_min: _Optional[int] = ..., offset_max: _Optional[int] = ..., min_len: _Optional[int] = ..., exempt: _Optional[_Iterable[str]] = ...) -> None: ...

class NoConnect(_message.Message):
    __slots__ = ("rule_id", "comm", "scope")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    comm: str
    scope: Scope
    def __init__(self, rule_id: _Optional[str] = ..., comm: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "rule_id", "description", "severity", "action", "outcome", "host_id", "job", "process", "evidence_seqs", "ts_ns", "matched", "state")
    class MatchedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
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
    STATE_FIELD_NUMBER: _ClassVar[int]
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
    state: AlertState
    def __init__(self, id: _Optional[str] = ..., rule_id: _Optional[str] = ..., description: _Optional[str] = ..., severity: _Optional[str] = ..., action: _Optional[str] = ..., outcome: _Optional[str] = ..., host_id: _Optional[str] = ..., job: _Optional[_Union[_events_pb2.Job, _Mapping]] = ..., process: _Optional[_Union[_events_pb2.Process, _Mapping]] = ..., evidence_seqs: _Optional[_Iterable[int]] = ..., ts_ns: _Optional[int] = ..., matched: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[AlertState, str]] = ...) -> None: ...
