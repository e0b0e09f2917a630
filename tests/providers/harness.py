"""What the adapter tests share: the record sink they hand to the adapter as ``ctx.emit``, and
the delays a seeded backoff draws."""

from __future__ import annotations

import random

import numpy as np

from fairfeed.core.backoff import Backoff
from fairfeed.core.records import KIND_STATUS, MAX_MARKET_KIND, RECORD_DTYPE


class Sink:
    """``ctx.emit`` (and ``ctx.dead_letter``) for tests.

    Keeps every emitted batch as it came (``emitted``, in order) and, apart, the market records
    (``batches``) and the health records: status, heartbeat and gap (``health``).
    """

    def __init__(self) -> None:
        self.emitted: list[np.ndarray] = []
        self.batches: list[np.ndarray] = []
        self.health: list[np.ndarray] = []
        self.dead: list[tuple[str, bytes]] = []
        self.dead_sizes: list[
            int
        ] = []  # the real size of each dead letter (its frame may be a head)

    def __call__(self, records: np.ndarray) -> None:
        assert records.dtype == RECORD_DTYPE
        self.emitted.append(records.copy())
        market = records["kind"] <= MAX_MARKET_KIND
        if (~market).any():
            self.health.append(records[~market].copy())
        if market.any():
            self.batches.append(records[market].copy())

    def dead_letter(self, error: str, frame: bytes, size: int | None = None) -> None:
        """``ctx.dead_letter``: keeps (error, frame) and the real size."""
        self.dead.append((error, frame))
        self.dead_sizes.append(len(frame) if size is None else size)

    @property
    def n(self) -> int:
        """How many market records were emitted."""
        return sum(len(b) for b in self.batches)

    @property
    def records(self) -> np.ndarray:
        """The market records, in order."""
        return np.concatenate(self.batches) if self.batches else np.zeros(0, RECORD_DTYPE)

    @property
    def events(self) -> np.ndarray:
        """The health records, in order."""
        return np.concatenate(self.health) if self.health else np.zeros(0, RECORD_DTYPE)

    @property
    def all(self) -> np.ndarray:
        """Every emitted record, market and health interleaved as emitted."""
        return np.concatenate(self.emitted) if self.emitted else np.zeros(0, RECORD_DTYPE)

    @property
    def parsed(self) -> np.ndarray:
        """What the parser wrote (market data, heartbeats, its gap records), in order."""
        r = self.all
        return r[r["kind"] != KIND_STATUS]

    def kind(self, kind: int) -> np.ndarray:
        """Every emitted record of ``kind``, in order."""
        r = self.all
        return r[r["kind"] == kind]

    @property
    def statuses(self) -> list[int]:
        """The codes of the STATUS records, in order."""
        return self.kind(KIND_STATUS)["flags"].tolist()

    def status(self, code: int) -> int:
        """How many STATUS records with ``code`` were emitted."""
        return self.statuses.count(code)


def schedule(base: float, cap: float, seed: int, n: int) -> list[float]:
    """The first ``n`` delays of ``Backoff(base, cap, rng=random.Random(seed))``: what an adapter
    given the same seeded backoff waits, so a test can bound the time its retries must take."""
    twin = Backoff(base=base, cap=cap, rng=random.Random(seed))
    return [twin.next_delay() for _ in range(n)]
