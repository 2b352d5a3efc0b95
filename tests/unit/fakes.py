"""Small, real model adapters and graph-building helpers for the core unit tests.

Graphs refer to these adapters by import path (``fakes:Label``); ``conftest.py`` puts
this directory on ``sys.path`` so the checker and ``LocalCaller`` can import them.
Every adapter records the envelopes it saw (``seen``), so tests can count calls and
inspect exactly what a node was given.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from google.protobuf.message import Message as ProtoMessage
from pydantic import BaseModel, ConfigDict

from modelweave.adapters.base import ModelAdapter
from modelweave.checker import check_graph
from modelweave.errors import Unavailable
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.messages import PART_CLASSES, clone, part_name
from modelweave.spec import parse_graph
from modelweave.v1 import messages_pb2 as pb

MODULE = "fakes"


def impl(name: str) -> str:
    """Import path of an adapter (or function) defined in this module."""
    return f"{MODULE}:{name}"


# -- adapters ----------------------------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Recording(ModelAdapter):
    """Records a copy of every envelope it is asked about."""

    blocking: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.seen: list[pb.Message] = []
        self.loaded = False

    def load(self) -> None:
        self.loaded = True

    @property
    def calls(self) -> int:
        return len(self.seen)

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        out = []
        for m in batch:
            self.seen.append(clone(m))
            out.append(self.answer(m))
        return out

    def answer(self, message: pb.Message) -> ProtoMessage:
        raise NotImplementedError


class LabelParams(_Params):
    label: str = "positive"
    confidence: float = 0.9
    scores: dict[str, float] = {}


class Label(_Recording):
    """Text -> Classification with a fixed label / confidence / distribution."""

    consumes = ("Text",)
    produces = "Classification"
    Params = LabelParams

    def answer(self, message: pb.Message) -> pb.Classification:
        p = self.params
        return pb.Classification(label=p.label, confidence=p.confidence, model=f"label:{p.label}",
                                 scores=[pb.LabelScore(label=k, score=v) for k, v in sorted(p.scores.items())])


class TypedParams(_Params):
    consumes: list[str] = ["Text"]
    produces: str = "Classification"


class Typed(_Recording):
    """Any signature (from params); answers an empty part of the produced type."""

    Params = TypedParams

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        p = cls.validate_params(params)
        return tuple(p.consumes), p.produces

    def answer(self, message: pb.Message) -> ProtoMessage:
        return PART_CLASSES[part_name(self.params.produces)]()


class TagParams(_Params):
    language: str | None = None
    suffix: str = ""


class Tag(_Recording):
    """Text -> Text: sets ``language`` and/or appends ``suffix`` to the content."""

    consumes = ("Text",)
    produces = "Text"
    Params = TagParams

    def answer(self, message: pb.Message) -> pb.Text:
        t = pb.Text()
        t.CopyFrom(message.text)
        if self.params.language is not None:
            t.language = self.params.language
        t.content += self.params.suffix
        return t


class LabelFromTextParams(_Params):
    confidence: float = 0.5


class LabelFromText(_Recording):
    """Text -> Classification whose label is the (whole) text content."""

    consumes = ("Text",)
    produces = "Classification"
    Params = LabelFromTextParams

    def answer(self, message: pb.Message) -> pb.Classification:
        return pb.Classification(label=message.text.content, confidence=self.params.confidence)


class FailParams(_Params):
    message: str = "boom"
    consumes: list[str] = ["Text"]
    produces: str = "Classification"
    typed: bool = False


class Fail(_Recording):
    """Always raises: a plain RuntimeError, or ``Unavailable`` with ``typed: true``."""

    Params = FailParams

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        p = cls.validate_params(params)
        return tuple(p.consumes), p.produces

    def answer(self, message: pb.Message) -> ProtoMessage:
        if self.params.typed:
            raise Unavailable(self.params.message)
        raise RuntimeError(self.params.message)


class SleepParams(_Params):
    seconds: float = 0.2
    label: str = "slow"
    fail: bool = False  # raise after the sleep


class Sleep(ModelAdapter):
    """Blocking Text -> Classification that sleeps first (runs in a worker thread).

    The sleep waits on ``release`` so a test can free an abandoned thread at once.
    """

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = True
    Params = SleepParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.release = threading.Event()
        self.started = 0
        self.finished = 0

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        self.started += 1
        self.release.wait(self.params.seconds)
        self.finished += 1
        if self.params.fail:
            raise RuntimeError("failed after the sleep")
        return [pb.Classification(label=self.params.label, confidence=1.0) for _ in batch]


class WrongPart(_Recording):
    """Declares Classification but returns a Text."""

    consumes = ("Text",)
    produces = "Classification"

    def answer(self, message: pb.Message) -> ProtoMessage:
        return pb.Text(content="not a classification")


class NotAMessage(_Recording):
    """Declares Classification but returns a plain dict."""

    consumes = ("Text",)
    produces = "Classification"

    def answer(self, message: pb.Message) -> Any:
        return {"label": "positive"}


class TooMany(ModelAdapter):
    """Answers two parts for one input."""

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        return [pb.Classification(label="a"), pb.Classification(label="b")]


class GenParams(_Params):
    text: str = "generated"
    source: str = ""
    score: float = 0.5


class Gen(_Recording):
    """Text -> Generation with fixed text."""

    consumes = ("Text",)
    produces = "Generation"
    Params = GenParams

    def answer(self, message: pb.Message) -> pb.Generation:
        p = self.params
        return pb.Generation(text=p.text, source=p.source, score=p.score)


class ReplyParams(_Params):
    candidates: list[str] = ["first", "second", "third"]


class Reply(_Recording):
    """Text -> Generation: candidate N-1 on attempt N (from ``metadata.attempt``)."""

    consumes = ("Text",)
    produces = "Generation"
    Params = ReplyParams

    def answer(self, message: pb.Message) -> pb.Generation:
        cands = self.params.candidates
        index = min(int(message.metadata.get("attempt", "1")) - 1, len(cands) - 1)
        return pb.Generation(text=cands[index], candidate=index, source=f"reply:{index}")


class RefineReply(_Recording):
    """Text -> Generation that fixes its answer when it sees the previous Verdict's reason."""

    consumes = ("Text",)
    produces = "Generation"

    def answer(self, message: pb.Message) -> pb.Generation:
        if message.HasField("verdict") and not message.verdict.passed:
            return pb.Generation(text=f"fixed: {message.verdict.reason}", candidate=1)
        return pb.Generation(text="draft", candidate=0)


class JudgeParams(_Params):
    require: str = "second"


class Judge(_Recording):
    """Generation -> Verdict: passes when the generated text contains ``require``."""

    consumes = ("Generation",)
    produces = "Verdict"
    Params = JudgeParams

    def answer(self, message: pb.Message) -> pb.Verdict:
        ok = self.params.require in message.generation.text
        return pb.Verdict(passed=ok, score=1.0 if ok else 0.0, validator="judge",
                          reason="" if ok else f"missing {self.params.require!r}")


class BagEmbed(_Recording):
    """Text -> Embedding: a bag of lower-cased words hashed into 64 dims (same words, same vector)."""

    consumes = ("Text",)
    produces = "Embedding"

    def answer(self, message: pb.Message) -> pb.Embedding:
        import zlib

        values = [0.0] * 64
        for word in message.text.content.lower().replace("'", " ").split():
            values[zlib.crc32(word.strip(".,!?").encode()) % 64] += 1.0
        return pb.Embedding(values=values, model="bag")


class NotAnAdapter:
    """A class that is not a ModelAdapter."""


# -- plain functions (callable impls and custom aggregates) ----------------------------------


def shout(message: pb.Message) -> pb.Text:
    """A function model: upper-cases the text."""
    return pb.Text(content=message.text.content.upper(), language=message.text.language)


def longest(results: Sequence[pb.Message]) -> pb.Generation:
    """Custom aggregate: the longest generation among the branches."""
    best = max(results, key=lambda r: len(r.generation.text))
    return pb.Generation(text=best.generation.text, source=f"longest-of-{len(results)}")


def label_count(results: Sequence[pb.Message]) -> pb.Generation:
    """Custom aggregate: joins branch labels (reads Classification)."""
    return pb.Generation(text="+".join(r.classification.label for r in results))


def broken_aggregate(results: Sequence[pb.Message]) -> pb.Generation:
    """Custom aggregate that raises."""
    raise ValueError("aggregate exploded")


def wrong_aggregate(results: Sequence[pb.Message]) -> pb.Text:
    """Custom aggregate that returns a different part type than it declares."""
    return pb.Text(content="oops")


NOT_CALLABLE = 42


# -- graph helpers -------------------------------------------------------------------------


def model(name: str, adapter: str, **params: Any) -> dict[str, Any]:
    """A model node dict using an adapter from this module."""
    node: dict[str, Any] = {"kind": "model", "name": name, "impl": impl(adapter)}
    if params:
        node["params"] = params
    return node


def graph(flow: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A graph dict named ``g`` around ``flow``."""
    return {"name": "g", "flow": flow, **extra}


def text(content: str = "hello world", **metadata: str) -> pb.Message:
    """An input envelope with a Text part."""
    return pb.Message(text=pb.Text(content=content), metadata=metadata)


def build(data: dict[str, Any], adapters: dict[str, ModelAdapter] | None = None,
          **executor_kw: Any) -> tuple[Executor, LocalCaller]:
    """Parses, checks and wires a graph dict to in-process adapters."""
    checked = check_graph(parse_graph(data))
    caller = LocalCaller(checked, adapters)
    return Executor(checked, caller, **executor_kw), caller


def spans_of(trace: pb.Trace, kind: str | None = None) -> list[pb.Span]:
    """Spans of one kind (all spans when ``kind`` is None)."""
    return [s for s in trace.spans if kind is None or s.kind == kind]
