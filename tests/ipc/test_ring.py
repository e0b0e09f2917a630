"""SPSC ring: wraparound properties against a model, non-blocking writes, and two processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import RECORD_DTYPE
from fairfeed.ipc.ring import Ring, RingError
from fairfeed.ipc.shm import segment_exists


def _name() -> str:
    return f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _records(start: int, n: int) -> np.ndarray:
    recs = np.zeros(n, dtype=RECORD_DTYPE)
    recs["sequence"] = np.arange(start, start + n)
    recs["price"] = recs["sequence"] * 0.5
    return recs


@pytest.fixture
def ring():
    r = Ring.create(_name(), 16)
    yield r
    r.close()
    r.unlink()


def test_capacity_must_be_power_of_two() -> None:
    with pytest.raises(RingError, match="power of two"):
        Ring.create(_name(), 12)


def test_attach_to_foreign_segment_is_refused() -> None:
    from fairfeed.ipc.shm import create_segment

    shm = create_segment(_name(), 4096)
    try:
        with pytest.raises(RingError, match="not a fairfeed ring"):
            Ring.attach(shm.name)
    finally:
        shm.close()
        shm.unlink()


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["w", "r"]), st.integers(min_value=0, max_value=40)),
        max_size=60,
    ),
    start=st.integers(min_value=0, max_value=2**40),
)
def test_wraparound_matches_fifo_model(ops: list[tuple[str, int]], start: int) -> None:
    """Any interleaving of batch writes and reads behaves like a bounded FIFO that drops."""
    ring = Ring.create(_name(), 16)
    try:
        # Start the counters anywhere, far from zero, so index masking is exercised.
        ring._hdr[0] = ring._hdr[8] = start
        model: deque[int] = deque()
        next_seq = dropped = 0
        for op, n in ops:
            if op == "w":
                batch = _records(next_seq, n)
                next_seq += n
                k = ring.write(batch)
                fit = min(n, 16 - len(model))
                assert k == fit
                ring.count_dropped(n - k)  # this producer gives up on the rest
                model.extend(batch["sequence"][:fit].tolist())
                dropped += n - fit
            else:
                out = ring.read(n)
                expect = [model.popleft() for _ in range(min(n, len(model)))]
                assert out["sequence"].tolist() == expect
                assert out["price"].tolist() == [s * 0.5 for s in expect]
            assert ring.fill() == len(model)
            assert ring.dropped == dropped
            assert ring.written - start == next_seq - dropped
    finally:
        ring.close()
        ring.unlink()


def test_full_ring_write_returns_at_once_and_counts_nothing(ring: Ring) -> None:
    """A write never waits for the consumer: it publishes what fits; dropping is the caller's."""
    assert ring.write(_records(0, 10)) == 10
    assert ring.write(_records(10, 10)) == 6
    assert ring.write(_records(16, 4)) == 0
    assert (ring.free(), ring.dropped) == (0, 0)
    ring.count_dropped(4)
    ring.count_dropped(0)
    assert ring.dropped == 4
    assert ring.read(100)["sequence"].tolist() == list(range(16))
    assert ring.free() == 16


def _consume(name: str, total: int, queue: mp.Queue) -> None:
    ring = Ring.attach(name)
    out = np.empty(1000, dtype=RECORD_DTYPE)
    expected = 0
    errors = 0
    while expected < total:
        k = ring.read_into(out)
        if k and not np.array_equal(out["sequence"][:k], np.arange(expected, expected + k)):
            errors += 1
        expected += k
    queue.put((expected, errors, ring.read_count))
    ring.close()


def test_two_processes_lose_nothing() -> None:
    """Millions of records through a small ring: none lost, duplicated or reordered."""
    total, batch = 3_000_000, 700  # 700 does not divide the capacity: batches straddle the end
    ring = Ring.create(_name(), 4096)
    ctx = mp.get_context("spawn")  # a fresh interpreter attaches by name, as a tool would
    queue = ctx.Queue()
    consumer = ctx.Process(target=_consume, args=(ring.name, total, queue))
    consumer.start()
    try:
        base = _records(0, batch)
        for start in range(0, total, batch):
            n = min(batch, total - start)
            base["sequence"][:n] = np.arange(start, start + n)
            k = 0
            while k < n:  # this producer retries what did not fit, as the ingest worker does
                w = ring.write(base[k:n])
                k += w
                if not w:
                    time.sleep(0.0002)
        received, errors, read_count = queue.get(timeout=120)
        consumer.join(30)
        assert consumer.exitcode == 0
        assert (received, errors, read_count) == (total, 0, total)
        assert ring.written == total and ring.dropped == 0
        # The consumer attached and exited; the segment must still be ours to unlink.
        assert segment_exists(ring.name)
    finally:
        if consumer.is_alive():
            consumer.kill()
        ring.close()
        ring.unlink()
    assert not segment_exists(ring.name)
