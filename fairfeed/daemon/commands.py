"""Supervisor → child commands: JSON lines over a pipe, one pipe per child.

The supervisor never blocks on a child: messages are queued per pipe and written when the pipe
has room (each loop tick). A child reads its end without blocking: the ingest workers from their
event loop (``add_reader``), the compute process once per pass. A pipe is renewed at every spawn,
so a restarted child never reads what was meant for its predecessor (it was forked with the
supervisor's current state anyway).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import orjson

log = logging.getLogger(__name__)

MAX_QUEUED = 16 << 20  # bytes queued for one child before commands are refused


class CommandPipe:
    """One child's command channel; the supervisor holds the write end."""

    def __init__(self) -> None:
        self.r = self.w = -1
        self._out = bytearray()

    # -- supervisor side -----------------------------------------------------------------
    def renew(self) -> None:
        """A fresh pipe for the next spawn (pending commands are dropped: the child starts
        from the supervisor's current state)."""
        self.close()
        self.r, self.w = os.pipe()
        self._out.clear()

    def parent_side(self) -> None:
        """After fork, in the supervisor: keep only the write end."""
        os.close(self.r)
        self.r = -1
        os.set_blocking(self.w, False)

    def send(self, msg: dict[str, Any]) -> bool:
        """Queue ``msg``; False if the child has let too much pile up (it is likely hung)."""
        if self.w < 0 or len(self._out) > MAX_QUEUED:
            return False
        self._out += orjson.dumps(msg) + b"\n"
        self.flush()
        return True

    def flush(self) -> None:
        """Write what the pipe takes now."""
        while self._out and self.w >= 0:
            try:
                n = os.write(self.w, self._out)
            except BlockingIOError:
                return
            except OSError as exc:  # the child is gone; its successor gets a new pipe
                log.debug("command pipe: %s", exc)
                self._out.clear()
                return
            del self._out[:n]

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.r = self.w = -1

    # -- child side ----------------------------------------------------------------------
    def child_side(self) -> CommandReader:
        """After fork, in the child: keep only the read end."""
        os.close(self.w)
        self.w = -1
        return CommandReader(self.r)


class CommandReader:
    """Reads complete JSON lines from a pipe without blocking."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._buf = b""

    def read(self) -> list[dict[str, Any]]:
        """Every complete command available now (malformed lines are logged and skipped)."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:  # the supervisor is gone
                break
            chunks.append(data)
        if not chunks:
            return []
        self._buf += b"".join(chunks)
        *lines, self._buf = self._buf.split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                log.error("bad command from the supervisor: %r", line[:200])
        return out
