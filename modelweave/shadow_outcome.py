"""What one mirrored run of a ``shadow`` node found, and its JSONL record.

Shared by the node (:mod:`modelweave.nodes.shadow`), the metrics
(:meth:`modelweave.observe.TraceMetrics.record_shadow`) and the report that
``modelweave eval --shadow-log`` prints (:mod:`modelweave.shadow_report`).
"""

from __future__ import annotations

import base64
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage

from modelweave.conditions import read_field
from modelweave.v1 import messages_pb2 as pb

#: compared: both answered; error: the candidate failed; shed: not mirrored (queue full);
#: primary_failed: the primary failed, so there was nothing to compare with.
OutcomeResult = Literal["compared", "error", "shed", "primary_failed"]


@dataclass(frozen=True)
class FieldComparison:
    """One compared envelope field."""

    field: str
    primary: Any
    candidate: Any
    equal: bool
    #: candidate - primary, for numbers; None otherwise.
    delta: float | None = None


@dataclass(frozen=True)
class ShadowOutcome:
    """One candidate's mirrored run of one request."""

    graph: str
    node: str
    candidate: str
    request_id: str
    #: Unix time the request was mirrored.
    time: float
    result: OutcomeResult
    compare: tuple[str, ...]
    fields: tuple[FieldComparison, ...] = ()
    primary_ms: float | None = None
    candidate_ms: float | None = None
    error: str = ""
    primary_error: str = ""

    def record(self) -> dict[str, Any]:
        """The sink's JSON record."""
        return {
            "request_id": self.request_id, "time": round(self.time, 6), "graph": self.graph, "node": self.node,
            "candidate": self.candidate, "result": self.result,
            "fields": {f.field: {"primary": f.primary, "candidate": f.candidate, "equal": f.equal, "delta": f.delta}
                       for f in self.fields},
            "primary_ms": _ms(self.primary_ms), "candidate_ms": _ms(self.candidate_ms),
            "error": self.error, "primary_error": self.primary_error,
        }


@dataclass(frozen=True)
class Snapshot:
    """The compared fields of one side's output as plain values, taken when it finished.

    Only values are kept, never the envelope: later nodes keep writing into it in place,
    and a mirror must not hold a request's data longer than needed.
    """

    values: dict[str, Any]
    ms: float
    error: str = ""


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def plain(value: Any) -> Any:
    """A protobuf value as JSON-ready data (messages as their JSON mapping, repeated fields as lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, ProtoMessage):
        return MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return [plain(v) for v in value]


def snapshot(message: pb.Message, fields: Sequence[str], ms: float) -> Snapshot:
    """Reads ``fields`` of ``message`` as plain values."""
    return Snapshot({name: plain(read_field(message, name)) for name in fields}, ms)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare_fields(primary: Snapshot, candidate: Snapshot, fields: Sequence[str],
                   tolerance: float = 0.0) -> tuple[FieldComparison, ...]:
    """Field-by-field agreement; numbers agree within ``tolerance`` and report their delta."""
    out = []
    for name in fields:
        a, b = primary.values.get(name), candidate.values.get(name)
        if a is not None and b is not None and _number(a) and _number(b):
            delta = float(b) - float(a)
            if math.isnan(delta):
                out.append(FieldComparison(name, a, b, False, None))
            else:
                out.append(FieldComparison(name, a, b, abs(delta) <= tolerance, round(delta, 9)))
        else:
            out.append(FieldComparison(name, a, b, a == b))
    return tuple(out)


def sink_path(sink: str) -> pathlib.Path:
    """The file a ``sink:`` value names (``~`` and ``$VARS`` expanded)."""
    return pathlib.Path(os.path.expandvars(sink)).expanduser()


#: Open sink files by path: one descriptor per file for the process's life, like a log handler
#: (opening per record cost ~0.1 ms on a loaded machine, the biggest part of a mirror's CPU).
_SINK_FDS: dict[str, int] = {}


def write_record(sink: str, record: dict[str, Any]) -> None:
    """Appends one JSON line to the sink file.

    One ``write`` on an ``O_APPEND`` descriptor per record, so processes sharing a file
    (replicas, batch workers on one machine) never interleave inside a line. The file stays
    open: rotate it by copy-and-truncate.
    """
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
    fd = _SINK_FDS.get(sink)
    if fd is None:
        path = sink_path(sink)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _SINK_FDS.setdefault(sink, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(fd, line)
