"""The model adapter contract: plain classes, no Ray, configured from the graph file.

An adapter wraps one model. modelweave's generic wrappers turn it into a Ray Serve
deployment (``deployments/model.py``), an in-process node for tests
(``modelweave.local``) or a Ray Data callable class, so the adapter itself never
imports ``ray``.

Lifecycle: ``__init__(**params)`` only validates and stores parameters (cheap, done
by ``modelweave check``); ``load()`` reads weights; ``predict(batch)`` answers a batch of
envelopes with one produced part each; ``health()`` raises when the model cannot serve.
"""

from __future__ import annotations

import importlib
import inspect
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from google.protobuf.message import Message as ProtoMessage
from pydantic import BaseModel, ConfigDict, ValidationError

from modelweave.errors import GraphSpecError
from modelweave.messages import part_name
from modelweave.v1 import messages_pb2 as pb


class NoParams(BaseModel):
    """Parameters of an adapter that takes none."""

    model_config = ConfigDict(extra="forbid")


class ModelAdapter:
    """Base class of every model adapter.

    Subclasses set ``consumes``/``produces`` (part type names, see
    :mod:`modelweave.messages`) and ``Params`` (a pydantic model of their
    parameters), and implement :meth:`load` and :meth:`predict`.

    Attributes:
        consumes: Part types the model reads from the envelope.
        produces: The one part type the model writes.
        blocking: True when ``predict`` does real CPU work and must run off the
            event loop; rule-based glue sets False to skip the thread hop.
        idempotent: True when calling ``predict`` twice on the same input is harmless
            (pure models), so a call whose replica died may be retried on another one.
            Adapters with side effects (e.g. calling an external paid service) say False.
        Params: Pydantic model validating the node's ``params``.
    """

    consumes: ClassVar[tuple[str, ...]] = ("Text",)
    produces: ClassVar[str] = "Text"
    blocking: ClassVar[bool] = True
    idempotent: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, **params: Any) -> None:
        self.params = self.validate_params(params)

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> Any:
        """Validates raw parameters against ``Params``.

        Raises:
            GraphSpecError: naming the offending parameter.
        """
        try:
            return cls.Params.model_validate(dict(params))
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise GraphSpecError(f"{cls.__name__}: {problems}") from None

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        """Returns ``(consumes, produces)`` for these parameters (override when they vary)."""
        return cls.consumes, cls.produces

    @classmethod
    def is_idempotent(cls, params: Mapping[str, Any]) -> bool:
        """Whether a call may be retried for these parameters (override when they decide)."""
        return cls.idempotent

    def load(self) -> None:
        """Loads weights and other heavy state. Called once per replica / actor."""

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        """Answers a batch of envelopes with one produced part each, in order."""
        raise NotImplementedError

    def health(self) -> None:
        """Raises an exception when the model cannot serve."""

    def tensor_name(self) -> str:
        """Key used in ``Message.tensors`` when this adapter produces a ``Tensor``."""
        return "output"


def predict_measured(adapter: ModelAdapter, batch: Sequence[pb.Message]) -> tuple[list[ProtoMessage], float]:
    """Runs ``adapter.predict`` and returns its outputs and CPU milliseconds per item.

    CPU time is that of the calling thread (``time.thread_time``), so concurrent
    requests in other threads are not counted; work a library spreads over its own
    thread pool is not counted either (pin such models to one intra-op thread when
    measuring compute). An adapter that runs its model in another process
    (:class:`modelweave.process_isolation.ProcessAdapter`) reports that process's CPU through
    ``predict_with_cpu(batch) -> (outputs, total CPU ms)``.
    """
    elsewhere = getattr(adapter, "predict_with_cpu", None)
    if elsewhere is not None:  # it runs the model in another process, which measures its CPU
        outputs, total_ms = elsewhere(batch)
        return list(outputs), total_ms / max(1, len(batch))
    start = time.thread_time()
    outputs = list(adapter.predict(batch))
    cpu_ms = (time.thread_time() - start) * 1000.0 / max(1, len(batch))
    return outputs, cpu_ms


class CallableParams(BaseModel):
    """Parameters of :class:`CallableAdapter`."""

    model_config = ConfigDict(extra="forbid")

    function: str
    consumes: list[str] = ["Text"]
    produces: str = "Text"
    batched: bool = False
    blocking: bool = False
    kwargs: dict[str, Any] = {}


class CallableAdapter(ModelAdapter):
    """Wraps a plain Python function (rules and glue) as a model.

    The function takes one envelope (or, with ``batched: true``, a list) plus
    ``kwargs`` and returns the produced part (or a list of parts).
    """

    Params = CallableParams

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        p = cls.validate_params(params)
        return tuple(part_name(c) for c in p.consumes), part_name(p.produces)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._fn: Callable[..., Any] = import_object(self.params.function)
        self.blocking = self.params.blocking  # type: ignore[misc]

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        if self.params.batched:
            return list(self._fn(list(batch), **self.params.kwargs))
        return [self._fn(m, **self.params.kwargs) for m in batch]


def import_object(path: str) -> Any:
    """Imports ``"package.module:attr"`` (or ``"package.module.attr"``).

    Raises:
        GraphSpecError: when the module or attribute does not exist.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise GraphSpecError(f"import path {path!r} must look like 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphSpecError(f"cannot import module {module_name!r} for {path!r}: {exc}") from None
    except Exception as exc:  # the module itself fails (a syntax error, a relative name, its own code)
        raise GraphSpecError(f"cannot import module {module_name!r} for {path!r}: "
                             f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for piece in attr.split("."):
        try:
            obj = getattr(obj, piece)
        except AttributeError:
            raise GraphSpecError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def resolve_adapter(impl: str, params: Mapping[str, Any]) -> tuple[type[ModelAdapter], dict[str, Any]]:
    """Maps a model node's ``impl`` to an adapter class and its parameters.

    A plain function is wrapped in :class:`CallableAdapter` (its ``consumes`` /
    ``produces`` then come from ``params``).
    """
    obj = import_object(impl)
    if inspect.isclass(obj) and issubclass(obj, ModelAdapter):
        return obj, dict(params)
    if callable(obj) and not inspect.isclass(obj):
        return CallableAdapter, {**params, "function": impl}
    raise GraphSpecError(f"{impl!r} is neither a ModelAdapter subclass nor a function")


def build_adapter(impl: str, params: Mapping[str, Any]) -> ModelAdapter:
    """Instantiates (but does not load) the adapter for a model node."""
    cls, merged = resolve_adapter(impl, params)
    return cls(**merged)


def load_shared(nodes: Iterable[tuple[str, str, Mapping[str, Any]]], *,
                factory: Callable[..., ModelAdapter] | None = None) -> dict[str, ModelAdapter]:
    """Builds and loads one adapter per distinct ``(impl, params)``; returns it per node name.

    Nodes with the same model and params share one loaded copy (one set of weights in the
    process): adapters already serve concurrent calls, so sharing adds no new concurrency.

    Args:
        nodes: ``(name, impl, params)`` of each model node to load.
        factory: Builds the adapter from ``(impl, params, name=...)`` instead of
            :func:`build_adapter` (e.g. :class:`modelweave.process_isolation.ProcessAdapter`).
    """
    loaded: dict[str, ModelAdapter] = {}
    by_name: dict[str, ModelAdapter] = {}
    for name, impl, params in nodes:
        key = json.dumps([impl, dict(params)], sort_keys=True, default=str)
        if key not in loaded:
            loaded[key] = build_adapter(impl, params) if factory is None else factory(impl, params, name=name)
            loaded[key].load()
        by_name[name] = loaded[key]
    return by_name
