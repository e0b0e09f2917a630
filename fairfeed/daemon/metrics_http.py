"""The supervisor's HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``.

A small non-blocking HTTP/1.1 server (GET and HEAD, keep-alive) served by the supervisor's
``select`` loop like the control socket (:class:`fairfeed.daemon.supervisor.ServedIO`): no
thread in a process that forks. A request head is capped in size and must arrive within
``header_timeout`` of its first byte (else ``408``); idle connections are closed after
``idle_timeout``; requests on one connection are served one at a time. At ``max_clients`` the
longest-idle connection is closed to make room, so idle connections can never keep a health
check out; only when every connection is busy does a newcomer get ``503``. A scrape builds its
body synchronously (the collector reads shared memory; ``docs/metrics.md`` gives its cost).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from fairfeed.daemon.sockserve import Client, LoopServer

log = logging.getLogger(__name__)

MAX_REQUEST = 16384
_TEXT = "text/plain; charset=utf-8"
Check = Callable[[], tuple[bool, str]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


class MetricsServerError(RuntimeError):
    """The endpoint cannot listen (bad address, port in use)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsHTTPServer(LoopServer):
    """Serves ``metrics()`` (exposition bytes, content type) and two health checks."""

    what = "metrics endpoint"
    label = "http"
    serial = True
    evict_idle = True

    def __init__(
        self,
        listen: str,
        metrics: Callable[[], tuple[bytes, str]],
        healthz: Check,
        readyz: Check,
        *,
        max_clients: int = 16,
        idle_timeout: float = 30.0,
        header_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            max_clients=max_clients, idle_timeout=idle_timeout, request_timeout=header_timeout
        )
        self.listen = listen
        self.metrics = metrics
        self.healthz = healthz
        self.readyz = readyz
        self.address: tuple[str, int] = ("", 0)
        self.requests = 0
        self.on_tick: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        host, port = self.address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def open(self) -> None:
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise MetricsServerError(f"cannot serve metrics on {self.listen}: {exc}") from exc
        self.sock = sock
        self.address = sock.getsockname()[:2]
        log.info("metrics on %s/metrics", self.url)

    # -- LoopServer hooks ----------------------------------------------------------------
    def tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()
        super().tick()

    def refuse(self, c: Client) -> None:
        self._respond(c, 503, b"too many connections\n", close=True)

    def on_slow(self, c: Client) -> None:
        self._respond(c, 408, b"request head not received in time\n", close=True)

    def on_data(self, c: Client) -> None:
        while not c.closing and not self.full(c):
            end = c.inbuf.find(b"\r\n\r\n", 0, MAX_REQUEST + 4)
            if end < 0:
                if len(c.inbuf) > MAX_REQUEST:
                    self._respond(c, 431, b"request head too large\n", close=True)
                return
            head = bytes(c.inbuf[:end]).decode("latin-1")
            del c.inbuf[: end + 4]
            self._serve(c, head)

    def _serve(self, c: Client, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond(c, 400, b"bad request line\n", close=True)
            return
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        if headers.get("content-length", "0") not in ("", "0"):
            self._respond(c, 400, b"request bodies are not accepted\n", close=True)
            return
        conn_hdr = headers.get("connection", "")
        close = conn_hdr == "close" or (version == "HTTP/1.0" and conn_hdr != "keep-alive")
        self.requests += 1
        if method not in ("GET", "HEAD"):
            self._respond(c, 405, b"only GET and HEAD\n", close=close, extra="Allow: GET, HEAD\r\n")
            return
        path = target.split("?", 1)[0]
        ctype = "text/plain; charset=utf-8"
        try:
            if path == "/metrics":
                body, ctype = self.metrics()
                status = 200
            elif path in ("/healthz", "/readyz"):
                ok, text = (self.healthz if path == "/healthz" else self.readyz)()
                status = 200 if ok else 503
                body = text.encode() + b"\n"
            elif path == "/":
                status, body = 200, b"fairfeed: /metrics /healthz /readyz\n"
            else:
                status, body = 404, b"not found\n"
        except Exception as exc:  # a broken collector must not take the supervisor down
            log.exception("metrics endpoint %s failed", path)
            status, body = 500, f"{type(exc).__name__}: {exc}\n".encode()
        self._respond(c, status, body, close=close, ctype=ctype, head_only=method == "HEAD")

    @staticmethod
    def _respond(
        c: Client, status: int, body: bytes, *, close: bool, ctype: str = _TEXT,
        head_only: bool = False, extra: str = "",
    ) -> None:  # fmt: skip
        hdr = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        )
        c.outbuf += hdr.encode()
        if not head_only:
            c.outbuf += body
        if close:
            c.closing = True
