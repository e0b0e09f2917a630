"""The sd_notify protocol: newline-separated ``KEY=VALUE`` datagrams to ``$NOTIFY_SOCKET``.

Written directly (it is one ``sendto`` on a Unix datagram socket) rather than through a library.
A leading ``@`` in the address names the abstract namespace. Without ``NOTIFY_SOCKET`` (not
started by systemd as ``Type=notify``) every send is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("fairfeed.sdnotify")


class NotifyError(OSError):
    """A datagram could not be sent to the notify socket (the message names the address)."""


def _address(raw: str) -> str | bytes:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class SdNotify:
    """One service manager's notify socket; :meth:`send` is a no-op when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        if self.address is not None:
            if not self.address.startswith(("/", "@")):
                raise NotifyError(f"NOTIFY_SOCKET={self.address!r}: not a unix socket path")
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, env: MutableMapping[str, str] = os.environ) -> SdNotify:
        """The socket named by ``NOTIFY_SOCKET``, taken out of ``env`` so that no other process
        started from here (children, the local broker) talks to the service manager for us."""
        return cls(env.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        """Send ``lines`` (``KEY=VALUE`` each) as one datagram."""
        if self._sock is None or self.address is None:
            return
        data = "\n".join(lines).encode()
        try:
            self._sock.sendto(data, _address(self.address))
        except OSError as exc:
            raise NotifyError(
                exc.errno, f"sd_notify to {self.address} ({lines[0]}…): {exc.strerror}"
            ) from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: MutableMapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (systemd's advice), or
    None when no watchdog is armed for this process (``WATCHDOG_PID`` names another one)."""
    usec = env.pop("WATCHDOG_USEC", "")
    pid = env.pop("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and int(pid) != os.getpid():
        return None
    value = int(usec)
    if value <= 0:
        raise ValueError(f"WATCHDOG_USEC={usec!r}: not a positive number of microseconds")
    return value / 2e6


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds (``MONOTONIC_USEC=`` next to ``RELOADING=1``)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
