"""The supervisor with real forks and signals, over small stand-in children."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import uuid

import pytest

from fairfeed.core.config import DaemonConfig
from fairfeed.core.counters import Slot
from fairfeed.daemon.child import EXIT_BOOT_ERROR
from fairfeed.daemon.supervisor import EXIT_HALTED, ChildSpec, Supervisor
from fairfeed.ipc.control import ControlBlock
from tests.waiting import wait_for

FAST = DaemonConfig(
    heartbeat_interval=0.05,
    heartbeat_timeout=0.6,
    stop_timeout=3.0,
    max_boot_failures=3,
    restart_backoff_base=0.05,
    restart_backoff_cap=0.2,
)


def _beating(control: ControlBlock, slot: int, beat: bool = True) -> int:
    """A child that boots, then beats (or hangs) until SIGTERM."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    control.set(slot, Slot.PID, os.getpid())
    control.set(slot, Slot.READY, 1)
    while not stop:
        if beat:
            control.add(slot, Slot.HEARTBEAT)
        time.sleep(0.02)
    return 0


def _boot_fail() -> int:
    return EXIT_BOOT_ERROR


def _run_supervisor(control: ControlBlock, kinds: list[str], result: mp.Queue) -> None:
    children = []
    for slot, kind in enumerate(kinds):
        if kind == "ok":
            target = lambda s=slot: _beating(control, s)  # noqa: E731
        elif kind == "hang":
            target = lambda s=slot: _beating(control, s, beat=False)  # noqa: E731
        else:
            target = _boot_fail
        children.append(ChildSpec(f"child-{slot}", slot, target, stop_phase=slot))
    result.put(Supervisor(FAST, control, children).run())


@pytest.fixture
def control():
    block = ControlBlock.create(f"fftest-{os.getpid()}-{uuid.uuid4().hex[:6]}", 4, 1)
    yield block
    block.close()
    block.unlink()


def _start(control: ControlBlock, kinds: list[str]) -> tuple[mp.Process, mp.Queue]:
    ctx = mp.get_context("fork")
    result = ctx.Queue()
    proc = ctx.Process(target=_run_supervisor, args=(control, kinds, result))
    proc.start()
    return proc, result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_sigkilled_child_is_restarted_within_a_second(control: ControlBlock) -> None:
    proc, result = _start(control, ["ok", "ok"])
    try:
        wait_for(lambda: control.get(0, Slot.READY) and control.get(1, Slot.READY), 5)
        old = control.get(1, Slot.PID)
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(
            lambda: control.get(1, Slot.PID) not in (0, old) and control.get(1, Slot.READY),
            5,
            interval=0.01,
        )
        assert time.monotonic() - t0 < 1.0
        beats = control.get(1, Slot.HEARTBEAT)
        wait_for(lambda: control.get(1, Slot.HEARTBEAT) > beats, 1)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(10)
    assert proc.exitcode == 0 and result.get(timeout=1) == 0
    assert not _alive(control.get(0, Slot.PID)) and not _alive(control.get(1, Slot.PID))


def test_child_that_stops_beating_is_killed_and_replaced(control: ControlBlock) -> None:
    proc, result = _start(control, ["hang"])
    try:
        wait_for(lambda: control.get(0, Slot.READY), 5)
        first = control.get(0, Slot.PID)
        wait_for(lambda: control.get(0, Slot.PID) not in (0, first), 5)
        assert not _alive(first)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(10)
    assert result.get(timeout=1) == 0


def test_child_that_cannot_boot_halts_the_supervisor(control: ControlBlock) -> None:
    proc, result = _start(control, ["ok", "boot-fail"])
    proc.join(15)
    assert proc.exitcode == 0  # the test's wrapper process
    assert result.get(timeout=1) == EXIT_HALTED
    assert not _alive(control.get(0, Slot.PID))


def test_sigterm_stops_every_child(control: ControlBlock) -> None:
    proc, result = _start(control, ["ok", "ok", "ok"])
    wait_for(lambda: all(control.get(s, Slot.READY) for s in range(3)), 5)
    pids = [control.get(s, Slot.PID) for s in range(3)]
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(10)
    assert result.get(timeout=1) == 0
    assert not any(_alive(p) for p in pids)
