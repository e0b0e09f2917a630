"""Non-blocking stream-socket serving for the supervisor's select loop (no threads: it forks).

:class:`LoopServer` accepts, reads, queues answers and writes them as the socket takes them,
drops idle clients and refuses those beyond a limit. A subclass says what a request is
(:meth:`LoopServer.on_data`) and how to refuse or time out a client; the control socket and the
metrics endpoint are the two.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time

log = logging.getLogger(__name__)


class Client:
    """One connection: bytes in, bytes out, and whether to close once ``outbuf`` is sent."""

    __slots__ = ("closing", "inbuf", "last", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last = time.monotonic()
        self.closing = False


class LoopServer:
    """Implements the supervisor's ``ServedIO`` over a listening socket set by ``open()``."""

    what = "socket"  # for log lines

    def __init__(self, *, max_clients: int, idle_timeout: float) -> None:
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.sock: socket.socket | None = None
        self.clients: dict[int, Client] = {}

    # -- subclass hooks --------------------------------------------------------------------
    def on_data(self, c: Client) -> None:
        """Consume complete requests from ``c.inbuf`` and append answers to ``c.outbuf``."""
        raise NotImplementedError

    def refuse(self, c: Client) -> None:
        """Answer a client beyond ``max_clients`` (then it is closed)."""

    def on_idle(self, c: Client) -> None:
        """Answer a client idle for ``idle_timeout`` (then it is closed)."""

    # -- ServedIO --------------------------------------------------------------------------
    def readers(self) -> list[int]:
        if self.sock is None:
            return []
        return [self.sock.fileno(), *(fd for fd, c in self.clients.items() if not c.closing)]

    def writers(self) -> list[int]:
        return [fd for fd, c in self.clients.items() if c.outbuf]

    def handle(self, readable: list[int], writable: list[int]) -> None:
        if self.sock is not None and self.sock.fileno() in readable:
            self._accept()
        for fd in readable:
            c = self.clients.get(fd)
            if c is not None:
                self._read(fd, c)
        for fd in writable:
            c = self.clients.get(fd)
            if c is not None:
                self._write(fd, c)

    def tick(self) -> None:
        now = time.monotonic()
        for fd, c in list(self.clients.items()):
            if now - c.last > self.idle_timeout and not c.outbuf:
                self.on_idle(c)
                c.closing = True
                self._write(fd, c)

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- connections -----------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: do not spin, try again next tick
                log.error("%s: accept failed: %s", self.what, exc)
                return
            conn.setblocking(False)
            c = Client(conn)
            self.clients[conn.fileno()] = c
            if len(self.clients) > self.max_clients:
                self.refuse(c)
                c.closing = True
                self._write(conn.fileno(), c)

    def _read(self, fd: int, c: Client) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        c.last = time.monotonic()
        c.inbuf += data
        self.on_data(c)
        self._write(fd, c)

    def _write(self, fd: int, c: Client) -> None:
        while c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    log.debug("%s client: %s", self.what, exc)
                self._drop(fd)
                return
            del c.outbuf[:n]
            c.last = time.monotonic()
        if c.closing:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        c = self.clients.pop(fd, None)
        if c is not None:
            with contextlib.suppress(OSError):
                c.sock.close()
