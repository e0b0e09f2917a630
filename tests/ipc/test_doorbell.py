"""The doorbell: a consumer sleeping on empty rings is woken by a producer in another process,
never sleeps past a record already published, and is rung at most once per sleep."""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid

import numpy as np
import pytest

from fairfeed.core.records import RECORD_DTYPE
from fairfeed.ipc.doorbell import Doorbell, RingWaiter
from fairfeed.ipc.ring import Ring

LONG = 60.0  # a sleep this long would trip the test's timeout: the wait must end otherwise


@pytest.fixture
def ring():
    r = Ring.create(f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}", 64)
    yield r
    r.close()
    r.unlink()


def _one(seq: int = 1) -> np.ndarray:
    rec = np.zeros(1, RECORD_DTYPE)
    rec["sequence"] = seq
    return rec


def test_wake_is_asked_once_per_sleep(ring):
    assert not ring.wake_wanted()
    ring.set_waiting(True)
    assert ring.wake_wanted()
    assert not ring.wake_wanted()  # the producer took the request


@pytest.mark.timeout(10)
def test_no_sleep_past_a_published_record(ring):
    bell = Doorbell()
    waiter = RingWaiter([ring], bell)
    try:
        ring.write(_one())
        assert waiter.sleep(LONG) is False
        assert ring.unread() == 1
        assert not ring.wake_wanted()  # the waiter withdrew its request on the way out
    finally:
        waiter.close()
        bell.close()


def _producer(ring: Ring, bell: Doorbell, go) -> None:  # pragma: no cover - forked
    go.wait()
    ring.write(_one(7))
    if ring.wake_wanted():
        bell.ring()


@pytest.mark.timeout(20)
def test_producer_in_another_process_wakes_the_sleeper(ring):
    bell = Doorbell()
    waiter = RingWaiter([ring], bell)
    ctx = mp.get_context("fork")
    go = ctx.Event()
    proc = ctx.Process(target=_producer, args=(ring, bell, go))
    proc.start()
    try:
        go.set()  # the producer may publish before or during the sleep: both must end it
        while not ring.unread():
            waiter.sleep(LONG)
        out = np.empty(4, RECORD_DTYPE)
        assert ring.read_into(out) == 1 and out["sequence"][0] == 7
    finally:
        proc.join(10)
        waiter.close()
        bell.close()
    assert proc.exitcode == 0


@pytest.mark.timeout(10)
def test_command_fd_ends_the_sleep(ring):
    bell = Doorbell()
    r, w = os.pipe()
    waiter = RingWaiter([ring], bell, r)
    try:
        os.write(w, b"x")
        assert waiter.sleep(LONG) is True  # the command pipe is readable
        assert waiter.pause(LONG) is True
    finally:
        waiter.close()
        bell.close()
        os.close(r)
        os.close(w)
