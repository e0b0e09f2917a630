"""The contract between an ingest worker and a provider adapter.

An adapter owns one provider connection (reconnecting by itself with :class:`Backoff`), turns
wire frames straight into RECORD_DTYPE arrays and hands them to ``ctx.emit`` in batches — as many
records per call as the wire delivered together, never one call per message when a batch is at
hand. It never raises out of :meth:`Adapter.run` for bad input: malformed frames are counted.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fairfeed.daemon.config import ProviderConfig
from fairfeed.daemon.registry import Registry
from fairfeed.ipc.control import Slot


class Counters(abc.ABC):
    """Where an adapter counts what happened (frames, parse errors, reconnects...)."""

    @abc.abstractmethod
    def add(self, field: Slot, n: int = 1) -> None: ...

    @abc.abstractmethod
    def set(self, field: Slot, value: int) -> None: ...


class DictCounters(Counters):
    """In-process counters, for tests and benchmarks."""

    def __init__(self) -> None:
        self.values: dict[Slot, int] = {}

    def add(self, field: Slot, n: int = 1) -> None:
        self.values[field] = self.values.get(field, 0) + n

    def set(self, field: Slot, value: int) -> None:
        self.values[field] = value

    def __getitem__(self, field: Slot) -> int:
        return self.values.get(field, 0)


@dataclass
class IngestContext:
    """What the worker gives an adapter."""

    provider: ProviderConfig
    url: str  # resolved endpoint (a served simulator's port is known only at start)
    instruments: tuple[str, ...]  # canonical instrument names this adapter subscribes to
    registry: Registry
    emit: Callable[[np.ndarray], None]  # publish a batch of records (copied before return)
    counters: Counters


class Adapter(abc.ABC):
    """One provider connection inside an ingest worker's asyncio loop."""

    def __init__(self, ctx: IngestContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect, subscribe, stream until cancelled; reconnect with backoff on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; after this returns no more records are emitted."""
