"""A TCP proxy that can cut the line: network faults between the daemon and a broker or provider.

There is no ``tc netem`` here; this stands in for the network. Modes:

- ``pass``: bytes flow both ways;
- ``blackhole``: connections stay open but nothing is forwarded any more (a hung path: requests
  may or may not have reached the far side, no answer comes back);
- ``down``: every connection is reset and new ones are refused at once (an unreachable host).

The far side keeps its state throughout, which is what a broker with durable storage does across
a network outage. For a Kafka broker, advertise the proxy's address (``LocalBroker(advertise=)``)
or clients find the broker's own address in the metadata and bypass the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("fairfeed.local.tcpproxy")

MODES = ("pass", "blackhole", "down")
_CHUNK = 1 << 16


class TcpProxy:
    """Listens on ``host:port`` (0 = pick one) and forwards to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1",
                 port: int = 0) -> None:  # fmt: skip
        self.target = (target_host, target_port)
        self.host, self.port = host, port
        self.mode = "pass"
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.set_mode("down")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._pipes):
            t.cancel()

    def set_mode(self, mode: str) -> None:
        """Switch to ``mode`` (``down`` resets every open connection)."""
        if mode not in MODES:
            raise ValueError(f"proxy mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if mode == "down":
            for w in list(self._writers):
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_w}
        pipes = [asyncio.create_task(self._pipe(reader, up_w)),
                 asyncio.create_task(self._pipe(up_r, writer))]  # fmt: skip
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pipes:
                t.cancel()
                self._pipes.discard(t)
            for w in (writer, up_w):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, OSError):
            while True:
                data = await src.read(_CHUNK)
                if not data or self.mode == "down":
                    return
                if self.mode == "blackhole":
                    continue  # swallowed: the far side never hears of it
                dst.write(data)
                await dst.drain()
