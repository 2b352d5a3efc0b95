"""The fast JSON encoder writes exactly what ``json_format.MessageToJson`` writes."""

from __future__ import annotations

import math
import random

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2, wrappers_pb2

from modelweave.json_codec import message_to_obj, to_json_bytes, to_json_str
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

_FLOATS = [0.0, -0.0, 1.0, 0.1, 1e-7, 3.4e38, -2.5, 1 / 3, 123456.789, math.inf, -math.inf, math.nan]
_TEXTS = ["", "hello", "é ü ß", "quote \" and \\ backslash", "line\nbreak", "emoji 😀", "中文", "\x00\x1f"]


def _rf(rng: random.Random) -> float:
    return rng.choice(_FLOATS) if rng.random() < 0.4 else rng.uniform(-1e4, 1e4) * 10 ** rng.randint(-8, 8)


def _random_message(rng: random.Random) -> pb.Message:
    m = pb.Message()
    if rng.random() < 0.8:
        m.text.content = rng.choice(_TEXTS)
        m.text.language = rng.choice(["", "en", "fr"])
        m.text.language_score = _rf(rng)
        m.text.redacted = rng.random() < 0.5
    if rng.random() < 0.5:
        m.embedding.values.extend(_rf(rng) for _ in range(rng.randint(0, 6)))
        m.embedding.model = rng.choice(["", "minilm"])
    if rng.random() < 0.7:
        m.classification.label = rng.choice(["positive", "", "négatif"])
        m.classification.confidence = _rf(rng)
        for _ in range(rng.randint(0, 3)):
            m.classification.scores.add(label=rng.choice(_TEXTS), score=_rf(rng))
    for _ in range(rng.randint(0, 2)):
        t = m.tensors[rng.choice(["output", "x", "ü"])]
        t.dtype = rng.choice(list(pb.DType.values()) + [99])  # 99: an unknown value of an open enum
        t.shape.extend(rng.randint(-(2**62), 2**62) for _ in range(rng.randint(0, 3)))
        t.data = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 9)))
    if rng.random() < 0.5:
        m.generation.text = rng.choice(_TEXTS)
        m.generation.candidate = rng.randint(-5, 5)
        m.generation.prompt_tokens = rng.randint(0, 2**31 - 1)
        m.generation.score = _rf(rng)
    if rng.random() < 0.5:
        m.verdict.passed = rng.random() < 0.5
        m.verdict.score = _rf(rng)
    for _ in range(rng.randint(0, 3)):
        m.metadata[rng.choice(_TEXTS)] = rng.choice(_TEXTS)
    if rng.random() < 0.2:
        m.error.code = "INTERNAL"
    return m


def _random_response(rng: random.Random) -> svc.InferResponse:
    r = svc.InferResponse(result=_random_message(rng))
    r.trace.request_id = rng.choice(["", "abc"])
    r.trace.total_ms = _rf(rng)
    for i in range(rng.randint(0, 25)):
        r.trace.spans.add(node=f"g/n{i}", kind="model", attempt=rng.randint(0, 3), start_ms=_rf(rng),
                          latency_ms=_rf(rng), cpu_ms=_rf(rng), cache_hit=rng.random() < 0.3,
                          route=rng.choice(["", "keep"]), retry=rng.randint(0, 2))
    return r


@pytest.mark.parametrize("seed", range(300))
def test_same_bytes_as_json_format_on_random_messages(seed: int) -> None:
    rng = random.Random(seed)
    message = _random_response(rng) if seed % 2 else _random_message(rng)
    assert to_json_bytes(message) == json_format.MessageToJson(message, indent=None).encode()
    assert message_to_obj(message) == json_format.MessageToDict(message)


def test_empty_and_default_valued_messages() -> None:
    for message in (pb.Message(), svc.InferResponse(), pb.Text(content=""), pb.Classification(confidence=0.0)):
        assert to_json_bytes(message) == json_format.MessageToJson(message, indent=None).encode()


def test_well_known_types_go_through_json_format() -> None:
    s = struct_pb2.Struct()
    s.update({"a": 1, "b": [True, None, "x"], "c": {"d": 2.5}})
    for message in (s, timestamp_pb2.Timestamp(seconds=1, nanos=5), wrappers_pb2.FloatValue(value=0.1),
                    struct_pb2.Value(string_value="v")):
        assert to_json_bytes(message) == json_format.MessageToJson(message, indent=None).encode()


def test_remembered_float32_forms_match_json_format_on_repeats_and_signed_zeros() -> None:
    # The shortest form of each float32 value is remembered: the second encoding of the same
    # values (hits), and 0.0 next to -0.0 (one dict key, two spellings), must still match.
    values = [0.1, 1 / 3, -0.0, 0.0, 0.8, 0.1, -0.0, 1e-7, 0.8]
    message = pb.Message(embedding=pb.Embedding(values=values))
    message.classification.scores.add(label="a", score=-0.0)
    message.classification.scores.add(label="b", score=0.2)
    for _ in range(2):
        assert to_json_bytes(message) == json_format.MessageToJson(message, indent=None).encode()
    assert to_json_str(message) == json_format.MessageToJson(message, indent=None)


def test_the_float32_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelweave import json_codec

    monkeypatch.setattr(json_codec, "_SHORTEST_MAX", 8)
    json_codec._SHORTEST.clear()
    rng = random.Random(3)
    for _ in range(50):
        message = pb.Classification(confidence=rng.uniform(0, 1))
        assert to_json_bytes(message) == json_format.MessageToJson(message, indent=None).encode()
        assert len(json_codec._SHORTEST) <= 8
