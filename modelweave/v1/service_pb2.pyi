from modelweave.v1 import messages_pb2 as _messages_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferRequest(_message.Message):
    __slots__ = ("input", "request_id", "timeout_ms")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    input: _messages_pb2.Message
    request_id: str
    timeout_ms: int
    def __init__(self, input: _Optional[_Union[_messages_pb2.Message, _Mapping]] = ..., request_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("result", "trace", "graph")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    result: _messages_pb2.Message
    trace: _messages_pb2.Trace
    graph: str
    def __init__(self, result: _Optional[_Union[_messages_pb2.Message, _Mapping]] = ..., trace: _Optional[_Union[_messages_pb2.Trace, _Mapping]] = ..., graph: _Optional[str] = ...) -> None: ...

class InferEvent(_message.Message):
    __slots__ = ("span", "result")
    SPAN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    span: _messages_pb2.Span
    result: InferResponse
    def __init__(self, span: _Optional[_Union[_messages_pb2.Span, _Mapping]] = ..., result: _Optional[_Union[InferResponse, _Mapping]] = ...) -> None: ...

class DescribeGraphRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeDescription(_message.Message):
    __slots__ = ("path", "kind", "model", "consumes", "produces", "deployment", "settings")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONSUMES_FIELD_NUMBER: _ClassVar[int]
    PRODUCES_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    model: str
    consumes: _containers.RepeatedScalarFieldContainer[str]
    produces: _containers.RepeatedScalarFieldContainer[str]
    deployment: str
    settings: _containers.ScalarMap[str, str]
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., consumes: _Optional[_Iterable[str]] = ..., produces: _Optional[_Iterable[str]] = ..., deployment: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EdgeDescription(_message.Message):
    __slots__ = ("source", "target", "types", "label")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    types: _containers.RepeatedScalarFieldContainer[str]
    label: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., types: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ...) -> None: ...

class GraphDescription(_message.Message):
    __slots__ = ("name", "description", "nodes", "edges", "input_types", "output_types")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    INPUT_TYPES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeDescription]
    edges: _containers.RepeatedCompositeFieldContainer[EdgeDescription]
    input_types: _containers.RepeatedScalarFieldContainer[str]
    output_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeDescription, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[EdgeDescription, _Mapping]]] = ..., input_types: _Optional[_Iterable[str]] = ..., output_types: _Optional[_Iterable[str]] = ...) -> None: ...
