"""Which keys a shared exact cache holds, mirrored into every replica, so a miss costs no round trip.

Without it, every lookup that the replica's near cache cannot answer asks the graph's state
actor, and on traffic with few repeats almost all of them come back empty: on the reference
app that was one actor call per request, ~0.5 ms of CPU in the replica and ~1.2-1.5 ms in the
actor (``benchmarks/throughput.py``). With it, the actor logs the keys each cache node stores
(:class:`KeyLog`), and every replica pulls the keys stored since its last pull a few times a
second (:class:`KeyMirror`); a lookup whose key is not in the mirror is a miss at once. Only
keys the mirror holds go to the actor, and those are likely hits.

What it costs: a value another replica stored reaches this one's lookups only after that
replica has sent it (its write delay) and this one has pulled the keys (the sync interval),
so a key computed on two replicas within that window is computed twice. A cache is never
wrong for it: a miss recomputes the answer. The mirror may also hold keys the actor has
since dropped (TTL, size bound, a restart); those lookups ask the actor and miss, as before.

Keys are SHA-256 hex digests (:func:`modelweave.state.cache_key`); the index keeps their first
16 hex digits (64 bits), so a collision only sends one lookup to the actor that was not needed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from cachetools import TTLCache

#: Hex digits of a key that the index keeps.
PREFIX_CHARS = 16


def key_prefix(key: str) -> str:
    """What the index stores of ``key``."""
    return key[:PREFIX_CHARS]


class KeyLog:
    """Actor side: the keys one cache node stored, in store order, numbered.

    Bounded at twice the node's ``max_entries``: past that the older half goes (those keys were
    most likely evicted from the cache too; a replica that still needs one asks the actor for
    it only if its own mirror kept it).

    Args:
        max_entries: The cache node's size bound.
    """

    def __init__(self, max_entries: int) -> None:
        #: Changes when the log starts over (a new actor): replicas then pull everything again.
        self.epoch = secrets.token_hex(8)
        self._seq = 0
        self._order: dict[str, int] = {}  # prefix -> sequence number of its latest store
        self._keep = max(1, max_entries)

    def add(self, key: str) -> None:
        """Records a store of ``key``."""
        prefix = key_prefix(key)
        self._order.pop(prefix, None)  # re-stored keys move to the end
        self._seq += 1
        self._order[prefix] = self._seq
        if len(self._order) > 2 * self._keep:
            for old in list(self._order)[: len(self._order) - self._keep]:
                del self._order[old]

    def since(self, epoch: str | None, seq: int) -> tuple[str, int, list[str]]:
        """``(epoch, latest sequence number, prefixes stored after seq)``; all of them when
        ``epoch`` is not this log's (a replica's first pull, or the actor restarted)."""
        if epoch != self.epoch:
            seq = 0
        newer: list[str] = []
        for prefix, number in reversed(self._order.items()):
            if number <= seq:
                break
            newer.append(prefix)
        return self.epoch, self._seq, newer

    def __len__(self) -> int:
        return len(self._order)


class KeyMirror:
    """Replica side: the keys the shared cache holds, as of the last pull plus this replica's stores.

    Not ready until the first pull answers: until then every lookup asks the actor.

    Args:
        ttl_s: The cache node's TTL (a mirrored key is forgotten after it).
        max_entries: The cache node's size bound (the mirror holds up to twice as many keys).
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch: str | None = None
        self.seq = 0
        self._keys: TTLCache[str, bool] = TTLCache(maxsize=max(1, 2 * max_entries), ttl=ttl_s, timer=clock)

    @property
    def ready(self) -> bool:
        """Whether a pull has answered."""
        return self.epoch is not None

    def may_hold(self, key: str) -> bool:
        """False only when the shared cache cannot have ``key`` as far as this replica knows."""
        return self.epoch is None or key_prefix(key) in self._keys

    def add(self, key: str) -> None:
        """Records this replica's own store of ``key``."""
        self._keys[key_prefix(key)] = True

    def apply(self, epoch: str, seq: int, prefixes: list[str]) -> None:
        """Takes one pull's answer (:meth:`KeyLog.since`)."""
        if self.epoch is not None and epoch != self.epoch:
            self._keys.clear()  # a restarted actor: the answer holds every key it knows
        for prefix in prefixes:
            self._keys[prefix] = True
        self.epoch, self.seq = epoch, seq

    def __len__(self) -> int:
        return len(self._keys)


__all__ = ["PREFIX_CHARS", "KeyLog", "KeyMirror", "key_prefix"]
