"""Row chunks of a Ray Data batch, sized so each one's walk ends well inside the row deadline.

A graph stage gives every row of what it walks at once the same start, so a row's deadline
covers everything in flight beside it: walked columnar, a row waits for its whole batch at
every node; row by row, all rows are in flight together and queue for the same models. With
1,024-row batches of the triage graph (~10-17 ms per row in a stage on 2 cores) a batch took
longer than the graph's 20 s deadline when three stages shared the cores, and all 1,024 rows
of it failed with ``DEADLINE_EXCEEDED``: the deadline measured the batch's size, not a slow
or hung model.

So a stage walks a batch in chunks, one after another, each with its own deadline, and sizes
them from the rate it measured: a chunk should take at most a quarter of the deadline. The
first chunk a stage walks is small (its rate is unknown); each next one may grow four-fold,
so a fast graph reaches whole batches after two chunks, while a slow one settles where its
chunks stay inside the budget. A chunk that still runs out of time (a model hung, the
cluster stalled) fails only its own rows, and the next chunk is sized from it.
"""

from __future__ import annotations

import math

#: Rows in a stage's first chunk: its rate is unknown, so start with what a slow graph can
#: walk inside any sensible deadline.
FIRST_CHUNK_ROWS = 64

#: Share of the deadline one chunk is sized to take: room for the rate to drop (another stage
#: getting busy, a slower stretch of input) before rows fail.
DEADLINE_SHARE = 0.25

#: Largest step from one chunk's size to the next.
GROWTH = 4


class DeadlineChunks:
    """Chooses how many rows a stage walks at once, from the seconds per row it measured.

    Args:
        budget_s: The rows' deadline in seconds.
        first: Rows of the first chunk.
    """

    def __init__(self, budget_s: float, first: int = FIRST_CHUNK_ROWS) -> None:
        if budget_s <= 0:
            raise ValueError("budget_s must be positive")
        self.budget_s = budget_s
        self._size = max(1, first)
        #: Seconds per row of the last chunk walked (None before the first).
        self.per_row_s: float | None = None

    def next_size(self, remaining: int) -> int:
        """Rows to walk next out of ``remaining`` (at least one, at most ``remaining``)."""
        return max(1, min(remaining, self._size))

    def observe(self, rows: int, seconds: float) -> None:
        """Records a walked chunk; sizes the next one.

        Args:
            rows: Rows the chunk had.
            seconds: Wall time of its walk.
        """
        if rows <= 0:
            return
        self.per_row_s = max(seconds, 0.0) / rows
        fits = (math.floor(self.budget_s * DEADLINE_SHARE / self.per_row_s)
                if self.per_row_s > 0 else self._size * GROWTH)
        # Grow only after a full chunk (a batch's short tail says little about a bigger one);
        # shrink after any chunk that took too long.
        ceiling = self._size * GROWTH if rows >= self._size else self._size
        self._size = max(1, min(fits, ceiling))
