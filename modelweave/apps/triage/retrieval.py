"""Answering stages of the triage app: embed, retrieve a chatterbot answer, validate it.

The retriever ranks the chatterbot answers for the question and returns the
candidate for the current attempt, so a validate/retry loop walks down the
ranking: attempt 1 gets the best answer, attempt 2 the second best, and so on.
The grounding validator accepts an answer when its cosine similarity to the
question reaches a threshold calibrated on the validation split (and it is not
profane).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from cachetools import LRUCache
from pydantic import Field

from modelweave.adapters.base import ModelAdapter
from modelweave.adapters.onnx import OnnxEmbedder, OnnxEmbedderParams
from modelweave.apps.triage import artifacts as art
from modelweave.errors import FailedPrecondition, InvalidArgument
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    import numpy as np


class MiniLMEmbedderParams(OnnxEmbedderParams):
    """:class:`~modelweave.adapters.onnx.OnnxEmbedderParams` defaulting to int8 MiniLM."""

    model_path: str = art.ONNX_MODEL
    tokenizer_path: str = art.TOKENIZER
    model_name: str = art.EMBEDDING_MODEL


class MiniLMEmbedder(OnnxEmbedder):
    """Text -> Embedding (384-d, L2-normalised) with all-MiniLM-L6-v2 int8 on ONNX Runtime."""

    Params = MiniLMEmbedderParams


def attempt_index(envelope: pb.Message) -> int:
    """0-based candidate index from ``metadata["attempt"]`` (1-based string; default 1)."""
    raw = envelope.metadata.get("attempt", "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidArgument(f"metadata.attempt must be a positive integer, got {raw!r}")
    return int(raw) - 1


class RetrieverParams(art.TriageParams):
    """Parameters of :class:`AnswerRetriever`.

    Attributes:
        input: Read the question vector from the ``Embedding`` part (produced by
            :class:`MiniLMEmbedder`) or embed ``Text`` here.
        match: Rank answers by similarity to the answer text (``answer``, the
            default: R@1 .30 on held-out test questions), to the corpus questions
            they reply to (``question``) or the larger of both (``both``: near
            perfect when users ask the corpus questions verbatim, but only .14 R@1
            on unseen questions, which pull in answers of look-alike questions).
        max_candidates: Attempts beyond this get an empty ``Generation``, which the
            validator rejects.
        threads: ONNX Runtime threads (``input: Text`` only).
    """

    input: Literal["Embedding", "Text"] = "Embedding"
    match: Literal["answer", "question", "both"] = "answer"
    max_candidates: int = Field(default=5, ge=1, le=100)
    threads: int | None = Field(default=None, ge=1)


class AnswerRetriever(ModelAdapter):
    """Embedding (or Text) -> Generation: the k-th nearest chatterbot answer, k = attempt."""

    consumes = ("Embedding",)
    produces = "Generation"
    Params = RetrieverParams

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        """Consumes what ``input`` names."""
        return (cls.validate_params(params).input,), cls.produces

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._embedder: OnnxEmbedder | None = None
        self.answers: list[dict[str, Any]] = []
        self._answer_vecs: Any = None
        self._question_vecs: Any = None
        self._pair_question: Any = None
        self._pair_starts: Any = None

    def load(self) -> None:
        """Loads the answer index (and the encoder for ``input: Text``)."""
        import numpy as np

        arts = art.Artifacts(self.params.data_dir)
        index = json.loads(arts.path(art.QA_INDEX).read_text(encoding="utf-8"))
        self.answers = index["answers"]
        self._answer_vecs = np.load(arts.path(art.QA_ANSWER_VECTORS))
        self._question_vecs = np.load(arts.path(art.QA_QUESTION_VECTORS))
        # (question, answer) pairs sorted by answer, so a per-answer max over its
        # questions is one np.maximum.reduceat over contiguous runs.
        pairs = sorted((a, q) for q, entry in enumerate(index["questions"]) for a in entry["answers"])
        answer_of = np.array([a for a, _ in pairs], dtype=np.int64)
        self._pair_question = np.array([q for _, q in pairs], dtype=np.int64)
        self._pair_starts = np.flatnonzero(np.r_[True, answer_of[1:] != answer_of[:-1]])
        if len(self._pair_starts) != len(self.answers):
            raise FailedPrecondition("qa_index.json: some answer has no question")
        if self.params.input == "Text":
            self._embedder = art.minilm_embedder(self.params.threads)
            self._embedder.load()

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Similarity of each query vector to each answer, ``[n_queries, n_answers]``."""
        import numpy as np

        if self._answer_vecs is None:
            raise FailedPrecondition("AnswerRetriever used before load()")
        by_answer = queries @ self._answer_vecs.T
        if self.params.match == "answer":
            return by_answer
        per_pair = (queries @ self._question_vecs.T)[:, self._pair_question]
        by_question = np.maximum.reduceat(per_pair, self._pair_starts, axis=1)
        return by_question if self.params.match == "question" else np.maximum(by_answer, by_question)

    def _queries(self, batch: Sequence[pb.Message]) -> np.ndarray:
        import numpy as np

        if self._embedder is not None:
            return self._embedder.embed([m.text.content for m in batch])
        for m in batch:
            if m.embedding.model and m.embedding.model != art.EMBEDDING_MODEL:
                raise InvalidArgument(
                    f"AnswerRetriever: embedding from {m.embedding.model!r}, expected {art.EMBEDDING_MODEL!r}"
                )
            if len(m.embedding.values) != self._answer_vecs.shape[1]:
                raise InvalidArgument(f"AnswerRetriever: embedding has {len(m.embedding.values)} values")
        return np.array([m.embedding.values for m in batch], dtype=np.float32)

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Generation]:
        """Returns, per envelope, the candidate at rank ``attempt - 1``."""
        import numpy as np

        if not batch:
            return []
        ks = [attempt_index(m) for m in batch]
        scores = self.scores(self._queries(batch))
        out = []
        for row, k in zip(scores, ks, strict=True):
            if k >= min(self.params.max_candidates, len(row)):
                out.append(pb.Generation(text="", source="", score=0.0, candidate=k))
                continue
            # argsort is stable with kind="stable": equal scores keep corpus order.
            i = int(np.argsort(-row, kind="stable")[k])
            answer = self.answers[i]
            score = float(min(max(row[i], 0.0), 1.0))
            out.append(pb.Generation(text=answer["text"], source=answer["id"], score=score, candidate=k))
        return out


#: Profanity scores remembered per answer text. Scoring one answer costs ~4 ms of CPU that holds
#: the GIL (TF-IDF plus five calibrated SVMs through scikit-learn's checks): 14 % of the reference
#: ingress's GIL time under load, spent re-scoring the same few corpus answers on every request.
PROFANITY_MEMO_ENTRIES = 4096


class GroundingParams(art.TriageParams):
    """Parameters of :class:`GroundingValidator`.

    Attributes:
        question: Where the question vector comes from: the ``Embedding`` part an
            earlier :class:`MiniLMEmbedder` node wrote (the default: the question is
            embedded once per request, not again on every validation attempt) or
            ``Text`` (embedded here, for graphs without an embed node).
        answers: Where answer vectors come from: ``embed`` (default) embeds each
            ``Generation.text``; ``index`` looks answers of the retriever's corpus up
            by ``Generation.source`` in the vectors ``prepare()`` stored (no encoder
            run for them; the calibration used those same vectors, but a verdict within
            ~1e-3 of the threshold may differ from ``embed``). Answers not in the index
            are embedded either way.
        threshold: Override of the calibrated question/answer cosine threshold.
        profanity_threshold: Reject answers whose alt-profanity-check probability
            reaches this; None skips the check.
        threads: ONNX Runtime threads.
    """

    question: Literal["Embedding", "Text"] = "Embedding"
    answers: Literal["embed", "index"] = "embed"
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    profanity_threshold: float | None = Field(default=0.5, ge=0.0, le=1.0)
    threads: int | None = Field(default=None, ge=1)


class GroundingValidator(ModelAdapter):
    """Embedding (or Text) + Generation -> Verdict: is the answer on topic (cosine) and clean?"""

    consumes = ("Embedding", "Generation")
    produces = "Verdict"
    Params = GroundingParams

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        """Consumes what ``question`` names, plus the ``Generation`` to judge."""
        return (cls.validate_params(params).question, "Generation"), cls.produces

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._embedder: OnnxEmbedder | None = None
        self._profanity: Any = None
        self._answer_row: dict[tuple[str, str], int] = {}
        self._answer_vecs: Any = None
        self.threshold = 0.0
        # The score is a pure function of the text, so a remembered one is exact. Inline models
        # may run in several threads; cachetools' caches are not thread-safe on their own.
        self._profane_memo: LRUCache[str, float] = LRUCache(maxsize=PROFANITY_MEMO_ENTRIES)
        self._memo_lock = threading.Lock()

    def load(self) -> None:
        """Loads the encoder, the calibrated threshold and the profanity model."""
        arts = art.Artifacts(self.params.data_dir)
        t = self.params.threshold
        self.threshold = t if t is not None else arts.calibration("grounding_threshold")
        self._embedder = art.minilm_embedder(self.params.threads)
        self._embedder.load()
        if self.params.answers == "index":
            import numpy as np

            index = json.loads(arts.path(art.QA_INDEX).read_text(encoding="utf-8"))
            # Keyed by (id, text): a Generation that names a corpus answer but says something
            # else is embedded, never judged by the stored vector.
            self._answer_row = {(a["id"], a["text"]): i for i, a in enumerate(index["answers"])}
            self._answer_vecs = np.load(arts.path(art.QA_ANSWER_VECTORS))
        if self.params.profanity_threshold is not None:
            import profanity_check

            self._profanity = profanity_check

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Verdict]:
        """Judges each envelope's ``Generation.text`` against its ``Text.content``."""
        if self._embedder is None:
            raise FailedPrecondition("GroundingValidator.predict called before load()")
        if not batch:
            return []
        answers = [m.generation.text for m in batch]
        q = self._question_vectors(batch, self._embedder)
        a = self._answer_vectors(batch, self._embedder)
        similarity = (q * a).sum(axis=1)
        profane = self._profanity_scores(answers) if self._profanity is not None else [0.0] * len(batch)
        out = []
        for answer, sim, prof in zip(answers, similarity.tolist(), profane, strict=True):
            reasons = []
            if not answer.strip():
                reasons.append("no answer (candidates exhausted)")
            elif sim < self.threshold:
                reasons.append(f"answer not grounded in the question: similarity {sim:.2f} < {self.threshold:.2f}")
            limit = self.params.profanity_threshold
            if answer.strip() and limit is not None and float(prof) >= limit:
                reasons.append(f"answer is profane: score {float(prof):.2f} >= {limit:.2f}")
            out.append(
                pb.Verdict(
                    passed=not reasons,
                    score=float(min(max(sim, 0.0), 1.0)),
                    reason="; ".join(reasons),
                    validator="grounding",
                )
            )
        return out

    def _profanity_scores(self, answers: Sequence[str]) -> list[float]:
        """alt-profanity-check's probability per answer; only texts not seen recently are scored."""
        distinct = set(answers)
        with self._memo_lock:
            known = {a: s for a in distinct if (s := self._profane_memo.get(a)) is not None}
        missing = sorted(distinct - known.keys())
        if missing:
            fresh = dict(zip(missing, (float(p) for p in self._profanity.predict_prob(missing)), strict=True))
            with self._memo_lock:
                for answer, score in fresh.items():
                    self._profane_memo[answer] = score
            known.update(fresh)
        return [known[a] for a in answers]

    def _question_vectors(self, batch: Sequence[pb.Message], embedder: OnnxEmbedder) -> np.ndarray:
        """The question vectors: the envelopes' ``Embedding`` parts, or ``Text`` embedded here."""
        import numpy as np

        if self.params.question == "Text":
            return embedder.embed([m.text.content for m in batch])
        for m in batch:
            # Only the same encoder's vectors are comparable with the answers embedded here.
            if m.embedding.model and m.embedding.model != embedder.model_name:
                raise InvalidArgument(
                    f"GroundingValidator: embedding from {m.embedding.model!r}, expected {embedder.model_name!r}"
                )
            if len(m.embedding.values) != embedder.dim:
                raise InvalidArgument(
                    f"GroundingValidator: embedding has {len(m.embedding.values)} values, expected {embedder.dim}"
                )
        return np.array([m.embedding.values for m in batch], dtype=np.float32)

    def _answer_vectors(self, batch: Sequence[pb.Message], embedder: OnnxEmbedder) -> np.ndarray:
        """The answer vectors: looked up in the corpus index (``answers: index``) or embedded."""
        rows = [self._answer_row.get((m.generation.source, m.generation.text), -1) for m in batch]
        missing = [i for i, row in enumerate(rows) if row < 0]
        if len(missing) == len(batch):
            return embedder.embed([m.generation.text or " " for m in batch])
        vectors = self._answer_vecs[[max(row, 0) for row in rows]].astype("float32", copy=True)
        if missing:
            vectors[missing] = embedder.embed([batch[i].generation.text or " " for i in missing])
        return vectors
