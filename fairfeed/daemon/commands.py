"""Supervisor → child commands: typed objects, sent as JSON lines over a pipe, one per child.

The commands: :class:`~fairfeed.core.subscriptions.Subscribe` and
:class:`~fairfeed.core.subscriptions.Unsubscribe` (subscription changes), :class:`GrowRegistry`
(ids the supervisor added; sent to every child before any record can carry them) and
:class:`SetLogLevel`. :func:`encode` / :func:`decode` are their one wire form.

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
from dataclasses import dataclass
from typing import Any

import orjson

from fairfeed.core.subscriptions import Stream, Subscribe, Unsubscribe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrowRegistry:
    """The supervisor's registry as it is now (``Registry.snapshot()``): children extend theirs."""

    snapshot: dict[str, Any]


@dataclass(frozen=True)
class SetLogLevel:
    level: str


Command = Subscribe | Unsubscribe | GrowRegistry | SetLogLevel


class CommandError(ValueError):
    """A command line that is not a valid command (the message says what is wrong)."""


def encode(cmd: Command) -> bytes:
    """One JSON line."""
    if isinstance(cmd, Subscribe | Unsubscribe):
        op = "subscribe" if isinstance(cmd, Subscribe) else "unsubscribe"
        msg: dict[str, Any] = {
            "op": op,
            "streams": [[s.provider, s.venue, s.instrument, s.data_class] for s in cmd.streams],
        }
    elif isinstance(cmd, GrowRegistry):
        msg = {"op": "registry", "snapshot": cmd.snapshot}
    elif isinstance(cmd, SetLogLevel):
        msg = {"op": "log_level", "level": cmd.level}
    else:
        raise TypeError(f"not a command: {cmd!r}")
    return orjson.dumps(msg) + b"\n"


def decode(line: bytes) -> Command:
    """The command of one JSON line; raises CommandError naming what is wrong."""
    try:
        msg = orjson.loads(line)
        op = msg["op"]
        if op in ("subscribe", "unsubscribe"):
            streams = tuple(Stream(*map(str, s)) for s in msg["streams"])
            return Subscribe(streams) if op == "subscribe" else Unsubscribe(streams)
        if op == "registry":
            return GrowRegistry(msg["snapshot"])
        if op == "log_level":
            return SetLogLevel(str(msg["level"]))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise CommandError(f"malformed command {line[:200]!r}: {exc!r}") from None
    raise CommandError(f"unknown command {op!r}")


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

    def send(self, cmd: Command) -> bool:
        """Queue ``cmd``; False if the child has let too much pile up (it is likely hung)."""
        if self.w < 0 or len(self._out) > MAX_QUEUED:
            return False
        self._out += encode(cmd)
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

    def read(self) -> list[Command]:
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
                out.append(decode(line))
            except CommandError as exc:
                log.error("bad command from the supervisor: %s", exc)
        return out
