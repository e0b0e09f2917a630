"""What the supervisor tells systemd (``Type=notify``): ready, status, watchdog, reload, stop.

- ``READY=1`` once every child is up, ready and beating, Kafka output is flowing
  (:func:`fairfeed.daemon.readiness.readiness_problems`) and the broker has answered at least
  once (the start-up topic check, or a delivered message).
- ``STATUS=`` whenever what the daemon is doing changes (starting, ready, degraded, stopping).
- ``WATCHDOG=1`` from the supervisor's loop, every half ``WatchdogSec=``: a stuck loop stops
  the pings and systemd restarts the service.
- ``RELOADING=1`` around a SIGHUP reload, then ``READY=1`` again; ``STOPPING=1`` at the stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fairfeed.daemon.sdnotify import NotifyError, SdNotify, monotonic_usec

log = logging.getLogger("fairfeed.service")

ReadyCheck = Callable[[], tuple[bool, str]]
# A degraded state's words change every tick (how long, how many messages spooled): the loop's
# STATUS updates go out at most this often, the latest words each time.
STATUS_INTERVAL = 1.0


class ServiceNotifier:
    """The supervisor's side of sd_notify; every method is cheap and a no-op without systemd."""

    def __init__(
        self,
        notify: SdNotify,
        watchdog_interval: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notify = notify
        self.watchdog_interval = watchdog_interval
        self.ready_check: ReadyCheck | None = None
        self.ready_sent = False
        self._clock = clock
        self._last_ping = float("-inf")
        self._status = ""
        self._status_at = float("-inf")
        self._failed: set[str] = set()

    def _send(self, *lines: str) -> None:
        try:
            self.notify.send(*lines)
        except NotifyError as exc:
            # The data path matters more than telling systemd about it; a lost WATCHDOG ping
            # ends in a restart by systemd, which is the right outcome for a broken socket.
            key = lines[0].split("=", 1)[0]
            if key not in self._failed:
                self._failed.add(key)
                log.error("%s", exc)

    def status(self, text: str, *, throttle: bool = False) -> None:
        """``STATUS=text`` when it differs from the last one sent (with ``throttle``, not
        sooner than :data:`STATUS_INTERVAL` after it: the next call sends the latest text)."""
        if text == self._status:
            return
        now = self._clock()
        if throttle and now - self._status_at < STATUS_INTERVAL:
            return
        self._status = text
        self._status_at = now
        self._send(f"STATUS={text}")

    def beat(self) -> None:
        """``WATCHDOG=1`` if half the watchdog interval has passed since the last ping."""
        if self.watchdog_interval is None:
            return
        now = self._clock()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def tick(self) -> None:
        """Once per supervisor loop pass: ``READY=1`` when first ready, status on changes."""
        if self.ready_check is None:
            return
        ok, text = self.ready_check()
        if ok and not self.ready_sent:
            self.ready_sent = True
            self._status = text
            self._status_at = self._clock()
            self._send("READY=1", f"STATUS={text}")
            log.info("%s", text)
        else:
            self.status(text, throttle=True)

    def reloading(self) -> None:
        self._status = "reloading the configuration (SIGHUP)"
        self._send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", f"STATUS={self._status}")

    def reloaded(self, error: str) -> None:
        """After a reload, done or refused (``error``): ``READY=1`` ends the reload either way
        (unless the daemon was not ready yet: then :meth:`tick` sends it when it is)."""
        if error:
            self._status = f"reload failed, running on the previous configuration: {error}"
        else:
            self._status = "reloaded the configuration"
        if self.ready_sent:
            self._send("READY=1", f"STATUS={self._status}")
        else:
            self._send(f"STATUS={self._status}")

    def stopping(self, why: str) -> None:
        self._status = f"stopping: {why}"
        self._send("STOPPING=1", f"STATUS={self._status}")
