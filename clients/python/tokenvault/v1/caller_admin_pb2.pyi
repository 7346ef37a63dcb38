import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RevokeCallerRequest(_message.Message):
    __slots__ = ("identity", "serial", "reason")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    identity: str
    serial: str
    reason: str
    def __init__(self, identity: _Optional[str] = ..., serial: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RestoreCallerRequest(_message.Message):
    __slots__ = ("identity", "serial")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    identity: str
    serial: str
    def __init__(self, identity: _Optional[str] = ..., serial: _Optional[str] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("id", "identity", "serial", "reason", "revoked_by", "revoked_at", "restored_by", "restored_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    RESTORED_BY_FIELD_NUMBER: _ClassVar[int]
    RESTORED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    identity: str
    serial: str
    reason: str
    revoked_by: str
    revoked_at: _timestamp_pb2.Timestamp
    restored_by: str
    restored_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., identity: _Optional[str] = ..., serial: _Optional[str] = ..., reason: _Optional[str] = ..., revoked_by: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., restored_by: _Optional[str] = ..., restored_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRevocationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRevocationsResponse(_message.Message):
    __slots__ = ("revocations",)
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class LiftSuspensionRequest(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: str
    def __init__(self, identity: _Optional[str] = ...) -> None: ...

class Suspension(_message.Message):
    __slots__ = ("id", "identity", "reason", "suspended_by", "suspended_at", "lifted_by", "lifted_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_BY_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_AT_FIELD_NUMBER: _ClassVar[int]
    LIFTED_BY_FIELD_NUMBER: _ClassVar[int]
    LIFTED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    identity: str
    reason: str
    suspended_by: str
    suspended_at: _timestamp_pb2.Timestamp
    lifted_by: str
    lifted_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., identity: _Optional[str] = ..., reason: _Optional[str] = ..., suspended_by: _Optional[str] = ..., suspended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lifted_by: _Optional[str] = ..., lifted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSuspensionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSuspensionsResponse(_message.Message):
    __slots__ = ("suspensions",)
    SUSPENSIONS_FIELD_NUMBER: _ClassVar[int]
    suspensions: _containers.RepeatedCompositeFieldContainer[Suspension]
    def __init__(self, suspensions: _Optional[_Iterable[_Union[Suspension, _Mapping]]] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("applied", "error", "loaded_at", "sha256")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    error: str
    loaded_at: _timestamp_pb2.Timestamp
    sha256: str
    def __init__(self, applied: _Optional[bool] = ..., error: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sha256: _Optional[str] = ...) -> None: ...

class GetPolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("path", "loaded_at", "sha256", "caller_count", "last_attempt_at", "last_error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CALLER_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    path: str
    loaded_at: _timestamp_pb2.Timestamp
    sha256: str
    caller_count: int
    last_attempt_at: _timestamp_pb2.Timestamp
    last_error: str
    def __init__(self, path: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sha256: _Optional[str] = ..., caller_count: _Optional[int] = ..., last_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...
