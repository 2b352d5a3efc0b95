"""Transport-free codecs: protobuf JSON mapping <-> messages, request checks, graph description.

HTTP, gRPC and batch ingresses call these; they only add their transport's framing
and their own error mapping table.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from modelweave.checker import CheckedGraph
from modelweave.errors import InvalidArgument, ModelweaveError, ResourceExhausted
from modelweave.messages import full_name
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
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object with an 'input' field")
    request = svc.InferRequest()
    try:
        json_format.ParseDict(data, request)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"invalid request: {exc}") from None
    return request


def check_request(request: svc.InferRequest, limits: Limits) -> None:
    """Checks an ``InferRequest`` against the graph's limits (transport independent).

    Raises:
        InvalidArgument: naming the offending field.
    """
    if not request.HasField("input"):
        raise InvalidArgument("input is required")
    if len(request.input.text.content) > limits.max_text_chars:
        raise InvalidArgument(f"input.text.content has {len(request.input.text.content)} characters; "
                              f"the limit is {limits.max_text_chars}")
    if request.timeout_ms > limits.max_timeout_ms:
        raise InvalidArgument(f"timeout_ms {request.timeout_ms} exceeds the limit of {limits.max_timeout_ms}")
    if len(request.request_id) > 128:
        raise InvalidArgument("request_id must be at most 128 characters")
    if request.input.HasField("error"):
        raise InvalidArgument("input.error is output-only")


def to_json(message: Any) -> bytes:
    """Serialises a protobuf message with the canonical JSON mapping."""
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=False).encode()


def error_body(exc: ModelweaveError, request_id: str = "") -> bytes:
    """JSON error body shared by the HTTP ingress: ``{"error": {code, message, node}}``."""
    err = {"code": exc.status.value, "message": exc.message}
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
            d = node.deployment
            nd.model = node.impl
            nd.deployment = node.name
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
