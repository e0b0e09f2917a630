"""The worker's emit on a full ring: held records keep their order, reading pauses and resumes,
and only a pause that lasts block_timeout drops (counted exactly). Real rings, one event loop."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.records import RECORD_DTYPE
from fairfeed.daemon.backpressure import RingWriter
from fairfeed.daemon.pending import PendingRecords
from fairfeed.ipc.doorbell import Doorbell
from fairfeed.ipc.ring import OverflowPolicy, Ring
from tests.waiting import wait_for_async

pytestmark = pytest.mark.timeout(30)


def _records(start: int, n: int) -> np.ndarray:
    recs = np.zeros(n, dtype=RECORD_DTYPE)
    recs["sequence"] = np.arange(start, start + n)
    recs["price"] = recs["sequence"] * 0.25
    return recs


@pytest.fixture
def ring():
    r = Ring.create(f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}", 16)
    yield r
    r.close()
    r.unlink()


class Reading:
    """The worker's pause/resume hooks, recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


def _writer(ring: Ring, block_timeout: float = 5.0, pending: int = 1024, clock=time.monotonic,
            max_pause: float = 10.0):  # fmt: skip
    reading, counters = Reading(), DictCounters()
    policy = OverflowPolicy(block_timeout=block_timeout, pending_records=pending,
                            max_pause=max_pause)  # fmt: skip
    writer = RingWriter(ring, counters, policy, reading.pause, reading.resume, clock=clock)
    return writer, reading, counters


class StepClock:
    """A clock the test moves (the writer's timeouts), apart from the loop's retry timer."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- the pending buffer ------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["push", "ring", "read"]), st.integers(0, 30)), max_size=60
    )
)
def test_pending_buffer_is_a_bounded_fifo_in_front_of_the_ring(ops) -> None:
    """Any mix of pushes, moves into the ring and reads: records leave in the order they came,
    a full buffer keeps what fits and says so, nothing is duplicated."""
    ring = Ring.create(f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}", 16)
    try:
        pending = PendingRecords(24)
        model: deque[int] = deque()
        in_ring: deque[int] = deque()
        seq = 0
        for op, n in ops:
            if op == "push":
                kept = pending.push(_records(seq, n))
                assert kept == min(n, 24 - len(model))
                model.extend(range(seq, seq + kept))
                seq += n
            elif op == "ring":
                k = pending.write_to(ring)
                assert k == min(len(model), 16 - len(in_ring))
                in_ring.extend(model.popleft() for _ in range(k))
            else:
                out = ring.read(n)
                assert out["sequence"].tolist() == [in_ring.popleft() for _ in range(len(out))]
                assert out["price"].tolist() == [s * 0.25 for s in out["sequence"].tolist()]
            assert len(pending) == len(model)
            held = pending.buf[pending.start : pending.end]
            assert held["sequence"].tolist() == list(model)
        assert ring.dropped == 0  # the buffer never counts drops: its caller does
    finally:
        ring.close()
        ring.unlink()


def test_pending_buffer_refuses_other_dtypes() -> None:
    with pytest.raises(TypeError, match="RECORD_DTYPE"):
        PendingRecords(4).push(np.zeros(2, np.int64))


# -- the writer --------------------------------------------------------------------------------
def test_a_batch_that_fits_goes_straight_to_the_ring(ring: Ring) -> None:
    async def main() -> None:
        writer, reading, counters = _writer(ring)
        writer.emit(_records(0, 16))
        writer.emit(_records(16, 0))
        assert (counters[Slot.RECORDS_OUT], len(writer.pending), reading.calls) == (16, 0, [])

    asyncio.run(main())


def test_the_doorbell_rings_once_for_a_consumer_that_sleeps(ring: Ring) -> None:
    bell = Doorbell()
    reading, counters = Reading(), DictCounters()
    writer = RingWriter(ring, counters, OverflowPolicy(), reading.pause, reading.resume,
                        doorbell=bell)  # fmt: skip
    try:
        writer.emit(_records(0, 2))  # the consumer is awake: no system call
        with pytest.raises(BlockingIOError):
            os.eventfd_read(bell.fd)
        ring.set_waiting(True)
        writer.emit(_records(2, 2))
        writer.emit(_records(4, 2))
        assert os.eventfd_read(bell.fd) == 1  # one wake-up for the sleep, not one per batch
    finally:
        bell.close()


def test_full_ring_holds_back_in_order_pauses_and_resumes_when_drained(ring: Ring) -> None:
    async def main() -> None:
        writer, reading, counters = _writer(ring)
        writer.emit(_records(0, 10))
        writer.emit(_records(10, 10))  # 6 fit, 4 held, reading paused
        assert (counters[Slot.RECORDS_OUT], len(writer.pending)) == (16, 4)
        assert reading.calls == ["pause"] and writer.paused
        writer.emit(_records(20, 3))  # records already read when the pause came: behind the 4
        assert len(writer.pending) == 7 and reading.calls == ["pause"]
        got = ring.read(5)["sequence"].tolist()  # the consumer makes room for 5 of the 7
        await wait_for_async(lambda: len(writer.pending) == 2, what="the retry moved 5 records")
        assert writer.paused  # 2 still held: still paused
        got += ring.read(16)["sequence"].tolist()
        await wait_for_async(lambda: not writer.paused, what="reading resumed")
        assert reading.calls == ["pause", "resume"]
        writer.emit(_records(23, 2))
        got += ring.read(16)["sequence"].tolist()
        assert got == list(range(25))  # held records first, then newer ones
        assert counters[Slot.RECORDS_OUT] == 25
        assert counters[Slot.RING_DROPPED] == ring.dropped == 0

    asyncio.run(main())


def test_a_pause_that_lasts_block_timeout_drops_the_held_records_then_sheds(ring: Ring) -> None:
    async def main() -> None:
        writer, reading, counters = _writer(ring, block_timeout=0.05)
        writer.emit(_records(0, 20))  # 16 in the ring, 4 held
        writer.emit(_records(20, 5))  # 9 held
        await wait_for_async(lambda: not writer.paused, what="the bounded pause ended")
        assert reading.calls == ["pause", "resume"] and writer.timeouts == 1
        assert counters[Slot.RING_DROPPED] == ring.dropped == 9 and len(writer.pending) == 0
        # Compute is still stuck: no new pause, what does not fit is dropped at once.
        writer.emit(_records(25, 3))
        assert reading.calls == ["pause", "resume"] and not writer.paused
        assert counters[Slot.RING_DROPPED] == ring.dropped == 12
        # Compute is back: a batch that fits ends shedding, the next overflow pauses again.
        assert ring.read(16)["sequence"].tolist() == list(range(16))
        writer.emit(_records(28, 10))
        assert not writer.shedding_since
        writer.emit(_records(38, 10))
        assert reading.calls == ["pause", "resume", "pause"] and len(writer.pending) == 4
        emitted = 48
        assert emitted == counters[Slot.RECORDS_OUT] + counters[Slot.RING_DROPPED] + 4
        writer.close()  # stopping: what is still held is dropped and counted
        assert counters[Slot.RING_DROPPED] == ring.dropped == 16
        assert ring.read(16)["sequence"].tolist() == list(range(28, 44))

    asyncio.run(main())


def test_a_pause_lasts_while_compute_makes_progress_and_ends_when_it_stops(ring: Ring) -> None:
    """A slow consumer that keeps taking records: the held ones wait past block_timeout and
    none is lost. A consumer that takes nothing for block_timeout: they are dropped."""

    async def main() -> None:
        clock = StepClock()
        writer, reading, counters = _writer(ring, block_timeout=0.05, clock=clock)
        writer.emit(_records(0, 26))  # 16 in the ring, 10 held
        got: list[int] = []
        for _ in range(5):  # 2 records per 30 ms: 150 ms in all, 3 x block_timeout
            clock.t += 0.03
            got += ring.read(2)["sequence"].tolist()
            left = len(writer.pending) - 2
            await wait_for_async(lambda left=left: len(writer.pending) == left, what="a retry")
        await wait_for_async(lambda: not writer.paused, what="the pause ended")
        got += ring.read(16)["sequence"].tolist()
        assert got == list(range(26)) and reading.calls == ["pause", "resume"]
        assert counters[Slot.RING_DROPPED] == ring.dropped == 0 and writer.timeouts == 0
        writer.emit(_records(26, 20))  # 16 in the ring, 4 held; nothing is read any more
        clock.t += 0.049
        r0 = writer.retries
        await wait_for_async(lambda: writer.retries >= r0 + 3, what="three retries")
        assert writer.paused and len(writer.pending) == 4  # within block_timeout of the pause
        clock.t += 0.002
        await wait_for_async(lambda: not writer.paused, what="the stuck pause ended")
        assert writer.timeouts == 1 and counters[Slot.RING_DROPPED] == ring.dropped == 4

    asyncio.run(main())


def test_a_pause_ends_at_max_pause_however_much_compute_progresses(ring: Ring) -> None:
    """Pings are not read while reading is paused: a consumer slower than the input does not
    keep the sockets paused longer than max_pause."""

    async def main() -> None:
        clock = StepClock()
        writer, reading, counters = _writer(ring, block_timeout=0.05, clock=clock, max_pause=0.1)
        writer.emit(_records(0, 30))  # 16 in the ring, 14 held
        for left in (13, 12):  # 1 record per 40 ms: progress
            clock.t += 0.04
            ring.read(1)
            await wait_for_async(lambda left=left: len(writer.pending) == left, what="a retry")
        assert writer.paused and writer.timeouts == 0
        clock.t += 0.04  # 120 ms > max_pause, progress or not
        ring.read(1)
        await wait_for_async(lambda: not writer.paused, what="the pause ended at max_pause")
        assert writer.timeouts == 1 and counters[Slot.RING_DROPPED] == ring.dropped == 11
        assert reading.calls == ["pause", "resume"]

    asyncio.run(main())


def test_block_timeout_zero_drops_at_once_without_pausing(ring: Ring) -> None:
    async def main() -> None:
        writer, reading, counters = _writer(ring, block_timeout=0)
        writer.emit(_records(0, 20))
        assert (counters[Slot.RECORDS_OUT], counters[Slot.RING_DROPPED], ring.dropped) == (16, 4, 4)
        assert reading.calls == [] and len(writer.pending) == 0

    asyncio.run(main())


def test_a_full_pending_buffer_keeps_the_oldest_and_counts_the_rest(ring: Ring) -> None:
    async def main() -> None:
        writer, reading, counters = _writer(ring, pending=8)
        writer.emit(_records(0, 20))  # 16 in the ring, 4 held
        writer.emit(_records(20, 10))  # 4 more held, 6 refused for good
        assert counters[Slot.RING_DROPPED] == ring.dropped == 6
        assert len(writer.pending) == 8
        got = ring.read(16)["sequence"].tolist()
        await wait_for_async(lambda: not writer.paused, what="reading resumed")
        got += ring.read(16)["sequence"].tolist()
        assert got == list(range(24))
        assert reading.calls == ["pause", "resume"]

    asyncio.run(main())


def test_drain_waits_for_the_held_records(ring: Ring) -> None:
    async def main() -> None:
        writer, _, counters = _writer(ring)
        writer.emit(_records(0, 20))
        drained = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.01)  # scenario: the consumer is late
        assert not drained.done()
        ring.read(16)
        await asyncio.wait_for(drained, 5)
        assert counters[Slot.RECORDS_OUT] == 20 and counters[Slot.RING_DROPPED] == 0

    asyncio.run(main())
