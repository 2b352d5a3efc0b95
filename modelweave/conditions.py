"""Evaluation of route conditions on envelope fields."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from modelweave.errors import FailedPrecondition
from modelweave.spec_base import Condition
from modelweave.v1 import messages_pb2 as pb

_MISSING = object()


def read_field(message: pb.Message, path: str) -> Any:
    """Reads a dotted path (``text.language``, ``metadata.key``, ``classification.scores``).

    Returns a sentinel-free value: ``None`` when a message part or map key is absent.
    """
    head, _, rest = path.partition(".")
    if head == "metadata":
        return message.metadata.get(rest)
    if head == "tensors":
        name, _, sub = rest.partition(".")
        if name not in message.tensors:
            return None
        value: Any = message.tensors[name]
        pieces = sub.split(".") if sub else []
    else:
        if not message.HasField(head):
            return None
        value = getattr(message, head)
        pieces = rest.split(".") if rest else []
    for piece in pieces:
        value = getattr(value, piece, _MISSING)
        if value is _MISSING:
            return None
    return value


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def evaluate(cond: Condition, message: pb.Message, threshold: float | None = None) -> bool:
    """Tests one condition; ``threshold`` replaces ``value`` for adaptive conditions.

    Raises:
        FailedPrecondition: the field's value cannot be compared as the rule asks (a tensor
            field of another type than the rule's value; the checker refuses the static cases).
    """
    try:
        return _evaluate(cond, message, threshold)
    except TypeError as exc:
        raise FailedPrecondition(f"route condition {cond.field!r} {cond.op} cannot compare this "
                                 f"request's value: {exc}") from None


def _evaluate(cond: Condition, message: pb.Message, threshold: float | None) -> bool:
    actual = read_field(message, cond.field)
    if cond.op == "exists":
        present = actual is not None and actual != "" and actual != 0
        return present if cond.value is None else present == bool(cond.value)
    expected: Any = threshold if cond.value_from is not None else cond.value
    if actual is None:
        return cond.op in ("ne", "not_in")
    op = cond.op
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "not_in":
        return actual not in expected
    if op == "matches":
        return _regex(str(expected)).search(str(actual)) is not None
    if op == "lt":
        return bool(actual < expected)
    if op == "le":
        return bool(actual <= expected)
    if op == "gt":
        return bool(actual > expected)
    return bool(actual >= expected)  # ge
