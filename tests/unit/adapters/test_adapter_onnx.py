"""OnnxEmbedder against the real int8 all-MiniLM-L6-v2 model and the vendored tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelweave.adapters.onnx import OnnxEmbedder, resolve_path
from modelweave.codecs import message_from_text
from modelweave.errors import FailedPrecondition, GraphSpecError, InvalidArgument


@pytest.fixture(scope="module")
def embedder(minilm_files: dict[str, str]) -> OnnxEmbedder:
    e = OnnxEmbedder(**minilm_files, model_name="minilm-int8", threads=1)
    e.load()
    return e


def test_missing_files_fail_at_load_not_init() -> None:
    e = OnnxEmbedder(model_path="/nonexistent.onnx", tokenizer_path="/nonexistent.json")
    assert e.consumes == ("Text",) and e.produces == "Embedding"
    with pytest.raises(FailedPrecondition, match="does not exist"):
        e.load()


def test_unknown_param_is_rejected() -> None:
    with pytest.raises(GraphSpecError, match="params.polling"):
        OnnxEmbedder(model_path="a", tokenizer_path="b", polling="mean")


def test_resolve_path_finds_package_files(minilm_files: dict[str, str]) -> None:
    path = resolve_path(minilm_files["model_path"])
    assert path.is_file() and path.name == "model.onnx"
    with pytest.raises(FailedPrecondition, match="not installed"):
        resolve_path("pkg:no_such_package_xyz/model.onnx")


def test_embeddings_are_unit_vectors_with_model_name(embedder: OnnxEmbedder) -> None:
    out = embedder.predict([message_from_text("The parcel arrived damaged."), message_from_text("")])
    assert [len(e.values) for e in out] == [384, 384]
    assert all(e.model == "minilm-int8" for e in out)
    norms = [float(np.linalg.norm(e.values)) for e in out]
    assert norms == pytest.approx([1.0, 1.0], abs=1e-4)


def test_similar_sentences_are_closer_than_unrelated(embedder: OnnxEmbedder) -> None:
    v = embedder.embed(
        [
            "My order arrived broken and I want a refund.",
            "The package was damaged, please give me my money back.",
            "The weather in the mountains is sunny today.",
        ]
    )
    related, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert related > 0.5 > unrelated + 0.2


def test_batch_order_and_padding_do_not_change_vectors(embedder: OnnxEmbedder) -> None:
    texts = ["short", "a considerably longer sentence with many more tokens in it", "mid length text"]
    batched = embedder.embed(texts)
    single = np.vstack([embedder.embed([t]) for t in texts])
    assert np.allclose(batched, single, atol=1e-4)
    assert np.allclose(embedder.embed(texts[::-1])[::-1], batched, atol=1e-4)


def test_chunking_covers_every_row(minilm_files: dict[str, str]) -> None:
    e = OnnxEmbedder(**minilm_files, batch_size=2)
    e.load()
    texts = [f"sentence number {i}" for i in range(5)]
    assert np.allclose(e.embed(texts), np.vstack([e.embed([t]) for t in texts]), atol=1e-4)


def test_cls_pooling_without_normalisation_differs(minilm_files: dict[str, str], embedder: OnnxEmbedder) -> None:
    e = OnnxEmbedder(**minilm_files, pooling="cls", normalize=False)
    e.load()
    v = e.embed(["hello world"])[0]
    assert abs(float(np.linalg.norm(v)) - 1.0) > 1e-2
    assert not np.allclose(v / np.linalg.norm(v), embedder.embed(["hello world"])[0], atol=1e-3)


def test_wrong_graph_names_are_reported(minilm_files: dict[str, str]) -> None:
    e = OnnxEmbedder(**minilm_files, output_name="pooled_output")
    with pytest.raises(InvalidArgument, match="last_hidden_state"):
        e.load()
    e = OnnxEmbedder(**minilm_files, input_names={"input_ids": "ids"})
    with pytest.raises(InvalidArgument, match="input_ids"):
        e.load()


def test_health(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    embedder.health()
    with pytest.raises(FailedPrecondition):
        OnnxEmbedder(model_path="x", tokenizer_path="y").health()
