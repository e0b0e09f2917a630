"""Non-blocking stream-socket serving for the supervisor's select loop (no threads: it forks).

:class:`LoopServer` accepts, reads, queues answers and writes them as the socket takes them,
bounds what each client may cost (bytes and time), and refuses clients beyond a limit. A
subclass says what a request is (:meth:`LoopServer.on_data`) and how to refuse or time out a
client; the control socket and the metrics endpoint are the two.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import time

log = logging.getLogger(__name__)

#: Why a server let a client go (the `reason` label of `fairfeed_socket_drops_total`).
DROP_REASONS = ("busy", "evicted", "idle", "slow_request", "stalled", "overflow")


def peer_name(sock: socket.socket) -> str:
    """Who is at the other end, for a log line: the pid and uid of a Unix-socket peer (from
    the kernel, not the client's word), the address of a TCP one."""
    if sock.family == socket.AF_UNIX:
        try:
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            ))  # fmt: skip
        except OSError:
            return "unix peer (unknown)"
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            comm = "?"
        return f"pid {pid} ({comm}) uid {uid}"
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "peer (unknown)"
    return f"{host}:{port}"


class Client:
    """One connection: bytes in, bytes out, and whether to close once ``outbuf`` is sent."""

    __slots__ = ("closing", "inbuf", "last", "outbuf", "sock", "started")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last = time.monotonic()  # last byte read or written
        self.started = 0.0  # when the request now in ``inbuf`` began to arrive
        self.closing = False


class LoopServer:
    """Implements the supervisor's ``ServedIO`` over a listening socket set by ``open()``.

    Every client is bounded in memory and time: a request must arrive whole within
    ``request_timeout`` of its first byte (a trickle of bytes does not keep a slot), a client
    silent for ``idle_timeout`` or not taking its answers for that long is dropped, and one
    that sends more requests while its unsent answers exceed ``max_output`` bytes (it asks
    and does not read) is dropped at once. Why each client went is counted in :attr:`drops`.
    """

    what = "socket"  # for log lines
    label = "socket"  # the `socket` label of its metrics
    #: One request at a time: read nothing more while an answer is unsent (HTTP, where one
    #: answer can be megabytes); otherwise answers queue up to ``max_output``.
    serial = False
    #: At the client limit, close the longest-idle connection (no request in progress, nothing
    #: unsent) to make room instead of refusing the newcomer.
    evict_idle = False

    def __init__(
        self,
        *,
        max_clients: int,
        idle_timeout: float,
        request_timeout: float | None = None,
        max_output: int = 0,
    ) -> None:
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.request_timeout = idle_timeout if request_timeout is None else request_timeout
        self.max_output = max_output  # 0 = no bound (a serial server holds one answer)
        self.sock: socket.socket | None = None
        self.clients: dict[int, Client] = {}
        self.drops = dict.fromkeys(DROP_REASONS, 0)

    # -- subclass hooks --------------------------------------------------------------------
    def on_data(self, c: Client) -> None:
        """Consume complete requests from ``c.inbuf`` and append answers to ``c.outbuf``;
        stop when :meth:`full` says so."""
        raise NotImplementedError

    def refuse(self, c: Client) -> None:
        """Answer a client beyond ``max_clients`` (then it is closed)."""

    def on_idle(self, c: Client) -> None:
        """Answer a client idle for ``idle_timeout`` (then it is closed)."""

    def on_slow(self, c: Client) -> None:
        """Answer a client whose request did not arrive within ``request_timeout``."""

    # -- state -----------------------------------------------------------------------------
    def full(self, c: Client) -> bool:
        """Whether ``c`` may be given no more answers now."""
        if self.serial:
            return bool(c.outbuf)
        return bool(self.max_output) and len(c.outbuf) > self.max_output

    def buffered(self) -> int:
        """Bytes held for clients: requests not yet served and answers not yet sent."""
        return sum(len(c.inbuf) + len(c.outbuf) for c in self.clients.values())

    # -- ServedIO --------------------------------------------------------------------------
    def readers(self) -> list[int]:
        if self.sock is None:
            return []
        return [
            self.sock.fileno(),
            *(
                fd
                for fd, c in self.clients.items()
                if not c.closing and not (self.serial and c.outbuf)
            ),
        ]

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
            if c.outbuf:
                if now - c.last > self.idle_timeout:  # answers not taken: it stopped reading
                    self._give_up(fd, c, "stalled")
            elif c.closing:
                continue
            elif c.inbuf and now - c.started > self.request_timeout:
                self.drops["slow_request"] += 1
                self.on_slow(c)
                c.closing = True
                self._write(fd, c)
            elif not c.inbuf and now - c.last > self.idle_timeout:
                self.drops["idle"] += 1
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
            if len(self.clients) >= self.max_clients and not self._evict():
                self.drops["busy"] += 1
                self.clients[conn.fileno()] = c
                self.refuse(c)
                c.closing = True
                self._write(conn.fileno(), c)
                continue
            self.clients[conn.fileno()] = c

    def _evict(self) -> bool:
        """Make room by closing the longest-idle client, if allowed and there is one."""
        if not self.evict_idle:
            return False
        idle = [
            (c.last, fd) for fd, c in self.clients.items() if not (c.inbuf or c.outbuf or c.closing)
        ]
        if not idle:
            return False
        self.drops["evicted"] += 1
        self._drop(min(idle)[1])
        return True

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
        now = c.last = time.monotonic()
        if not c.inbuf:
            c.started = now
        c.inbuf += data
        if self._serve_input(fd, c):
            self._write(fd, c)

    def _serve_input(self, fd: int, c: Client) -> bool:
        """Serve what ``c.inbuf`` holds; False when that dropped the client."""
        before = len(c.inbuf)
        self.on_data(c)
        if c.inbuf and len(c.inbuf) < before:
            c.started = time.monotonic()  # a request was served; what is left began since
        if c.inbuf and not self.serial and self.full(c):
            # More requests while over the bound: it asks without reading. One large answer
            # alone is fine (it is sent as the socket takes it).
            self._give_up(fd, c, "overflow")
            return False
        return True

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
            next_request = not c.outbuf and self.serial and c.inbuf and not c.closing
            if next_request and not self._serve_input(fd, c):
                return
        if c.closing:
            self._drop(fd)

    def _give_up(self, fd: int, c: Client, reason: str) -> None:
        """Drop a client that does not take its answers, with one log line naming it."""
        self.drops[reason] += 1
        log.warning(
            "%s: dropped client %s: %s (%d bytes of answers unsent)",
            self.what,
            peer_name(c.sock),
            "asks faster than it reads" if reason == "overflow" else "stopped reading",
            len(c.outbuf),
        )
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        c = self.clients.pop(fd, None)
        if c is not None:
            with contextlib.suppress(OSError):
                c.sock.close()
