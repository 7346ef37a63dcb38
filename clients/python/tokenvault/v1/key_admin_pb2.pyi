import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyVersion(_message.Message):
    __slots__ = ("template", "purpose", "version", "state", "kek_provider", "kek_key_id", "kek_version", "created_at", "updated_at", "rows", "rows_known")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KEK_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KEK_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEK_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    template: str
    purpose: str
    version: int
    state: str
    kek_provider: str
    kek_key_id: str
    kek_version: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    rows: int
    rows_known: bool
    def __init__(self, template: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., kek_provider: _Optional[str] = ..., kek_key_id: _Optional[str] = ..., kek_version: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[int] = ..., rows_known: _Optional[bool] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: str
    def __init__(self, template: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "kek_provider", "kek_key_id", "kek_version")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    KEK_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KEK_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEK_VERSION_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    kek_provider: str
    kek_key_id: str
    kek_version: str
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ..., kek_provider: _Optional[str] = ..., kek_key_id: _Optional[str] = ..., kek_version: _Optional[str] = ...) -> None: ...

class RotateDataKeyRequest(_message.Message):
    __slots__ = ("template", "purposes")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    template: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, template: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ...) -> None: ...

class RotateDataKeyResponse(_message.Message):
    __slots__ = ("rotated",)
    ROTATED_FIELD_NUMBER: _ClassVar[int]
    rotated: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    def __init__(self, rotated: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ...) -> None: ...

class RotateKekRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateKekResponse(_message.Message):
    __slots__ = ("kek_provider", "kek_key_id", "kek_version", "rewrapped")
    KEK_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KEK_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEK_VERSION_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    kek_provider: str
    kek_key_id: str
    kek_version: str
    rewrapped: int
    def __init__(self, kek_provider: _Optional[str] = ..., kek_key_id: _Optional[str] = ..., kek_version: _Optional[str] = ..., rewrapped: _Optional[int] = ...) -> None: ...

class SetKeyStateRequest(_message.Message):
    __slots__ = ("template", "purpose", "version", "state")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    template: str
    purpose: str
    version: int
    state: str
    def __init__(self, template: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class StartReencryptionRequest(_message.Message):
    __slots__ = ("template", "batch_size", "max_rows_per_second")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    template: str
    batch_size: int
    max_rows_per_second: int
    def __init__(self, template: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_rows_per_second: _Optional[int] = ...) -> None: ...

class ReencryptionJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    def __init__(self, job_id: _Optional[int] = ...) -> None: ...

class ReencryptionJob(_message.Message):
    __slots__ = ("job_id", "template", "status", "target_version", "target_index_version", "rows_done", "rows_total", "rows_left", "rows_per_second", "started_by", "started_at", "updated_at", "finished_at", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TARGET_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_LEFT_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    template: str
    status: str
    target_version: int
    target_index_version: int
    rows_done: int
    rows_total: int
    rows_left: int
    rows_per_second: float
    started_by: str
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, job_id: _Optional[int] = ..., template: _Optional[str] = ..., status: _Optional[str] = ..., target_version: _Optional[int] = ..., target_index_version: _Optional[int] = ..., rows_done: _Optional[int] = ..., rows_total: _Optional[int] = ..., rows_left: _Optional[int] = ..., rows_per_second: _Optional[float] = ..., started_by: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class ListReencryptionsRequest(_message.Message):
    __slots__ = ("template", "unfinished_only")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_ONLY_FIELD_NUMBER: _ClassVar[int]
    template: str
    unfinished_only: bool
    def __init__(self, template: _Optional[str] = ..., unfinished_only: _Optional[bool] = ...) -> None: ...

class ListReencryptionsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[ReencryptionJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[ReencryptionJob, _Mapping]]] = ...) -> None: ...

class ProposeDestroyRequest(_message.Message):
    __slots__ = ("template", "purpose", "version", "force")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    template: str
    purpose: str
    version: int
    force: bool
    def __init__(self, template: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DestroyRequestRef(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class DestroyRequest(_message.Message):
    __slots__ = ("request_id", "template", "purpose", "version", "force", "status", "proposed_by", "proposed_at", "approved_by", "approved_at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_BY_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_AT_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    template: str
    purpose: str
    version: int
    force: bool
    status: str
    proposed_by: str
    proposed_at: _timestamp_pb2.Timestamp
    approved_by: str
    approved_at: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[int] = ..., template: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ..., status: _Optional[str] = ..., proposed_by: _Optional[str] = ..., proposed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approved_by: _Optional[str] = ..., approved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDestroyRequestsRequest(_message.Message):
    __slots__ = ("pending_only",)
    PENDING_ONLY_FIELD_NUMBER: _ClassVar[int]
    pending_only: bool
    def __init__(self, pending_only: _Optional[bool] = ...) -> None: ...

class ListDestroyRequestsResponse(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DestroyRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DestroyRequest, _Mapping]]] = ...) -> None: ...

class ListKeyEventsRequest(_message.Message):
    __slots__ = ("template", "limit")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    template: str
    limit: int
    def __init__(self, template: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class KeyEvent(_message.Message):
    __slots__ = ("id", "occurred_at", "template", "purpose", "version", "event", "from_state", "to_state", "actor")
    ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    id: int
    occurred_at: _timestamp_pb2.Timestamp
    template: str
    purpose: str
    version: int
    event: str
    from_state: str
    to_state: str
    actor: str
    def __init__(self, id: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., template: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., event: _Optional[str] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ListKeyEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[KeyEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[KeyEvent, _Mapping]]] = ...) -> None: ...
