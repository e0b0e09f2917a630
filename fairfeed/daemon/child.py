"""What every forked child does first, and the exit codes children report to the supervisor."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import time
from collections.abc import Callable

from fairfeed.core.counters import Slot
from fairfeed.daemon.proctitle import set_title
from fairfeed.ipc.control import ControlBlock

# Exit codes with a meaning for the supervisor (gunicorn reserves such codes too).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BOOT_ERROR = 3  # the child could not even start: restarting will not help

_PR_SET_PDEATHSIG = 1


def prepare_child(name: str, log_level: str) -> None:
    """Reset the supervisor's signal setup in a fresh child and tie its life to the parent.

    Ctrl-C in a terminal sends SIGINT to the whole process group; children ignore it and stop
    only when the supervisor sends SIGTERM, so the stop order stays the supervisor's.
    """
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGHUP, signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the orphan check below still applies
        pass
    configure_logging(name, log_level)
    set_title(name)


def enter_child(name: str, log_level: str, control: ControlBlock, slot: int) -> None:
    """:func:`prepare_child`, then publish this process's pid in its slot."""
    prepare_child(name, log_level)
    control.set(slot, Slot.PID, os.getpid())


def settle_heap() -> None:
    """Call once set up, before the hot loop: take what the process has built so far (Numba's,
    numpy's and the daemon's own objects, over a hundred thousand) out of the cyclic garbage
    collector's reach (``gc.freeze``). Otherwise each full collection traverses them all, a
    pause of ~45 ms of the hot loop every few seconds: the p99 of every latency hop."""
    gc.collect()
    gc.freeze()


def sigterm_event() -> asyncio.Event:
    """An event set by SIGTERM, for a child running an asyncio loop (call inside the loop)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


def configure_logging(name: str, level: str) -> None:
    """One stderr handler with the process role and pid in every line."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s [{name} %(process)d] %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (every connect / disconnect) would drown our own lines at INFO.
    for noisy in ("websockets", "picows"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class Heartbeat:
    """Bumps the child's heartbeat counter; the supervisor restarts a child that stops beating.

    Also notices when the supervisor is gone (the parent pid changed) so an orphan stops.
    """

    def __init__(
        self,
        control: ControlBlock,
        slot: int,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._control = control
        self._clock = clock
        self._slot = slot
        self._interval = interval
        self._ppid = os.getppid()
        self._next = 0.0

    def beat(self) -> bool:
        """Beat if due; returns False when the supervisor has died."""
        now = self._clock()
        if now >= self._next:
            self._next = now + self._interval
            self._control.add(self._slot, Slot.HEARTBEAT)
            return not self.orphaned()
        return True

    @property
    def due_at(self) -> float:
        """Clock time of the next beat (the caller may sleep until then)."""
        return self._next

    def orphaned(self) -> bool:
        """Whether the supervisor is gone (this process was re-parented)."""
        return os.getppid() != self._ppid
