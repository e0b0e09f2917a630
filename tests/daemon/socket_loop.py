"""Test helpers for the supervisor's socket servers (control socket, metrics HTTP): driving one
as the supervisor does, and a client that trickles a request a byte at a time."""

from __future__ import annotations

import select
import socket
import threading
from typing import Any


class SelectLoop:
    """Opens ``server`` and drives it by a select loop in a thread, as the supervisor does."""

    def __init__(self, server: Any) -> None:
        self.server = server
        server.open()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            r, w, _ = select.select(self.server.readers(), self.server.writers(), [], 0.02)
            self.server.handle(r, w)
            self.server.tick()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.server.close()


def trickle(sock: socket.socket, data: bytes, interval: float) -> bytes:
    """Send ``data`` one byte per ``interval`` seconds until the server answers or closes;
    returns the answer (b"" if none came)."""
    sock.settimeout(interval)
    for byte in data:
        try:
            sock.send(bytes([byte]))
            answer = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return b""
        if answer:
            return answer
    return b""
