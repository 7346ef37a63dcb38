from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RevealMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVEAL_MODE_UNSPECIFIED: _ClassVar[RevealMode]
    REVEAL_MODE_FULL: _ClassVar[RevealMode]
    REVEAL_MODE_MASKED: _ClassVar[RevealMode]
REVEAL_MODE_UNSPECIFIED: RevealMode
REVEAL_MODE_FULL: RevealMode
REVEAL_MODE_MASKED: RevealMode

class TokenizeItem(_message.Message):
    __slots__ = ("template", "value", "reference", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    template: str
    value: str
    reference: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, template: _Optional[str] = ..., value: _Optional[str] = ..., reference: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TokenizeItem]
    def __init__(self, items: _Optional[_Iterable[_Union[TokenizeItem, _Mapping]]] = ...) -> None: ...

class TokenizeResult(_message.Message):
    __slots__ = ("reference", "token", "error")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reference: str
    token: str
    error: _status_pb2.Status
    def __init__(self, reference: _Optional[str] = ..., token: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenizeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TokenizeResult, _Mapping]]] = ...) -> None: ...

class DetokenizeItem(_message.Message):
    __slots__ = ("template", "token", "reference")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    template: str
    token: str
    reference: str
    def __init__(self, template: _Optional[str] = ..., token: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("items", "reveal", "purpose")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REVEAL_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DetokenizeItem]
    reveal: RevealMode
    purpose: str
    def __init__(self, items: _Optional[_Iterable[_Union[DetokenizeItem, _Mapping]]] = ..., reveal: _Optional[_Union[RevealMode, str]] = ..., purpose: _Optional[str] = ...) -> None: ...

class DetokenizeResult(_message.Message):
    __slots__ = ("reference", "value", "error", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    reference: str
    value: str
    error: _status_pb2.Status
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, reference: _Optional[str] = ..., value: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DetokenizeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DetokenizeResult, _Mapping]]] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TemplateInfo(_message.Message):
    __slots__ = ("name", "type", "mode", "granted_scopes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    mode: str
    granted_scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., mode: _Optional[str] = ..., granted_scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates", "max_batch_items")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[TemplateInfo]
    max_batch_items: int
    def __init__(self, templates: _Optional[_Iterable[_Union[TemplateInfo, _Mapping]]] = ..., max_batch_items: _Optional[int] = ...) -> None: ...
