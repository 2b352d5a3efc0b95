"""Hostile input: the transport-free checks both HTTP and gRPC run (no Ray)."""

from __future__ import annotations

import json

import pytest

from modelweave.codecs import check_request, check_request_id, error_body, parse_infer_json, public_message
from modelweave.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelError,
    ResourceExhausted,
    Unavailable,
)
from modelweave.spec import Limits
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

LIMITS = Limits()


def _request(**parts: object) -> svc.InferRequest:
    return svc.InferRequest(input=pb.Message(text=pb.Text(content="hi"), **parts))  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [
    b"[" * 5000 + b"]" * 5000,
    b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"input": {"text": {"content": "hi"}}, "x": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
    b"[" * 40 + b"]" * 40,
])
def test_deep_nesting_is_invalid_argument_not_recursion_error(body):
    with pytest.raises(InvalidArgument, match="nests deeper than 32"):
        parse_infer_json(body, LIMITS)


@pytest.mark.parametrize("body", [
    b'{"input": {"text": {"content": "hi"}}, "timeout_ms": ' + b"1" * 4301 + b"}",
    b'{"input": {"text": {"content": "hi"}}, "x": -' + b"9" * 5000 + b"}",  # even in an unknown field
    b'{"input": {"text": {"content": "hi"}}',
    b'\xff\xfe{"input"',
])
def test_bodies_json_cannot_decode_are_invalid_argument(body):
    # An integer literal over Python's 4,300-digit conversion limit is a plain ValueError in
    # json.loads: it was answered 500 with a stack trace in the log.
    with pytest.raises(InvalidArgument, match="request body is not valid JSON") as err:
        parse_infer_json(body, LIMITS)
    assert "set_int_max_str_digits" not in str(err.value)  # no advice meant for the server's author


def test_brackets_inside_strings_do_not_count_as_nesting():
    request = parse_infer_json(json.dumps({"input": {"text": {"content": "[" * 5000}}}).encode(), LIMITS)
    assert request.input.text.content == "[" * 5000


def test_undeclared_parts_are_refused_by_name_or_dropped():
    request = _request(classification=pb.Classification(label="positive", confidence=1.0))
    with pytest.raises(InvalidArgument, match=r"input.classification is not an input .* input.text"):
        check_request(request, LIMITS, ["Text"])
    check_request(request, Limits(undeclared_parts="drop"), ["Text"])
    assert not request.input.HasField("classification") and request.input.text.content == "hi"
    check_request(_request(embedding=pb.Embedding(values=[1.0])), LIMITS, ["Text", "modelweave.v1.Embedding"])
    tensors = _request(tensors={"x": pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[1], data=b"a")})
    with pytest.raises(InvalidArgument, match="input.tensors is not an input"):
        check_request(tensors, LIMITS, ["Text"])


@pytest.mark.parametrize(("parts", "needle"), [
    ({"embedding": pb.Embedding(values=[0.0] * 8193)}, "input.embedding.values has 8193 values"),
    ({"tensors": {f"t{i}": pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[1], data=b"a") for i in range(9)}},
     "input.tensors has 9 entries"),
    ({"tensors": {"x": pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[2], data=b"a")}}, "needs 2 bytes of data"),
    ({"tensors": {"x": pb.Tensor(shape=[1], data=b"a")}}, "dtype must be set"),
    ({"tensors": {"x": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[-1], data=b"")}}, "negative dimension"),
    ({"tensors": {"x": pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[1 << 30, 1 << 30], data=b"")}},
     "more than 1048576 bytes"),
    ({"metadata": {f"k{i}": "v" for i in range(33)}}, "input.metadata has 33 entries"),
    ({"metadata": {"k" * 65: "v"}}, "metadata keys must be 1-64"),
    ({"metadata": {"note": "v" * 1025}}, "metadata['note'] has 1025 characters"),
])
def test_every_part_is_bounded(parts, needle):
    with pytest.raises(InvalidArgument, match=needle.replace("[", r"\[").replace("]", r"\]")):
        check_request(_request(**parts), LIMITS, ["Text", "Embedding", "Tensor"])


def test_a_valid_tensor_passes():
    check_request(_request(tensors={"x": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 3], data=bytes(24))}),
                  LIMITS, ["Text", "Tensor"])


def test_grpc_sized_requests_are_bounded_like_http_bodies():
    big = _request(metadata={"k": "v"})
    big.input.text.content = "x" * (2 << 20)
    with pytest.raises(ResourceExhausted, match="exceeds the limit"):
        check_request(big, LIMITS, ["Text"])


@pytest.mark.parametrize("bad", ["a" * 129, "has space", "new\nline", "trailing\n", "ümlaut", "semi;colon", "", "\n"])
def test_request_ids_are_plain(bad):
    with pytest.raises(InvalidArgument, match="x-request-id header must be"):
        check_request_id(bad, "x-request-id header")
    if bad:
        with pytest.raises(InvalidArgument, match="request_id must be"):
            check_request(svc.InferRequest(input=pb.Message(text=pb.Text(content="hi")), request_id=bad), LIMITS)


def test_request_ids_accept_uuids_and_trace_ids():
    for ok in ("req-42", "0f8fad5b-d9cb-469f-a165-70867728950e", "a.b_c:d", "x" * 128):
        assert check_request_id(ok) == ok


@pytest.mark.parametrize("err", [
    ModelError("model failed: ValueError: X has 3 features, see /srv/models/head.joblib"),
    Unavailable("http://10.0.0.3:8000/v1/chat failed 3 times; last: HTTP 502: <html>upstream body</html>"),
    DeadlineExceeded("timeout after 30s calling http://10.0.0.3:8000"),
    FailedPrecondition("model file '/srv/models/x.onnx' does not exist"),
])
def test_server_side_failures_answer_a_fixed_message_with_the_request_id(err):
    message = public_message(err, "req-7")
    assert "/srv" not in message and "http" not in message and "ValueError" not in message
    assert "req-7" in message
    body = json.loads(error_body(err, "req-7"))["error"]
    assert body["code"] == err.status.value and body["message"] == message and body["request_id"] == "req-7"


def test_client_errors_keep_the_field_they_name():
    err = InvalidArgument("input.text.content has 30000 characters; the limit is 20000")
    assert public_message(err, "r") == err.message
