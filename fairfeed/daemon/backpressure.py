"""The ingest worker's ``emit``: back-pressure on a full ring without blocking the event loop.

Policy (``[ring] block_timeout_ms``, docs/architecture.md "Data path"):

* Records go to the ring; what does not fit is held back, in order, in a bounded preallocated
  buffer (:class:`PendingRecords`), and every adapter of the worker stops reading its sockets
  (TCP then pushes back on the provider). A timer retries every ``retry_interval`` while
  something is held — nothing runs when nothing is held — and resumes reading once all of it is
  in the ring. Newer records queue behind the held ones.
* If the ring has taken nothing of them for ``block_timeout`` (compute is stuck), or reading has
  been paused ``max_pause`` in all (compute is alive but slower than the input for that long),
  the held records are dropped and counted (the worker's ``RING_DROPPED`` and the ring's
  ``dropped``), reading resumes, and until one batch fits the ring whole again what does not
  fit is dropped at once (no new pause), so a stalled consumer never keeps the sockets paused:
  control frames (pings) and fresh data keep being read. While compute makes progress the
  pause goes on: what a flooded worker had already read when it paused (its connections' read
  buffers: tens of thousands of records) drains into the ring at compute's pace, and TCP holds
  back the rest, instead of being dropped 50 ms into the pause.
* The event loop is never blocked: every other connection, pong and timer keeps running.

A pause must stay well under the providers' ping deadlines: while reading is paused, pings are
not read either. ``fairfeed.core.config`` bounds ``block_timeout_ms`` for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from fairfeed.core.counters import Counters, Slot
from fairfeed.daemon.pending import PendingRecords
from fairfeed.ipc.doorbell import Doorbell
from fairfeed.ipc.ring import OverflowPolicy, Ring

log = logging.getLogger("fairfeed.ingest")

LOG_INTERVAL = 1.0  # seconds between two drop reports


class RingWriter:
    """Writes an ingest worker's records into its ring under an :class:`OverflowPolicy`.

    ``pause_reading`` / ``resume_reading`` stop and restart reading on every connection of the
    worker; ``resume_reading`` must not emit synchronously. Counts Slot.RECORDS_OUT (records in
    the ring) and Slot.RING_DROPPED; records emitted = RECORDS_OUT + RING_DROPPED + held.
    """

    def __init__(
        self,
        ring: Ring,
        counters: Counters,
        policy: OverflowPolicy,
        pause_reading: Callable[[], None],
        resume_reading: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        doorbell: Doorbell | None = None,
    ) -> None:
        self.ring = ring
        self.doorbell = doorbell  # rung when the consumer sleeps waiting for records
        self.counters = counters
        self.policy = policy
        self.pending = PendingRecords(max(1, policy.pending_records))
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._clock = clock
        self.paused_at = 0.0  # clock time reading was paused (0 = reading)
        self.progress_at = 0.0  # clock time the ring last took held records
        self.shedding_since = 0.0  # a pause timed out: drop at once until a batch fits whole
        self.pauses = 0  # times reading was paused
        self.timeouts = 0  # pauses that ended by dropping the held records
        self.retries = 0  # retry timer runs (tests)
        self._timer: asyncio.TimerHandle | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._unreported = 0  # records dropped since the last log line
        self._next_report = 0.0

    @property
    def paused(self) -> bool:
        """Whether the worker's reading is paused (records are held back)."""
        return self.paused_at > 0.0

    def emit(self, records: np.ndarray) -> None:
        """Publish a batch (``IngestContext.emit``): never blocks, never reorders."""
        n = len(records)
        if n == 0:
            return
        pending = self.pending
        if len(pending):
            self._write_pending()
        if not len(pending):
            k = self.ring.write(records)
            if k:
                self.counters.add(Slot.RECORDS_OUT, k)
                self._wake()
            if k == n:
                if self.shedding_since:
                    self._end_shedding()
                return
            records = records[k:]
        if self.shedding_since or self.policy.block_timeout <= 0:
            self._drop(len(records), "compute behind: what does not fit is dropped at once")
            return
        kept = pending.push(records)
        if kept < len(records):
            self._drop(len(records) - kept, f"{pending.capacity} records already held back")
        self._pause()

    async def drain(self) -> None:
        """Wait until nothing is held back (at most ``block_timeout``: then it is dropped)."""
        await self._reading.wait()

    def close(self) -> None:
        """Stop the retry timer; what is still held is dropped and counted."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if len(self.pending):
            self._drop(self.pending.clear(), "worker stopping")
        self.paused_at = 0.0
        self._reading.set()

    # -- internals ---------------------------------------------------------------------------
    def _write_pending(self) -> None:
        k = self.pending.write_to(self.ring)
        if k:
            self.counters.add(Slot.RECORDS_OUT, k)
            self.progress_at = self._clock()
            self._wake()

    def _wake(self) -> None:
        """Records were published: wake the consumer if it sleeps on an empty ring."""
        if self.doorbell is not None and self.ring.wake_wanted():
            self.doorbell.ring()

    def _pause(self) -> None:
        if self.paused_at:
            return
        self.paused_at = self.progress_at = self._clock()
        self.pauses += 1
        self._reading.clear()
        self._pause_reading()
        self._schedule(self.policy.retry_interval)

    def _schedule(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._retry)

    def _retry(self) -> None:
        """Timer: move held records into the ring; resume, or give up after block_timeout."""
        self._timer = None
        self.retries += 1
        self._write_pending()
        if not len(self.pending):
            self._resume()
            return
        now = self._clock()
        p = self.policy
        stuck_at = self.progress_at + p.block_timeout
        left = min(stuck_at, self.paused_at + max(p.max_pause, p.block_timeout)) - now
        if left > 0:
            self._schedule(min(p.retry_interval, left))
            return
        self.timeouts += 1
        self.shedding_since = now
        held_for = now - self.paused_at
        why = "without room" if now >= stuck_at else "while compute fell further behind"
        self._drop(self.pending.clear(), f"held back {held_for * 1000:.0f} ms {why}")
        self._resume()

    def _resume(self) -> None:
        self.paused_at = 0.0
        self._reading.set()
        self._resume_reading()

    def _end_shedding(self) -> None:
        lasted = self._clock() - self.shedding_since
        self.shedding_since = 0.0
        self._report(f"ring has room again after {lasted:.2f} s")

    def _drop(self, n: int, why: str) -> None:
        if n <= 0:
            return
        self.ring.count_dropped(n)
        self.counters.add(Slot.RING_DROPPED, n)
        self._unreported += n
        self._report(why)

    def _report(self, why: str) -> None:
        """Log the records dropped since the last line, at most once per LOG_INTERVAL."""
        now = self._clock()
        if not self._unreported or now < self._next_report:
            return
        self._next_report = now + LOG_INTERVAL
        log.warning(
            "ring %s full: %d records dropped since the last report (%s)",
            self.ring.name,
            self._unreported,
            why,
        )
        self._unreported = 0
