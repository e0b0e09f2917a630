"""The supervisor: forks the children, watches them, restarts them, stops them in order.

Modelled on gunicorn's arbiter: signal handlers only enqueue the signal and wake the loop; one
loop dispatches ``handle_<signal>``, reaps children, checks heartbeats, spawns what is missing
and refreshes the live view. Restarts use capped, jittered backoff; a child that cannot even
boot ``max_boot_failures`` times in a row halts the supervisor instead of crash-looping.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fairfeed.core.backoff import Backoff
from fairfeed.core.config import DaemonConfig
from fairfeed.core.counters import Slot
from fairfeed.daemon.child import EXIT_BOOT_ERROR, EXIT_ERROR, EXIT_OK
from fairfeed.daemon.commands import CommandPipe
from fairfeed.ipc.control import ControlBlock

log = logging.getLogger("fairfeed.supervisor")

HEALTHY_AFTER = 10.0  # seconds up before a child's restart backoff is reset
BOOT_WAIT = 10.0  # at most this long for a `wait_ready` child before starting the others
EXIT_HALTED = 3  # the supervisor's own exit code when a child cannot boot
EXIT_STOP_TIMEOUT = 4  # children had to be killed at the stop deadline


class HaltServer(BaseException):
    """Stop the supervisor now; derives from BaseException so no ``except Exception`` eats it."""

    def __init__(self, reason: str, exit_status: int = EXIT_HALTED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


class ServedIO(Protocol):
    """Sockets the main loop serves between ticks (the control socket, the metrics endpoint)."""

    def readers(self) -> list[int]: ...
    def writers(self) -> list[int]: ...
    def handle(self, readable: list[int], writable: list[int]) -> None: ...
    def tick(self) -> None: ...


class ServiceHooks(Protocol):
    """What the supervisor tells its service manager (``daemon.service.ServiceNotifier``)."""

    def beat(self) -> None: ...
    def tick(self) -> None: ...
    def reloading(self) -> None: ...
    def reloaded(self, error: str) -> None: ...
    def stopping(self, why: str) -> None: ...


@dataclass
class ChildSpec:
    """One child process the supervisor keeps alive.

    ``target`` runs in the forked child and returns its exit code. Children stop in order of
    ``stop_phase`` (ingest workers before the compute process, so rings are drained last).
    """

    name: str
    slot: int
    target: Callable[[], int]
    stop_phase: int = 0
    wait_ready: bool = False  # at start, spawn the next children only once this one is ready
    pipe: CommandPipe | None = None  # supervisor → child commands (renewed at every spawn)
    pid: int = 0
    started: float = 0.0
    restarts: int = 0
    boot_failures: int = 0
    next_start: float = 0.0
    last_beat: int = 0
    last_beat_change: float = 0.0
    last_status: str = ""
    backoff: Backoff = field(default_factory=Backoff)


def describe_status(status: int) -> str:
    """A waitpid status in words."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


class Supervisor:
    """Runs ``children`` until SIGTERM / SIGINT (graceful stop) or a halt."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
    TICK = 0.1

    def __init__(
        self,
        cfg: DaemonConfig,
        control: ControlBlock,
        children: list[ChildSpec],
        on_tick: Callable[[Supervisor], None] | None = None,
        io: list[ServedIO] | None = None,
        on_hup: Callable[[], None] | None = None,
        service: ServiceHooks | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """``clock`` and ``rng`` (the restart jitter) are there for tests to make time and
        delays deterministic; a shared ``rng`` is fine, children draw from it in turn."""
        self.cfg = cfg
        self.control = control
        self.children = children
        self.on_tick = on_tick
        self.io: list[ServedIO] = list(io or ())
        self.on_hup = on_hup
        self.service = service
        self._clock = clock
        self.started = clock()
        self.stopping = False
        self.stop_reason = "stop requested"
        self._signals: list[int] = []
        self._pipe_r = self._pipe_w = -1
        for child in children:
            child.backoff = Backoff(
                base=cfg.restart_backoff_base,
                cap=cfg.restart_backoff_cap,
                rng=rng if rng is not None else random.Random(),
            )

    # -- signals --------------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_r, False)
        os.set_blocking(self._pipe_w, False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)
        try:
            os.write(self._pipe_w, b".")
        except OSError:  # pipe full: the loop is awake anyway
            pass

    def _sleep(self, timeout: float) -> None:
        """Wait for a signal, I/O of the served sockets, or ``timeout``; serve the I/O."""
        if self.service is not None:
            # Every wait of every loop (start, main, stop) passes here: a supervisor stuck
            # anywhere stops the watchdog pings.
            self.service.beat()
        served = self.io if not self.stopping else []
        readers = [self._pipe_r]
        writers: list[int] = []
        for io in served:
            readers += io.readers()
            writers += io.writers()
        try:
            ready, writable, _ = select.select(readers, writers, [], timeout)
        except InterruptedError:
            return
        if self._pipe_r in ready:
            try:
                while os.read(self._pipe_r, 512):
                    pass
            except BlockingIOError:
                pass
        for io in served:
            io.handle(ready, writable)
            io.tick()

    def handle_sigterm(self) -> None:
        log.info("SIGTERM: graceful stop")
        self.stopping = True
        self.stop_reason = "SIGTERM"

    def handle_sigint(self) -> None:
        log.info("SIGINT: graceful stop")
        self.stopping = True
        self.stop_reason = "SIGINT"

    def handle_sighup(self) -> None:
        if self.on_hup is None:
            log.warning("SIGHUP: nothing to reload; ignored")
            return
        log.info("SIGHUP: reloading the configuration")
        if self.service is not None:
            self.service.reloading()
        error = ""
        try:
            self.on_hup()
        except Exception as exc:  # a bad file must not stop the daemon
            log.error("reload failed, nothing changed: %s", exc)
            error = str(exc)
        if self.service is not None:
            self.service.reloaded(error)

    def handle_sigchld(self) -> None:
        pass  # reaping happens every tick

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until stopped; returns the process exit status."""
        self._install_signals()
        status = EXIT_OK
        try:
            for child in self.children:
                self.spawn(child)
                if child.wait_ready:
                    self._wait_ready(child, BOOT_WAIT)
            while not self.stopping:
                while self._signals:
                    name = signal.Signals(self._signals.pop(0)).name.lower()
                    getattr(self, f"handle_{name}")()
                if self.stopping:
                    break
                self.reap_children()
                self.check_heartbeats()
                self.manage_children()
                for child in self.children:
                    if child.pipe is not None:
                        child.pipe.flush()
                if self.on_tick is not None:
                    self.on_tick(self)
                if self.service is not None:
                    self.service.tick()
                self._sleep(self.TICK)
        except HaltServer as halt:
            log.error("halting: %s", halt.reason)
            print(f"fairfeed: halting: {halt.reason}", file=sys.stderr, flush=True)
            status = halt.exit_status
            self.stop_reason = f"halted: {halt.reason}"
        finally:
            if self.service is not None:
                self.service.stopping(self.stop_reason)
            stop_status = self.stop_children()
        return status if status != EXIT_OK else stop_status

    def _wait_ready(self, child: ChildSpec, timeout: float) -> None:
        """Wait until ``child`` is ready, has died, or ``timeout`` passed (then go on anyway)."""
        deadline = self._clock() + timeout
        while self._clock() < deadline and not self._signals:
            if self.control.get(child.slot, Slot.READY):
                return
            self.reap_children()
            if not child.pid:
                return
            self._sleep(0.01)

    def spawn(self, child: ChildSpec) -> None:
        """Fork ``child``; in the child run its target and never return."""
        self.control.reset_slot(child.slot)
        if child.pipe is not None:
            child.pipe.renew()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through its exit code
            code = EXIT_ERROR
            try:
                os.close(self._pipe_r)
                os.close(self._pipe_w)
                for other in self.children:  # other children's command pipes are not ours
                    if other is not child and other.pipe is not None:
                        other.pipe.close()
                code = child.target()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
            except BaseException:
                traceback.print_exc()
                code = EXIT_ERROR
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        if child.pipe is not None:
            child.pipe.parent_side()
        now = self._clock()
        child.pid = pid
        child.started = now
        child.last_beat = 0
        child.last_beat_change = now
        log.info("started %s (pid %d)", child.name, pid)

    def reap_children(self) -> None:
        """Collect exited children and schedule their restart (or halt)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._by_pid(pid)
            if child is None:
                continue
            self._on_exit(child, status)

    def _on_exit(self, child: ChildSpec, status: int) -> None:
        now = self._clock()
        was_ready = self.control.get(child.slot, Slot.READY) == 1
        child.pid = 0
        child.last_status = describe_status(status)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if code == EXIT_BOOT_ERROR or not was_ready:
            child.boot_failures += 1
            if child.boot_failures >= self.cfg.max_boot_failures:
                raise HaltServer(
                    f"{child.name} failed to boot {child.boot_failures} times in a row "
                    f"(last: {child.last_status}); see its log lines above"
                )
        else:
            child.boot_failures = 0
        if now - child.started >= HEALTHY_AFTER:
            child.backoff.reset()
        delay = child.backoff.next_delay()
        child.next_start = now + delay
        child.restarts += 1
        log.warning(
            "%s (pid %d) died: %s; restarting in %.2fs",
            child.name,
            self.control.get(child.slot, Slot.PID) or 0,
            child.last_status,
            delay,
        )

    def check_heartbeats(self) -> None:
        """Kill a child whose heartbeat counter has not moved for ``heartbeat_timeout``."""
        now = self._clock()
        for child in self.children:
            if not child.pid:
                continue
            beat = self.control.get(child.slot, Slot.HEARTBEAT)
            if beat != child.last_beat:
                child.last_beat = beat
                child.last_beat_change = now
            elif now - child.last_beat_change > self.cfg.heartbeat_timeout:
                log.error(
                    "%s (pid %d) missed heartbeats for %.1fs: killing it",
                    child.name,
                    child.pid,
                    now - child.last_beat_change,
                )
                self._kill(child.pid, signal.SIGKILL)
                child.last_beat_change = now  # reap restarts it; do not kill twice

    def manage_children(self) -> None:
        """Spawn children that are down and whose backoff delay has passed."""
        now = self._clock()
        for child in self.children:
            if not child.pid and now >= child.next_start:
                self.spawn(child)

    # -- stop -----------------------------------------------------------------------------
    def stop_children(self) -> int:
        """Stop children phase by phase within ``stop_timeout``; kill what is left at the end."""
        deadline = self._clock() + self.cfg.stop_timeout
        forced = False
        for phase in sorted({c.stop_phase for c in self.children}):
            group = [c for c in self.children if c.stop_phase == phase and c.pid]
            for child in group:
                self._kill(child.pid, signal.SIGTERM)
            while any(c.pid for c in group) and self._clock() < deadline:
                self._reap_quietly()
                if any(c.pid for c in group):
                    self._sleep(0.02)
        for child in self.children:
            if child.pid:
                log.error("%s (pid %d) did not stop in time: killing it", child.name, child.pid)
                self._kill(child.pid, signal.SIGKILL)
                forced = True
        while any(c.pid for c in self.children):
            self._reap_quietly(block=True)
        return EXIT_STOP_TIMEOUT if forced else EXIT_OK

    def _reap_quietly(self, block: bool = False) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                for c in self.children:
                    c.pid = 0
                return
            if pid == 0:
                return
            child = self._by_pid(pid)
            if child is not None:
                child.pid = 0
                child.last_status = describe_status(status)
                if status != 0:
                    log.warning("%s stopped: %s", child.name, child.last_status)
            if block:
                return

    def _by_pid(self, pid: int) -> ChildSpec | None:
        return next((c for c in self.children if c.pid == pid), None)

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
