"""Semantic cache: reuse the answer of the most similar earlier input (pure numpy, no Ray).

A cache node with ``key: semantic`` keys on an embedding of its input instead of the exact
bytes. :class:`SemanticIndex` keeps the unit-normalised vectors of earlier inputs in one
float32 matrix; a lookup is one matrix-vector product (cosine similarity), a mask for expired
slots and a top-k selection. A near-hit (similarity >= ``threshold``) is served only if the
guard (:mod:`modelweave.semantic_guard`) agrees that the two *texts* say the same thing,
because embeddings put "cancel my order" closer to "don't cancel my order" than to many of its
paraphrases. The best candidate the guard refused is returned too, so callers can count
"near-hit rejected by guard" and log the reason.

Bounds: entries expire ``ttl_s`` after they were stored; past ``max_entries`` the expired
ones go first, then the least recently used. Methods are synchronous and hold a lock only
for in-memory work, so one event loop (the actor, an ingress replica) or a few threads can
share an index. Measured cost: see ``benchmarks/semantic_cache.py``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelweave.errors import InvalidArgument
from modelweave.semantic_guard import GuardVerdict, SemanticGuard

__all__ = ["Guard", "MemorySemanticCache", "SemanticCacheBackend", "SemanticHit", "SemanticIndex",
           "SemanticLookup"]

#: ``guard(query_text, cached_text) -> (ok, reason)``.
Guard = Callable[[str, str], GuardVerdict | tuple[bool, str]]

#: Candidates above the threshold that are offered to the guard, best first. More than one,
#: so a refused nearest neighbour ("cancel my order") does not hide an agreeing second one
#: ("please don't cancel my order") stored next to it.
DEFAULT_CANDIDATES = 4


@dataclass(frozen=True)
class SemanticHit:
    """A stored entry that matched a query.

    Attributes:
        value: The stored answer.
        text: The input it was stored for.
        score: Cosine similarity to the query.
        age_s: Seconds since it was stored.
    """

    value: bytes
    text: str
    score: float
    age_s: float


@dataclass(frozen=True)
class SemanticLookup:
    """Outcome of one lookup.

    Attributes:
        hit: The answer to serve, or ``None`` (a miss).
        rejected: The best near-hit (score >= threshold) the guard refused, if any.
        reason: The guard's reason for ``rejected``.
        best_score: Highest similarity among live entries (``-1.0`` when empty), for tuning.
    """

    hit: SemanticHit | None = None
    rejected: SemanticHit | None = None
    reason: str = ""
    best_score: float = -1.0


class SemanticCacheBackend(Protocol):
    """What a ``key: semantic`` cache node needs (in-process or shared through an actor)."""

    async def lookup(self, vector: Sequence[float] | np.ndarray, text: str) -> SemanticLookup:
        """Best guarded match of ``vector`` / ``text``; a miss when there is none or on an outage."""
        ...

    async def store(self, vector: Sequence[float] | np.ndarray, text: str, value: bytes) -> None:
        """Remembers ``value`` as the answer for ``vector`` / ``text``."""
        ...


#: float32 rounding leaves a unit vector's similarity to itself a little under 1.0: without
#: the tolerance, ``threshold: 1.0`` missed a quarter of exact repeats.
SCORE_TOLERANCE = 1e-5


def vector_key(vector: Sequence[float] | np.ndarray, text: str) -> str:
    """A key for one exact (text, vector) pair: the same text with another vector is another entry."""
    raw = np.asarray(vector, dtype=np.float32).tobytes()
    return f"{text}\0{hashlib.blake2b(raw, digest_size=12).hexdigest()}"


def unit_vector(vector: Sequence[float] | np.ndarray, dim: int | None = None) -> np.ndarray:
    """``vector`` as a unit-length float32 row; raises ``InvalidArgument`` naming ``embedding``."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.size == 0 or (dim is not None and v.size != dim):
        raise InvalidArgument(f"embedding: {v.size} values, expected {dim if dim is not None else '> 0'}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise InvalidArgument("embedding: zero or non-finite vector")
    return v / norm


class SemanticIndex:
    """In-process semantic cache: cosine top-k over a numpy matrix, with TTL, LRU and a guard.

    Args:
        threshold: Minimum cosine similarity of a hit, in (0, 1].
        ttl_s: Lifetime of an entry after it was stored.
        max_entries: Size bound; expired, then least recently used entries are evicted.
        guard: Text agreement check for near-hits; ``None`` = threshold only. Default: every
            rule of :class:`~modelweave.semantic_guard.SemanticGuard`.
        candidates: Near-hits offered to the guard per lookup, best first.
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, threshold: float = 0.9, ttl_s: float = 300.0, max_entries: int = 10_000, *,
                 guard: Guard | None | bool = True, candidates: int = DEFAULT_CANDIDATES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < threshold <= 1.0:
            raise InvalidArgument(f"threshold: {threshold} is not in (0, 1]")
        if ttl_s <= 0 or max_entries < 1 or candidates < 1:
            raise InvalidArgument("ttl_s, max_entries and candidates must be positive")
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.candidates = candidates
        self.guard: Guard | None = SemanticGuard() if guard is True else (guard or None)
        self._clock = clock
        self._lock = threading.Lock()
        self._dim: int | None = None
        self._vecs = np.zeros((0, 0), dtype=np.float32)  # grown by doubling up to max_entries rows
        self._expires = np.zeros(0, dtype=np.float64)  # -inf marks a free slot
        self._texts: list[str] = []
        self._values: list[bytes] = []
        self._lru: OrderedDict[int, None] = OrderedDict()  # live slots, least recently used first
        self._free: list[int] = []
        self._by_key: dict[str, int] = {}  # vector_key -> slot
        self._key_of: dict[int, str] = {}
        self.hits = 0
        self.misses = 0
        self.guard_rejections = 0

    def __len__(self) -> int:
        return len(self._lru)

    def search(self, vector: Sequence[float] | np.ndarray, text: str) -> SemanticLookup:
        """The best live entry with similarity >= threshold that the guard accepts."""
        now = self._clock()
        with self._lock:
            if self._dim is None or not self._lru:
                self.misses += 1
                return SemanticLookup()
            try:
                q = unit_vector(vector, self._dim)
            except InvalidArgument:  # a zero, non-finite or other-sized vector matches nothing
                self.misses += 1
                return SemanticLookup()
            n = len(self._texts)
            scores = self._vecs[:n] @ q
            # Free slots expire at -inf, so "expired or empty" is one comparison.
            scores[self._expires[:n] <= now] = -2.0
            k = min(self.candidates, n)
            top = np.argpartition(scores, n - k)[n - k:] if k < n else np.arange(n)
            top = top[np.argsort(-scores[top])]
            best = float(scores[top[0]])
            rejected: SemanticHit | None = None
            reason = ""
            for slot in top:
                score = float(scores[slot])
                if score < self.threshold - SCORE_TOLERANCE:
                    break
                age = now - (float(self._expires[slot]) - self.ttl_s)
                entry = SemanticHit(self._values[slot], self._texts[slot], score, age)
                if self.guard is not None:
                    ok, why = self.guard(text, entry.text)
                    if not ok:
                        if rejected is None:
                            rejected, reason = entry, why
                        continue
                self._lru.move_to_end(int(slot))
                self.hits += 1
                return SemanticLookup(entry, rejected, reason, best)
            self.misses += 1
            if rejected is not None:
                self.guard_rejections += 1
            return SemanticLookup(None, rejected, reason, max(best, -1.0))

    def lookup(self, vector: Sequence[float] | np.ndarray, text: str) -> SemanticHit | None:
        """The guarded best match, or ``None``; :meth:`search` also returns the rejected near-hit."""
        return self.search(vector, text).hit

    def store(self, vector: Sequence[float] | np.ndarray, text: str, value: bytes) -> None:
        """Stores ``value`` for ``text`` (replacing an entry for the same text and vector)."""
        now = self._clock()
        with self._lock:
            v = unit_vector(vector, self._dim)
            if self._dim is None:
                self._dim = int(v.size)
            key = vector_key(vector, text)
            slot = self._by_key.get(key)
            if slot is None:
                slot = self._take_slot(now)
                self._by_key[key] = slot
                self._key_of[slot] = key
            self._vecs[slot] = v
            self._expires[slot] = now + self.ttl_s
            self._texts[slot] = text
            self._values[slot] = value
            self._lru[slot] = None
            self._lru.move_to_end(slot)

    def clear(self) -> None:
        """Drops every entry (the dimension is kept)."""
        with self._lock:
            for slot in list(self._lru):
                self._release(slot)

    def _take_slot(self, now: float) -> int:
        if self._free:
            return self._free.pop()
        n = len(self._texts)
        if n < self.max_entries:
            if n == self._vecs.shape[0]:
                self._grow(min(self.max_entries, max(64, 2 * n)))
            self._texts.append("")
            self._values.append(b"")
            return n
        # Full: purge what expired (one vectorised pass), else evict the least recently used.
        expired = np.flatnonzero(self._expires[:n] <= now)
        for slot in expired:
            self._release(int(slot))
        if self._free:
            return self._free.pop()
        oldest = next(iter(self._lru))
        self._release(oldest)
        return self._free.pop()

    def _release(self, slot: int) -> None:
        self._lru.pop(slot, None)
        key = self._key_of.pop(slot, None)
        if key is not None and self._by_key.get(key) == slot:
            del self._by_key[key]
        self._texts[slot] = ""
        self._values[slot] = b""
        self._expires[slot] = -np.inf
        self._free.append(slot)

    def _grow(self, rows: int) -> None:
        assert self._dim is not None
        vecs = np.zeros((rows, self._dim), dtype=np.float32)
        if self._vecs.size:
            vecs[: self._vecs.shape[0]] = self._vecs
        expires = np.full(rows, -np.inf, dtype=np.float64)
        expires[: self._expires.shape[0]] = self._expires
        self._vecs, self._expires = vecs, expires

    def stats(self) -> dict[str, int]:
        """Size and counters (for the actor's stats and tests)."""
        return {"size": len(self), "hits": self.hits, "misses": self.misses,
                "guard_rejections": self.guard_rejections}


class MemorySemanticCache:
    """``SemanticCacheBackend`` over an in-process :class:`SemanticIndex` (unit tests, one replica)."""

    def __init__(self, index: SemanticIndex) -> None:
        self.index = index

    async def lookup(self, vector: Sequence[float] | np.ndarray, text: str) -> SemanticLookup:
        """See :meth:`SemanticIndex.search`."""
        return self.index.search(vector, text)

    async def store(self, vector: Sequence[float] | np.ndarray, text: str, value: bytes) -> None:
        """See :meth:`SemanticIndex.store`."""
        self.index.store(vector, text, value)
