"""The daemon-wide pacer: reservations from several processes keep the interval between them,
and a process that dies holding the lock does not wedge the others."""

from __future__ import annotations

import os

import numpy as np

from fairfeed.ipc.pacer import Pacer
from tests.waiting import wait_for

INTERVAL = 0.01


def test_reservations_from_two_processes_keep_the_interval(tmp_path) -> None:
    pacer = Pacer.create(f"fairfeed-test-pacer-{os.getpid()}", ["coinbase", "kraken"])
    try:
        out = tmp_path / "child.npy"
        pid = os.fork()
        if pid == 0:  # the second worker: reserves concurrently with the parent
            try:
                got = [pacer.reserve("coinbase", "connect", INTERVAL, 0.0) for _ in range(200)]
                np.save(out, np.array(got))
            finally:
                os._exit(0)
        mine = [pacer.reserve("coinbase", "connect", INTERVAL, 0.0) for _ in range(200)]
        _, status = os.waitpid(pid, 0)
        assert status == 0
        theirs = np.load(out).tolist()
        slots = np.sort(np.array(mine + theirs))
        # 400 distinct slots, one interval apart: nobody got a slot twice or too early
        assert np.allclose(np.diff(slots), INTERVAL)
        assert slots[0] == 0.0
        # other keys are independent
        assert pacer.reserve("coinbase", "message", INTERVAL, 5.0) == 5.0
        assert pacer.reserve("kraken", "connect", INTERVAL, 5.0) == 5.0
    finally:
        pacer.close()
        pacer.unlink()


def test_a_process_dying_with_the_lock_does_not_wedge_the_others() -> None:
    pacer = Pacer.create(f"fairfeed-test-pacer2-{os.getpid()}", ["coinbase"])
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            with pacer._locked():  # killed while holding it
                os.write(w, b"x")
                os.kill(os.getpid(), 9)
        os.read(r, 1)
        wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, 10, "the child to die")
        assert pacer.reserve("coinbase", "connect", 1.0, 7.0) == 7.0
    finally:
        pacer.close()
        pacer.unlink()


def test_local_pacer_and_unknown_providers() -> None:
    pacer = Pacer.local(["a"])
    assert [pacer.reserve("a", "message", 0.5, 1.0) for _ in range(3)] == [1.0, 1.5, 2.0]
    assert pacer.reserve("a", "message", 0.5, 10.0) == 10.0  # idle since: no backlog
    assert pacer.reserve("not-configured", "connect", 0.5, 1.0) == 1.0


def test_burst_then_sustained_interval_across_processes(tmp_path) -> None:
    """GCRA: with a burst of 5, two processes asking at once get 5 slots at ``now`` between
    them, then one every interval; a quiet while gives the burst back, and no more."""
    pacer = Pacer.create(f"fairfeed-test-pacer3-{os.getpid()}", ["binance"])
    try:
        out = tmp_path / "child.npy"
        pid = os.fork()
        if pid == 0:
            try:
                got = [pacer.reserve("binance", "connect", INTERVAL, 0.0, 5) for _ in range(100)]
                np.save(out, np.array(got))
            finally:
                os._exit(0)
        mine = [pacer.reserve("binance", "connect", INTERVAL, 0.0, 5) for _ in range(100)]
        _, status = os.waitpid(pid, 0)
        assert status == 0
        slots = np.sort(np.array(mine + np.load(out).tolist()))
        assert (slots[:5] == 0.0).all()  # the burst, whoever asked
        assert np.allclose(slots[5:], INTERVAL * np.arange(1, 196))  # then the sustained rate
        # the theoretical arrival time is now 200 intervals on: at 1000 intervals (idle since)
        # the whole burst is back, and only the burst
        later = 1000 * INTERVAL
        got = [pacer.reserve("binance", "connect", INTERVAL, later, 5) for _ in range(7)]
        assert np.allclose(got, [later] * 5 + [later + INTERVAL, later + 2 * INTERVAL])
    finally:
        pacer.close()
        pacer.unlink()


def test_a_short_quiet_while_gives_back_part_of_the_burst() -> None:
    pacer = Pacer.local(["a"])
    assert [pacer.reserve("a", "connect", 1.0, 0.0, 3) for _ in range(5)] == [0, 0, 0, 1, 2]
    # TAT 5: at t=4, two intervals of the burst have come back (4 and 4), then 5, 6
    assert [pacer.reserve("a", "connect", 1.0, 4.0, 3) for _ in range(4)] == [4, 4, 5, 6]
