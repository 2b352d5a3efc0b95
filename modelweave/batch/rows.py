"""The batch output row: result columns, a compact trace and the error of one graph run.

Pure functions over :class:`modelweave.executor.Result`, shared by the graph stage, the
tests (to summarise an in-process reference run the same way) and the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from modelweave.codecs import to_json_text
from modelweave.errors import InvalidArgument, ModelweaveError
from modelweave.executor import Result
from modelweave.v1 import messages_pb2 as pb

#: Columns added to every input row, in order, with their Arrow types (all nullable).
RESULT_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("label", pa.string()),
    ("confidence", pa.float32()),
    ("generation", pa.string()),
    ("verdict_passed", pa.bool_()),
    ("language", pa.string()),
    ("route", pa.string()),
    ("attempts", pa.int32()),
    ("verdict", pa.string()),
    ("cache_hit", pa.bool_()),
    ("latency_ms", pa.float64()),
    ("result_json", pa.string()),
    ("error", pa.string()),
)

#: Optional column with the full protobuf-JSON trace (``include_trace=True``).
TRACE_FIELD: tuple[str, pa.DataType] = ("trace_json", pa.string())


def route_of(trace: pb.Trace) -> str:
    """The routes taken, in trace order: ``"by-language=english>confidence=keep"``.

    Each segment is ``<node name>=<branch>`` for a span that records a branch (route
    nodes, and validate nodes that escalated). Empty when no route was taken (for
    example when a cache hit skipped the routed body).
    """
    return ">".join(_route_segment(span) for span in trace.spans if span.route)


def _route_segment(span: pb.Span) -> str:
    """``<node name>=<branch>`` of one span that records a branch."""
    return f"{span.node.rsplit('/', 1)[-1]}={span.route}"


def trace_columns(trace: pb.Trace) -> dict[str, Any]:
    """The compact trace: ``route``, ``attempts``, ``verdict``, ``cache_hit``, ``latency_ms``."""
    # One pass over the spans (every batch row pays for this): each access to a span of a
    # protobuf repeated field builds a new wrapper object.
    routes: list[str] = []
    attempts: int | None = None
    validate_verdict = any_verdict = ""
    cache_hit = False
    for span in trace.spans:
        if span.route:
            routes.append(_route_segment(span))
        if attempts is None or span.attempt > attempts:
            attempts = span.attempt
        verdict = span.verdict
        if verdict:
            any_verdict = verdict
            if span.kind == "validate":
                validate_verdict = verdict
        cache_hit = cache_hit or span.cache_hit
    return {
        "route": ">".join(routes),  # what route_of gives, in the same pass
        "attempts": 1 if attempts is None else attempts,
        "verdict": validate_verdict or any_verdict or None,
        "cache_hit": cache_hit,
        "latency_ms": trace.total_ms,
    }


def result_row(result: Result, *, include_trace: bool = False) -> dict[str, Any]:
    """Result columns and compact trace of a successful run (``error`` is None)."""
    msg = result.message
    has_cls = msg.HasField("classification")
    row: dict[str, Any] = {
        "label": msg.classification.label if has_cls else None,
        "confidence": msg.classification.confidence if has_cls else None,
        "generation": msg.generation.text if msg.HasField("generation") else None,
        "verdict_passed": msg.verdict.passed if msg.HasField("verdict") else None,
        "language": (msg.text.language or None) if msg.HasField("text") else None,
        **trace_columns(result.trace),
        "result_json": to_json_text(msg),
        "error": None,
    }
    if include_trace:
        row[TRACE_FIELD[0]] = to_json_text(result.trace)
    return row


def error_text(exc: BaseException) -> str:
    """``"CODE: message (node path)"`` for a failed row."""
    if isinstance(exc, ModelweaveError):
        return f"{exc.status.value}: {exc}"
    return f"INTERNAL: {type(exc).__name__}: {exc}"


def error_row(exc: BaseException, latency_ms: float, *, include_trace: bool = False) -> dict[str, Any]:
    """Columns of a failed row: ``error``, plus the compact trace of the hops before the failure.

    Result columns are None. When the executor attached a partial trace to the error,
    ``route``/``attempts``/``verdict``/``cache_hit`` describe how far the row got.
    """
    row: dict[str, Any] = {name: None for name, _ in RESULT_FIELDS}
    trace = getattr(exc, "trace", None)
    if isinstance(trace, pb.Trace):
        row.update(trace_columns(trace))
    row["error"] = error_text(exc)
    row["latency_ms"] = latency_ms
    if include_trace:
        row[TRACE_FIELD[0]] = to_json_text(trace) if isinstance(trace, pb.Trace) else None
    return row


def output_fields(*, prefix: str = "", include_trace: bool = False) -> list[tuple[str, str, pa.DataType]]:
    """``(row key, column name, type)`` of every added column."""
    fields = [*RESULT_FIELDS, TRACE_FIELD] if include_trace else list(RESULT_FIELDS)
    return [(name, f"{prefix}{name}", dtype) for name, dtype in fields]


def check_result_columns(names: Iterable[str], *, prefix: str = "", include_trace: bool = False) -> None:
    """Refuses input columns that have the name of a column the job adds.

    Raises:
        InvalidArgument: naming the colliding column(s) and the way out (``--prefix``).
    """
    added = {column for _, column, _ in output_fields(prefix=prefix, include_trace=include_trace)}
    clash = [name for name in names if name in added]
    if clash:
        raise InvalidArgument(f"input column(s) {', '.join(repr(c) for c in clash)} collide with the result "
                              "columns the job adds; pass --prefix (e.g. --prefix mw_; prefix= in Python)")


def append_columns(table: pa.Table, rows: list[dict[str, Any]], *, prefix: str = "",
                   include_trace: bool = False) -> pa.Table:
    """Adds the result columns of ``rows`` (one per table row) to ``table``.

    Raises:
        InvalidArgument: an input column already has the name of an added column.
    """
    check_result_columns(table.column_names, prefix=prefix, include_trace=include_trace)
    fields = output_fields(prefix=prefix, include_trace=include_trace)
    for key, column, dtype in fields:
        table = table.append_column(pa.field(column, dtype), pa.array([r[key] for r in rows], type=dtype))
    return table
