"""The last sequence id published per stream, in shared memory so it outlives a worker.

``table[instrument, source]`` (int64, -1 = none yet), sized for the registry's capacities and
created by the supervisor before fork, like every segment. Each row has one writer: the ingest
worker owning the stream (its connections run in one thread). A worker restarted after a crash
finds the ids its predecessor published, so the first record after the restart reports what the
crash lost as a gap (:mod:`fairfeed.hotpath.sequence`). A worker clears a stream's row when the
stream is subscribed or unsubscribed, so a stream subscribed again later starts afresh.
"""

from __future__ import annotations

import numpy as np

from fairfeed.ipc.shm import attach_segment, create_segment


class LastIds:
    """``table[instrument, source]``: in shared memory (:meth:`create` / :meth:`attach`) or
    process-private (:meth:`local`, which grows with the registry)."""

    def __init__(self, table: np.ndarray, shm=None, *, owner: bool = False) -> None:
        self._shm = shm
        self.name = shm.name if shm is not None else ""
        self.owner = owner
        self.table = table

    @staticmethod
    def size(n_instruments: int, n_sources: int) -> int:
        return n_instruments * n_sources * 8

    @classmethod
    def create(cls, name: str, n_instruments: int, n_sources: int) -> LastIds:
        shm = create_segment(name, cls.size(n_instruments, n_sources))
        ids = cls(np.ndarray((n_instruments, n_sources), np.int64, shm.buf), shm, owner=True)
        ids.table[:] = -1
        return ids

    @classmethod
    def attach(cls, name: str, n_instruments: int, n_sources: int) -> LastIds:
        shm = attach_segment(name)
        return cls(np.ndarray((n_instruments, n_sources), np.int64, shm.buf), shm)

    @classmethod
    def local(cls, n_instruments: int, n_sources: int) -> LastIds:
        """A private table (an adapter run without a daemon: tests, tools, benchmarks)."""
        return cls(np.full((max(n_instruments, 1), max(n_sources, 1)), -1, np.int64))

    def ensure(self, n_instruments: int, n_sources: int) -> None:
        """Make room for ids below the given counts: a private table grows; a shared one is
        sized for the registry's capacity already."""
        rows, cols = self.table.shape
        if self._shm is None and (n_instruments > rows or n_sources > cols):
            grown = np.full((max(rows, n_instruments), max(cols, n_sources)), -1, np.int64)
            grown[:rows, :cols] = self.table
            self.table = grown

    def clear(self, instrument: int, source: int) -> None:
        """Forget a stream's last id (it was subscribed or unsubscribed)."""
        if instrument < self.table.shape[0] and source < self.table.shape[1]:
            self.table[instrument, source] = -1

    def close(self) -> None:
        self.table = None  # type: ignore[assignment]
        if self._shm is not None:
            self._shm.close()

    def unlink(self) -> None:
        if self._shm is not None:
            self._shm.unlink()
