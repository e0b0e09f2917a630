"""What the adapter tests share: a sink that keeps what an adapter emits, and an async wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from fairfeed.core.records import KIND_STATUS, MAX_MARKET_KIND, RECORD_DTYPE


class Sink:
    """``ctx.emit`` for tests: market records and health records (status, heartbeat, gap) apart."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.health: list[np.ndarray] = []

    def __call__(self, records: np.ndarray) -> None:
        assert records.dtype == RECORD_DTYPE
        market = records["kind"] <= MAX_MARKET_KIND
        if (~market).any():
            self.health.append(records[~market].copy())
        if market.any():
            self.batches.append(records[market].copy())

    @property
    def n(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def records(self) -> np.ndarray:
        return np.concatenate(self.batches) if self.batches else np.zeros(0, RECORD_DTYPE)

    @property
    def events(self) -> np.ndarray:
        return np.concatenate(self.health) if self.health else np.zeros(0, RECORD_DTYPE)

    def status(self, code: int) -> int:
        """How many STATUS records with ``code`` were emitted."""
        e = self.events
        return int(((e["kind"] == KIND_STATUS) & (e["flags"] == code)).sum())


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
    """Poll ``cond`` on the running loop until true; fail after ``timeout`` naming ``what``.
    Returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what or cond}"
        await asyncio.sleep(0.005)
    return time.monotonic() - t0
