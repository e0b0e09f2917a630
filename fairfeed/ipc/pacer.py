"""Daemon-wide pacing of what providers limit per IP address: new connections and subscribe
messages, shared by every ingest worker.

A provider's limits are per IP (Coinbase: about 8 new connections and 8 messages a second;
Binance: 300 connection attempts per 5 minutes), while its subscriptions are spread over several
worker processes that start at once. Every worker therefore reserves its next connection or
message here, whichever process made the ones before it.

The rule is GCRA (the generic cell rate algorithm): one float per (provider, action), the
*theoretical arrival time* (TAT) of the next action were they all spaced ``interval`` apart. An
action may happen at ``now`` when ``TAT - now <= (burst - 1) * interval``, else at
``TAT - (burst - 1) * interval``; either way TAT moves on by ``interval``. So ``burst`` actions
may go at once after a quiet while, and a sustained flow is spaced ``interval`` apart: in any
window of ``w`` seconds at most ``burst + w / interval`` actions (ends included). The providers'
declarations (:class:`fairfeed.providers.base.Rate`) choose both so that this never exceeds
their documented limit.

The table lives in a segment the supervisor creates before fork; the update takes an ``flock``
on the segment's file, opened per process, which the kernel releases if the holder dies, so a
crashed worker never wedges the others. Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one
clock for every process of the machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence

import numpy as np

from fairfeed.ipc.shm import SHM_DIR, create_segment

ACTIONS = ("connect", "message")


class Pacer:
    """The theoretical arrival time (``time.monotonic()`` seconds) per (provider, action),
    shared between processes (:meth:`create`) or private to one (:meth:`local`)."""

    def __init__(self, providers: Sequence[str], slots: np.ndarray, shm=None, *,
                 owner: bool = False) -> None:  # fmt: skip
        self._index = {(p, a): i * len(ACTIONS) + j for i, p in enumerate(providers)
                       for j, a in enumerate(ACTIONS)}  # fmt: skip
        self.slots = slots
        self._shm = shm
        self.owner = owner
        self._fd = -1
        self._fd_pid = 0

    @classmethod
    def create(cls, name: str, providers: Sequence[str]) -> Pacer:
        n = max(1, len(providers) * len(ACTIONS))
        shm = create_segment(name, n * 8)
        slots = np.ndarray((n,), np.float64, shm.buf)
        slots[:] = 0.0
        return cls(providers, slots, shm, owner=True)

    @classmethod
    def local(cls, providers: Sequence[str]) -> Pacer:
        """A private table (one adapter without a daemon: tests, tools)."""
        return cls(providers, np.zeros(max(1, len(providers) * len(ACTIONS))))

    def reserve(self, provider: str, action: str, interval: float, now: float,
                burst: int = 1) -> float:  # fmt: skip
        """Reserve ``provider``'s next ``action`` under a sustained ``interval`` with up to
        ``burst`` at once (GCRA, module docstring); returns when it may happen (``now`` at the
        earliest). ``burst`` 1: each at least ``interval`` after the one reserved before it.
        A provider this table does not know (added after it was built) is not paced."""
        k = self._index.get((provider, action))
        if k is None:
            return now
        with self._locked():
            tat = float(self.slots[k])
            at = max(now, tat - (burst - 1) * interval)
            self.slots[k] = max(at, tat) + interval
        return at

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._shm is None:
            yield
            return
        if self._fd_pid != os.getpid():  # an flock is per open file: one per process
            self._fd = os.open(os.path.join(SHM_DIR, self._shm.name.lstrip("/")), os.O_RDWR)
            self._fd_pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.slots = None  # type: ignore[assignment]
        if self._fd >= 0 and self._fd_pid == os.getpid():
            os.close(self._fd)
            self._fd = -1
        if self._shm is not None:
            self._shm.close()

    def unlink(self) -> None:
        if self._shm is not None:
            self._shm.unlink()
