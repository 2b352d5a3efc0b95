"""Aggregation strategies for ``parallel`` nodes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from google.protobuf.message import Message as ProtoMessage

from modelweave.adapters.base import import_object
from modelweave.errors import ModelError
from modelweave.messages import clone, copy_parts, part_name, set_part
from modelweave.spec import AggregateSpec
from modelweave.v1 import messages_pb2 as pb


def aggregate(spec: AggregateSpec, base: pb.Message, results: Sequence[pb.Message | None],
              weights: Sequence[float], *, writes: Sequence[frozenset[str]] | None = None,
              ) -> tuple[pb.Message, str]:
    """Combines branch results into one envelope.

    Args:
        spec: The node's aggregate settings.
        base: The envelope that entered the parallel node.
        results: One envelope per branch, ``None`` for a failed branch.
        weights: One weight per branch.
        writes: For ``merge``: the part types each branch writes (from the checker; disjoint).

    Returns:
        The combined envelope and a short detail for the trace.
    """
    ok = [(r, w, i) for i, (r, w) in enumerate(zip(results, weights, strict=True)) if r is not None]
    if spec.strategy == "first_valid":
        for r, _, i in ok:
            if not r.HasField("verdict") or r.verdict.passed:
                return clone(r), f"first_valid: branch {i}"
        raise ModelError("first_valid: no branch produced a valid result")
    out = clone(base)
    if spec.strategy == "merge":
        if writes is None or len(writes) != len(results) or len(ok) != len(results):
            raise ModelError("merge: needs every branch's result and the part types it writes")
        for (r, _, _), parts in zip(ok, writes, strict=True):
            copy_parts(r, out, sorted(parts))
        merged = sorted(p for parts in writes for p in parts)
        return out, f"merge: {', '.join(merged) or 'nothing'}"
    if spec.strategy == "vote":
        part = _vote([(r.classification, w) for r, w, _ in ok])
        set_part(out, part)
        return out, f"vote: {part.label} ({part.confidence:.2f})"
    if spec.strategy == "mean":
        part = _mean([(r.classification, w) for r, w, _ in ok])
        set_part(out, part)
        return out, f"mean: {part.label} ({part.confidence:.2f})"
    if spec.strategy == "concat":
        gens = [r.generation for r, _, _ in ok]
        merged = pb.Generation(
            text=spec.separator.join(g.text for g in gens if g.text),
            source=",".join(g.source for g in gens if g.source),
            score=min((g.score for g in gens), default=0.0),
        )
        set_part(out, merged)
        return out, f"concat: {len(gens)} parts"
    fn = import_object(spec.function or "")
    try:
        part = fn([r for r, _, _ in ok])
    except Exception as exc:  # user code: surface as a typed error
        raise ModelError(f"aggregate function {spec.function} failed: {type(exc).__name__}: {exc}") from exc
    expected = part_name(spec.produces or "")
    if not isinstance(part, ProtoMessage) or part.DESCRIPTOR.name != expected:
        got = part.DESCRIPTOR.full_name if isinstance(part, ProtoMessage) else type(part).__name__
        raise ModelError(f"aggregate function {spec.function} returned {got}, declared {expected}")
    set_part(out, part)
    return out, f"custom: {spec.function}"


def _vote(items: list[tuple[pb.Classification, float]]) -> pb.Classification:
    votes: dict[str, float] = defaultdict(float)
    confidence: dict[str, float] = defaultdict(float)
    for c, w in items:
        votes[c.label] += w
        confidence[c.label] += w * c.confidence
    total = sum(votes.values()) or 1.0
    # Ties on vote weight are broken by the summed confidence of the voters.
    label = max(votes, key=lambda k: (votes[k], confidence[k]))
    scores = [pb.LabelScore(label=k, score=v / total) for k, v in sorted(votes.items())]
    return pb.Classification(label=label, confidence=votes[label] / total, scores=scores, model="vote")


def _mean(items: list[tuple[pb.Classification, float]]) -> pb.Classification:
    sums: dict[str, float] = defaultdict(float)
    total_w = sum(w for _, w in items) or 1.0
    for c, w in items:
        dist = {s.label: s.score for s in c.scores} or {c.label: c.confidence}
        for label, score in dist.items():
            sums[label] += w * score
    mean = {k: v / total_w for k, v in sums.items()}
    label = max(mean, key=lambda k: mean[k])
    scores = [pb.LabelScore(label=k, score=v) for k, v in sorted(mean.items())]
    return pb.Classification(label=label, confidence=mean[label], scores=scores, model="mean")
