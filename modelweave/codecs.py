"""Transport-free codecs: protobuf JSON mapping <-> messages, request checks, graph description.

HTTP, gRPC and batch ingresses call these; they only add their transport's framing
and their own error mapping table.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from modelweave.checker import CheckedGraph
from modelweave.errors import InvalidArgument, ModelweaveError, ResourceExhausted, Status
from modelweave.json_codec import to_json_bytes, to_json_str
from modelweave.messages import PART_FIELDS, full_name, part_name, parts_present
from modelweave.spec import Limits, ModelNode
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc


def parse_infer_json(body: bytes, limits: Limits) -> svc.InferRequest:
    """Parses the protobuf JSON mapping of an ``InferRequest``.

    Raises:
        ResourceExhausted: the body is larger than ``limits.max_request_bytes``.
        InvalidArgument: malformed JSON or unknown/mistyped fields (named in the message).
    """
    if len(body) > limits.max_request_bytes:
        raise ResourceExhausted(f"request body of {len(body)} bytes exceeds the limit of "
                                f"{limits.max_request_bytes} bytes")
    if not body.strip():
        raise InvalidArgument('request body is empty; expected JSON like {"input": {"text": {"content": "..."}}}')
    try:
        data = load_json(body, "request body is not valid JSON")
    except RecursionError:
        # The C decoder counts its recursion: thousands of nested brackets end here, not in a 500.
        raise InvalidArgument(f"request body nests deeper than {limits.max_json_depth} levels") from None
    check_json_depth(data, limits.max_json_depth)
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object with an 'input' field")
    request = svc.InferRequest()
    try:
        json_format.ParseDict(data, request)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"invalid request: {exc}") from None
    return request


def load_json(raw: str | bytes, not_json: str) -> Any:
    """``json.loads`` of client data; what it cannot decode is an ``InvalidArgument`` starting with
    ``not_json``. A ``RecursionError`` (thousands of nested brackets) passes: callers word nesting.

    Raises:
        InvalidArgument: bad UTF-8, bad syntax, or an integer literal longer than Python converts
            (4,300 digits, ``sys.get_int_max_str_digits``), anywhere in ``raw``.
    """
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{not_json}: {exc}") from None
    except ValueError:  # the integer literal; its own message advises raising the limit
        raise InvalidArgument(f"{not_json}: it holds an integer literal of more than "
                              f"{sys.get_int_max_str_digits()} digits") from None


def check_json_depth(data: Any, max_depth: int) -> None:
    """Refuses parsed JSON nested deeper than ``max_depth`` (walked without recursion).

    The request schema nests 5 levels at most; the bound keeps every later recursive
    step (protobuf's JSON parser, logging) far from Python's recursion limit.

    Raises:
        InvalidArgument: the data is nested too deeply.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > max_depth:
                raise InvalidArgument(f"request body nests deeper than {max_depth} levels")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


#: Request ids travel into logs, traces and headers: a plain charset keeps them inert.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
_DTYPE_BYTES = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT64: 8, pb.DTYPE_INT32: 4, pb.DTYPE_INT64: 8,
                pb.DTYPE_UINT8: 1, pb.DTYPE_BOOL: 1, pb.DTYPE_FLOAT16: 2}


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """Returns ``request_id`` when it is 1-128 characters of ``[A-Za-z0-9._:-]``.

    Raises:
        InvalidArgument: naming ``field`` (the body field, header or metadata key it came from).
    """
    if not _REQUEST_ID_RE.fullmatch(request_id):  # match() would let "$" pass a trailing newline
        raise InvalidArgument(f"{field} must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return request_id


def check_request(request: svc.InferRequest, limits: Limits, inputs: Iterable[str] | None = None) -> None:
    """Checks an ``InferRequest`` against the graph's limits (transport independent).

    Both transports call this on the parsed request, so every bound holds for HTTP and
    gRPC alike. With ``limits.undeclared_parts == "drop"`` undeclared parts are cleared
    from ``request.input`` instead of refused.

    Args:
        request: The parsed request (may be modified: dropped parts).
        limits: The graph's limits.
        inputs: Part types the graph declares as ``input``; None skips that check.

    Raises:
        InvalidArgument: naming the offending field.
        ResourceExhausted: the serialised request exceeds ``limits.max_request_bytes``.
    """
    if request.ByteSize() > limits.max_request_bytes:
        # HTTP bodies are bounded before parsing; this bounds gRPC messages the same way.
        raise ResourceExhausted(f"request of {request.ByteSize()} bytes exceeds the limit of "
                                f"{limits.max_request_bytes} bytes")
    if not request.HasField("input"):
        raise InvalidArgument("input is required")
    if request.request_id:
        check_request_id(request.request_id)
    if inputs is not None:
        _check_declared_parts(request.input, {part_name(p) for p in inputs}, limits)
    _check_part_sizes(request.input, limits)
    if len(request.input.text.content) > limits.max_text_chars:
        raise InvalidArgument(f"input.text.content has {len(request.input.text.content)} characters; "
                              f"the limit is {limits.max_text_chars}")
    if request.timeout_ms > limits.max_timeout_ms:
        raise InvalidArgument(f"timeout_ms {request.timeout_ms} exceeds the limit of {limits.max_timeout_ms}")
    if request.input.HasField("error"):
        raise InvalidArgument("input.error is output-only")


def _check_declared_parts(message: pb.Message, declared: set[str], limits: Limits) -> None:
    # A client must not pre-fill parts that later nodes produce and routes read (e.g. a
    # classification that skips the classifier).
    for part in sorted(parts_present(message) - declared):
        field = PART_FIELDS[part]
        if limits.undeclared_parts == "drop":
            message.ClearField(field)
        else:
            accepted = ", ".join(f"input.{PART_FIELDS[d]}" for d in sorted(declared))
            raise InvalidArgument(f"input.{field} is not an input of this graph; it accepts {accepted}")


def _check_part_sizes(message: pb.Message, limits: Limits) -> None:
    n = len(message.embedding.values)
    if n > limits.max_embedding_values:
        raise InvalidArgument(f"input.embedding.values has {n} values; the limit is {limits.max_embedding_values}")
    if len(message.tensors) > limits.max_tensors:
        raise InvalidArgument(f"input.tensors has {len(message.tensors)} entries; the limit is {limits.max_tensors}")
    for key, tensor in message.tensors.items():
        where = f"input.tensors[{key[:64]!r}]"
        if len(tensor.data) > limits.max_tensor_bytes:
            raise InvalidArgument(f"{where}.data has {len(tensor.data)} bytes; the limit is {limits.max_tensor_bytes}")
        width = _DTYPE_BYTES.get(tensor.dtype)
        if width is None:
            raise InvalidArgument(f"{where}.dtype must be set to a known DType")
        if any(d < 0 for d in tensor.shape):
            raise InvalidArgument(f"{where}.shape has a negative dimension")
        elements = 1
        for d in tensor.shape:
            elements *= d
            if elements * width > limits.max_tensor_bytes:
                raise InvalidArgument(f"{where}.shape describes more than {limits.max_tensor_bytes} bytes")
        if elements * width != len(tensor.data):
            raise InvalidArgument(f"{where}: shape {list(tensor.shape)} needs {elements * width} bytes of data, "
                                  f"got {len(tensor.data)}")
    if len(message.metadata) > limits.max_metadata_entries:
        raise InvalidArgument(f"input.metadata has {len(message.metadata)} entries; "
                              f"the limit is {limits.max_metadata_entries}")
    for key, value in message.metadata.items():
        if not key or len(key) > limits.max_metadata_key_chars:
            raise InvalidArgument(f"input.metadata keys must be 1-{limits.max_metadata_key_chars} characters")
        if len(value) > limits.max_metadata_value_chars:
            raise InvalidArgument(f"input.metadata[{key!r}] has {len(value)} characters; "
                                  f"the limit is {limits.max_metadata_value_chars}")


#: What clients learn about server-side failures: the details go to logs with the request id.
_PUBLIC_MESSAGES: dict[Status, str] = {
    Status.INTERNAL: "internal error",
    Status.UNAVAILABLE: "a model is unavailable or overloaded; retry later",
    Status.FAILED_PRECONDITION: "the graph could not produce an acceptable answer",
    Status.DEADLINE_EXCEEDED: "the request's deadline passed before the graph finished",
}


def public_message(exc: ModelweaveError, request_id: str = "") -> str:
    """The message a client may see for ``exc``.

    Errors about the client's own input (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED,
    UNAUTHENTICATED) keep their message, which names the field. Server-side failures get a
    fixed message plus the request id: their text can hold exception messages, upstream
    bodies, URLs and file paths, which only the logs may see.
    """
    fixed = _PUBLIC_MESSAGES.get(exc.status)
    if fixed is None:
        return exc.message[:500]
    return f"{fixed} (request id {request_id}; details in the server logs)" if request_id else fixed


def to_json(message: Any) -> bytes:
    """Serialises a protobuf message with the canonical JSON mapping (``json_format``'s bytes)."""
    return to_json_bytes(message)


def to_json_text(message: Any) -> str:
    """:func:`to_json` as a string (no encode and decode round trip)."""
    return to_json_str(message)


def error_body(exc: ModelweaveError, request_id: str = "") -> bytes:
    """JSON error body shared by the HTTP ingress: ``{"error": {code, message, node}}``."""
    err = {"code": exc.status.value, "message": public_message(exc, request_id)}
    if exc.node:
        err["node"] = exc.node
    if request_id:
        err["request_id"] = request_id
    return json.dumps({"error": err}).encode()


def describe_graph(graph: CheckedGraph) -> svc.GraphDescription:
    """Builds the ``GraphDescription`` returned by ``DescribeGraph`` and drawn by the CLI."""
    spec = graph.spec
    desc = svc.GraphDescription(
        name=spec.name,
        description=spec.description,
        input_types=sorted(full_name(t) for t in graph.nodes[f"{spec.name}/{spec.flow.name}"].available_in),
        output_types=sorted(full_name(t) for t in graph.output_types),
    )
    for info in graph.nodes.values():
        node = info.node
        nd = svc.NodeDescription(
            path=info.path,
            kind=node.kind,
            consumes=sorted(full_name(t) for t in (info.consumes or info.reads)),
            produces=sorted(full_name(t) for t in info.available_out),
        )
        if isinstance(node, ModelNode):
            # A grouped node reports its group's deployment; an inline one the ingress.
            home = graph.layout.home[node.name]
            d = graph.layout.deployments[home].settings if home is not None else node.deployment
            nd.model = node.impl
            nd.deployment = home if home is not None else "Ingress"
            nd.settings["placement"] = graph.layout.placement(node.name)
            if d.autoscaling_config:
                a = d.autoscaling_config
                nd.settings["replicas"] = f"{a.min_replicas}-{a.max_replicas} (autoscaling)"
            else:
                nd.settings["replicas"] = str(d.num_replicas or 1)
            nd.settings["num_cpus"] = f"{d.ray_actor_options.num_cpus:g}"
            nd.settings["num_gpus"] = f"{d.ray_actor_options.num_gpus:g}"
            nd.settings["max_ongoing_requests"] = str(d.max_ongoing_requests)
            if d.batching:
                nd.settings["batching"] = f"{d.batching.max_batch_size}/{d.batching.batch_wait_timeout_s * 1000:g}ms"
        desc.nodes.append(nd)
    for edge in graph.edges:
        desc.edges.append(svc.EdgeDescription(source=edge.source, target=edge.target, label=edge.label,
                                              types=sorted(full_name(t) for t in edge.types)))
    return desc


def message_from_text(text: str) -> pb.Message:
    """Convenience: an input envelope holding just ``text``."""
    return pb.Message(text=pb.Text(content=text))
