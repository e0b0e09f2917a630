"""The supervisor's decisions with the process table faked: ``os.fork``, ``os.waitpid`` and
``os.kill`` are patched (gunicorn's arbiter tests are the model), ``select`` only moves a fake
clock. Stop deadline, stop-phase order, SIGHUP dispatch, heartbeat kills and restart delays are
then exact, whatever the machine's load. ``test_supervisor.py`` runs the same supervisor with
real forks and signals."""

from __future__ import annotations

import errno
import os
import random
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from fairfeed.core.backoff import Backoff
from fairfeed.core.config import DaemonConfig
from fairfeed.core.counters import Slot
from fairfeed.daemon import supervisor as supervisor_module
from fairfeed.daemon.child import Heartbeat
from fairfeed.daemon.supervisor import EXIT_STOP_TIMEOUT, ChildSpec, Supervisor
from fairfeed.ipc.control import ControlBlock

CFG = DaemonConfig(
    heartbeat_interval=0.2,
    heartbeat_timeout=5.0,
    stop_timeout=3.0,
    max_boot_failures=3,
    restart_backoff_base=0.05,
    restart_backoff_cap=5.0,
)
SEED = 42


class Clock:
    """``time.monotonic`` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeOS:
    """The process table the supervisor sees. A child exits ``term_delay`` seconds (fake time)
    after SIGTERM unless its pid is in ``ignore_term``; SIGKILL ends it at once."""

    clock: Clock
    term_delay: dict[int, float] = field(default_factory=dict)
    ignore_term: set[int] = field(default_factory=set)
    next_pid: int = 1000
    running: set[int] = field(default_factory=set)
    exiting: dict[int, tuple[float, int]] = field(default_factory=dict)  # pid: (at, status)
    exited: list[tuple[int, int]] = field(default_factory=list)  # waiting to be reaped
    events: list[tuple[str, int, int, float]] = field(default_factory=list)  # what, pid, sig, t
    real_kill = staticmethod(os.kill)

    def fork(self) -> int:
        self.next_pid += 1
        self.running.add(self.next_pid)
        return self.next_pid

    def kill(self, pid: int, sig: int) -> None:
        if pid == os.getpid():  # the supervisor signalling itself: a real signal
            self.real_kill(pid, sig)
            return
        if pid not in self.running:
            raise ProcessLookupError(errno.ESRCH, "no such process")
        self.events.append(("kill", pid, sig, self.clock()))
        if sig == signal.SIGKILL:
            self._exit(pid, signal.SIGKILL)  # raw wait status of a SIGKILLed process
        elif sig == signal.SIGTERM and pid not in self.ignore_term:
            self.exiting[pid] = (self.clock() + self.term_delay.get(pid, 0.0), 0)

    def die(self, pid: int, status: int) -> None:
        """The child ends on its own (a crash: status is a raw wait status)."""
        self._exit(pid, status)

    def _exit(self, pid: int, status: int) -> None:
        self.running.discard(pid)
        self.exiting.pop(pid, None)
        self.exited.append((pid, status))

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        assert pid == -1
        for p, (at, status) in list(self.exiting.items()):
            if self.clock() >= at:
                self._exit(p, status)
        if self.exited:
            pid, status = self.exited.pop(0)
            self.events.append(("reaped", pid, 0, self.clock()))
            return pid, status
        if not self.running:
            raise ChildProcessError(errno.ECHILD, "no child processes")
        assert options & os.WNOHANG, "a blocking waitpid here would hang the supervisor"
        return 0, 0

    def select(self, r: list, w: list, x: list, timeout: float) -> tuple[list, list, list]:
        self.clock.advance(timeout)
        return [], [], []

    def signals_to(self, pid: int) -> list[int]:
        return [sig for what, p, sig, _ in self.events if what == "kill" and p == pid]


@pytest.fixture
def control() -> Iterator[ControlBlock]:
    block = ControlBlock.create(f"fftest-{os.getpid()}-{uuid.uuid4().hex[:6]}", 4, 1)
    yield block
    block.close()
    block.unlink()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> FakeOS:
    fake = FakeOS(clock)
    monkeypatch.setattr(os, "fork", fake.fork)
    monkeypatch.setattr(os, "waitpid", fake.waitpid)
    monkeypatch.setattr(os, "kill", fake.kill)
    monkeypatch.setattr(supervisor_module.select, "select", fake.select)
    return fake


@pytest.fixture
def own_signals() -> Iterator[None]:
    """``Supervisor.run`` installs handlers in this (the pytest) process: put them back."""
    saved = {sig: signal.getsignal(sig) for sig in Supervisor.SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _never() -> int:  # pragma: no cover - targets run only in a forked child
    raise AssertionError("a child target ran in the supervisor process")


def daemon_children() -> list[ChildSpec]:
    """The children in the order and phases ``fairfeed.daemon.run`` gives them."""
    return [
        ChildSpec("simulators", 0, _never, stop_phase=1),
        ChildSpec("ingest-0", 1, _never, stop_phase=0),
        ChildSpec("ingest-1", 2, _never, stop_phase=0),
        ChildSpec("compute", 3, _never, stop_phase=2),
    ]


def started(sup: Supervisor, control: ControlBlock) -> dict[str, int]:
    """Spawn every child as ``run`` does and mark it ready; name → pid."""
    for child in sup.children:
        sup.spawn(child)
        control.set(child.slot, Slot.READY, 1)
    return {c.name: c.pid for c in sup.children}


def _close_pipe(sup: Supervisor) -> None:
    for fd in (sup._pipe_r, sup._pipe_w):
        if fd >= 0:
            os.close(fd)


# --- graceful stop -----------------------------------------------------------------------------


def test_stop_goes_phase_by_phase_ingest_then_simulators_then_compute(
    control: ControlBlock, clock: Clock, fake_os: FakeOS
) -> None:
    sup = Supervisor(CFG, control, daemon_children(), clock=clock)
    pids = started(sup, control)
    fake_os.term_delay = {pids["ingest-0"]: 0.1, pids["ingest-1"]: 1.0, pids["simulators"]: 0.3}
    t0 = clock()

    assert sup.stop_children() == 0

    order = [(what, p) for what, p, _, _ in fake_os.events]
    name = {pid: n for n, pid in pids.items()}
    assert [(what, name[p]) for what, p in order] == [
        ("kill", "ingest-0"),
        ("kill", "ingest-1"),
        ("reaped", "ingest-0"),
        ("reaped", "ingest-1"),
        ("kill", "simulators"),
        ("reaped", "simulators"),
        ("kill", "compute"),
        ("reaped", "compute"),
    ]
    assert all(sig == signal.SIGTERM for what, _, sig, _ in fake_os.events if what == "kill")
    # The simulators got SIGTERM only once the slower ingest worker had gone, ~1 s in.
    t_sim = next(
        t for what, p, _, t in fake_os.events if what == "kill" and p == pids["simulators"]
    )
    assert 1.0 <= t_sim - t0 < 1.1
    assert not any(c.pid for c in sup.children)


def test_stop_kills_what_ignores_sigterm_at_the_deadline_exit_4(
    control: ControlBlock, clock: Clock, fake_os: FakeOS
) -> None:
    sup = Supervisor(CFG, control, daemon_children(), clock=clock)
    pids = started(sup, control)
    fake_os.ignore_term = {pids["compute"]}
    t0 = clock()

    assert sup.stop_children() == EXIT_STOP_TIMEOUT

    assert fake_os.signals_to(pids["compute"]) == [signal.SIGTERM, signal.SIGKILL]
    for other in ("ingest-0", "ingest-1", "simulators"):
        assert fake_os.signals_to(pids[other]) == [signal.SIGTERM]
    t_kill = fake_os.events[-2][3]  # the SIGKILL, then its reap
    assert fake_os.events[-2][:3] == ("kill", pids["compute"], signal.SIGKILL)
    # Killed at the first look past daemon.stop_timeout (the stop loop looks every 20 ms).
    assert CFG.stop_timeout <= t_kill - t0 < CFG.stop_timeout + 0.021
    assert sup.children[3].last_status == "killed by SIGKILL"
    assert not any(c.pid for c in sup.children)


def test_a_hung_first_phase_leaves_later_phases_sigterm_then_sigkill(
    control: ControlBlock, clock: Clock, fake_os: FakeOS
) -> None:
    sup = Supervisor(CFG, control, daemon_children(), clock=clock)
    pids = started(sup, control)
    fake_os.ignore_term = {pids["ingest-1"]}
    fake_os.term_delay = {pids["simulators"]: 0.5, pids["compute"]: 0.5}
    t0 = clock()

    assert sup.stop_children() == EXIT_STOP_TIMEOUT

    # No time is left for the later phases: they are asked, then killed, all at the deadline.
    assert fake_os.signals_to(pids["ingest-0"]) == [signal.SIGTERM]
    for late in ("ingest-1", "simulators", "compute"):
        assert fake_os.signals_to(pids[late])[-1] == signal.SIGKILL
    assert fake_os.signals_to(pids["simulators"]) == [signal.SIGTERM, signal.SIGKILL]
    kills = [t for what, _, sig, t in fake_os.events if what == "kill" and sig == signal.SIGKILL]
    assert len(kills) == 3 and all(t - t0 >= CFG.stop_timeout for t in kills)


# --- the main loop: signals --------------------------------------------------------------------


def _run_with_signals(
    control: ControlBlock, clock: Clock, on_hup, sends: list[int | None], service=None
) -> tuple[int, Supervisor, list[float]]:
    """Run the supervisor; at tick n it sends itself ``sends[n]`` (a real signal, through its
    own handler and wake-up pipe)."""
    ticks: list[float] = []

    def on_tick(sup: Supervisor) -> None:
        ticks.append(clock())
        n = len(ticks) - 1
        if n < len(sends) and sends[n] is not None:
            os.kill(os.getpid(), sends[n])

    children = [ChildSpec("ingest-0", 0, _never), ChildSpec("compute", 1, _never, stop_phase=2)]
    sup = Supervisor(
        CFG, control, children, on_tick=on_tick, on_hup=on_hup, service=service, clock=clock
    )
    try:
        code = sup.run()
    finally:
        _close_pipe(sup)
    return code, sup, ticks


@pytest.mark.usefixtures("own_signals")
def test_sighup_calls_reload_and_changes_nothing_else(
    control: ControlBlock, clock: Clock, fake_os: FakeOS
) -> None:
    reloads: list[float] = []
    code, sup, ticks = _run_with_signals(
        control, clock, lambda: reloads.append(clock()), [signal.SIGHUP, None, signal.SIGTERM]
    )
    assert code == 0
    assert reloads == [ticks[1]]  # dispatched at the next turn of the loop, once
    forks = [c.pid for c in sup.children]
    assert fake_os.next_pid == 1002 and forks == [0, 0]  # no child was restarted
    # Only the stop's SIGTERMs reached the children: a reload does not touch them.
    assert [sig for what, _, sig, _ in fake_os.events if what == "kill"] == [signal.SIGTERM] * 2


@pytest.mark.usefixtures("own_signals")
def test_a_failing_reload_is_logged_and_the_daemon_goes_on(
    control: ControlBlock, clock: Clock, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_reload() -> None:
        raise ValueError("line 3: unknown provider 'nope'")

    code, _, ticks = _run_with_signals(
        control, clock, bad_reload, [signal.SIGHUP, None, None, signal.SIGINT]
    )
    assert code == 0 and len(ticks) == 4  # it went on ticking until SIGINT
    assert "reload failed, nothing changed: line 3: unknown provider 'nope'" in caplog.text


@pytest.mark.usefixtures("own_signals")
def test_sighup_without_a_reload_hook_is_ignored(
    control: ControlBlock, clock: Clock, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    code, _, ticks = _run_with_signals(control, clock, None, [signal.SIGHUP, signal.SIGTERM])
    assert code == 0 and len(ticks) == 2
    assert "SIGHUP: nothing to reload; ignored" in caplog.text


class RecordingService:
    """What the supervisor tells its service manager, in order, with the fake OS's kills."""

    def __init__(self, fake_os: FakeOS) -> None:
        self.fake_os = fake_os
        self.calls: list[tuple[str, ...]] = []

    def _note(self, *call: str) -> None:
        kills = sum(1 for e in self.fake_os.events if e[0] == "kill")
        self.calls.append((*call, f"kills={kills}"))

    def beat(self) -> None:
        self._note("beat")

    def tick(self) -> None:
        self._note("tick")

    def reloading(self) -> None:
        self._note("reloading")

    def reloaded(self, error: str) -> None:
        self._note("reloaded", error)

    def stopping(self, why: str) -> None:
        self._note("stopping", why)


@pytest.mark.usefixtures("own_signals")
def test_service_hears_ticks_reloads_and_the_stop_before_children_are_signalled(
    control: ControlBlock, clock: Clock, fake_os: FakeOS
) -> None:
    def bad_reload() -> None:
        raise ValueError("line 3: unknown provider 'nope'")

    svc = RecordingService(fake_os)
    code, _, ticks = _run_with_signals(
        control, clock, bad_reload, [signal.SIGHUP, None, signal.SIGTERM], svc
    )
    assert code == 0
    names = [c[0] for c in svc.calls]
    assert names.count("tick") == len(ticks)  # once per loop pass
    # Every wait beats: one per loop pass at least, and the stop's waits too.
    assert names.count("beat") >= len(ticks)
    r = names.index("reloading")
    assert svc.calls[r + 1][:2] == ("reloaded", "line 3: unknown provider 'nope'")
    stops = [c for c in svc.calls if c[0] == "stopping"]
    assert stops == [("stopping", "SIGTERM", "kills=0")]  # said before any child got SIGTERM


# --- heartbeats and restarts -------------------------------------------------------------------


def test_silent_child_is_killed_after_heartbeat_timeout_and_restarted_after_its_delay(
    control: ControlBlock, clock: Clock, fake_os: FakeOS
) -> None:
    child = ChildSpec("ingest-0", 0, _never)
    sup = Supervisor(CFG, control, [child], clock=clock, rng=random.Random(SEED))
    sup.spawn(child)
    control.set(0, Slot.READY, 1)
    first = child.pid

    # Fake times are sums of powers of two, so the comparisons below are exact.
    clock.advance(CFG.heartbeat_timeout - 0.5)
    control.add(0, Slot.HEARTBEAT)  # a beat just in time restarts the count
    sup.check_heartbeats()
    clock.advance(CFG.heartbeat_timeout)
    sup.check_heartbeats()
    assert fake_os.signals_to(first) == []  # exactly heartbeat_timeout of silence is allowed
    clock.advance(0.125)
    sup.check_heartbeats()
    assert fake_os.signals_to(first) == [signal.SIGKILL]
    sup.check_heartbeats()
    assert fake_os.signals_to(first) == [signal.SIGKILL]  # not killed twice

    died = clock()
    sup.reap_children()
    delay = Backoff(CFG.restart_backoff_base, CFG.restart_backoff_cap, rng=random.Random(SEED))
    expected = delay.next_delay()
    assert child.pid == 0 and child.restarts == 1 and child.boot_failures == 0
    assert child.next_start == died + expected
    clock.advance(expected * 0.99)
    sup.manage_children()
    assert child.pid == 0  # not before its delay
    clock.advance(expected * 0.02)
    sup.manage_children()
    assert child.pid == first + 1


def test_restart_delays_grow_with_each_quick_death_and_reset_after_a_healthy_run(
    control: ControlBlock, clock: Clock, fake_os: FakeOS
) -> None:
    child = ChildSpec("compute", 0, _never)
    sup = Supervisor(CFG, control, [child], clock=clock, rng=random.Random(SEED))
    schedule = Backoff(CFG.restart_backoff_base, CFG.restart_backoff_cap, rng=random.Random(SEED))
    sup.spawn(child)
    for n in range(4):  # crashes right after a ready start: the delay doubles
        control.set(0, Slot.READY, 1)
        fake_os.die(child.pid, 1 << 8)  # exit code 1
        sup.reap_children()
        expected = schedule.next_delay()
        assert child.next_start - clock() == pytest.approx(expected, abs=1e-9)
        assert min(5.0, 0.05 * 2**n) / 2 <= expected <= min(5.0, 0.05 * 2**n)
        clock.now = child.next_start
        sup.manage_children()
        assert child.pid and child.restarts == n + 1
    control.set(0, Slot.READY, 1)
    clock.advance(10.0)  # up for HEALTHY_AFTER: the schedule starts over
    fake_os.die(child.pid, 1 << 8)
    sup.reap_children()
    schedule.reset()
    assert child.next_start - clock() == pytest.approx(schedule.next_delay(), abs=1e-9)
    assert child.last_status == "exit code 1"


# --- orphaning ---------------------------------------------------------------------------------


def test_heartbeat_beats_once_per_interval_and_stops_an_orphan(
    control: ControlBlock, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    hb = Heartbeat(control, 2, 0.5, clock=clock)
    assert hb.beat() and control.get(2, Slot.HEARTBEAT) == 1
    clock.advance(0.25)
    assert hb.beat() and control.get(2, Slot.HEARTBEAT) == 1  # not due yet
    clock.advance(0.25)
    assert hb.beat() and control.get(2, Slot.HEARTBEAT) == 2
    assert not hb.orphaned()

    supervisor_pid = os.getppid()
    monkeypatch.setattr(os, "getppid", lambda: 1)  # the supervisor died: re-parented to init
    assert hb.orphaned()
    clock.advance(0.25)
    assert hb.beat()  # between beats nothing is checked
    clock.advance(0.25)
    assert hb.beat() is False and control.get(2, Slot.HEARTBEAT) == 3
    monkeypatch.setattr(os, "getppid", lambda: supervisor_pid + 1)  # a subreaper, not init
    assert hb.orphaned()
