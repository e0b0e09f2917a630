"""A WebSocket server that plays a capture's received frames back to clients.

Two modes (``docs/providers/replay.md``):

* **Raw** (``protocol=None``): every client gets the frames of one recorded connection, from the
  first, whatever it sends; what the client sends is read and ignored.
* **Protocol** (``protocol=`` a :class:`~fairfeed.local.replayproto.ReplayProtocol`, what the
  daemon uses): the server answers each subscribe the way the venue does, and every recorded
  frame goes to the clients subscribed to its symbols, **once**: the server keeps one playback
  position per symbol, shared by all its connections. Two workers holding two partitions each
  get their own symbols' frames; a client that reconnects continues where its symbols' frames
  are, never from the start. Frames of no symbol (heartbeats, status) go to every subscribed
  client; the recording's own subscribe answers are left out. ``finished`` is set once every
  expected (``expect``) and every subscribed symbol has been played to its last frame.

Timing, in both modes:

* ``speed > 0``: with the original spacing divided by ``speed`` (1 = real time, 10 = ten times
  faster). Frame *i* is due at ``start + (ts_i - ts_0) / speed`` so a slow send does not
  accumulate drift; ``start`` is the client's connect time (raw), or the moment every expected
  symbol is subscribed (protocol: one clock for all connections; a symbol subscribed later
  catches up at once).
* ``speed == 0``: as fast as possible.

Afterwards the connection stays open and silent (``keep_open=True``; no pings either, so a
client's stale detection can be tested) or is closed with code 1000. WebSocket-level pings from
the client are answered (the library does that).

Run it by hand: ``python -m fairfeed.local.replay CAPTURE [--speed 1] [--conn ID]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fairfeed.local.capture import received
from fairfeed.local.replayproto import ANSWER, Client, ReplayProtocol

log = logging.getLogger(__name__)

GATE_TIMEOUT = 10.0  # seconds to wait for every expected symbol before playing anyway


class ReplayServer:
    """``async with ReplayServer(frames) as srv: connect(srv.url)``; or :meth:`start`/:meth:`stop`.

    ``frames`` is ``[(ts_ns, text), ...]`` (see :func:`capture.received`) or a capture path
    (``conn`` picks the recorded connection, None = the first). ``protocol`` switches to the
    protocol mode (module docstring); ``expect`` are the wire symbols the clients will
    subscribe (the playback clock starts once they are, and ``finished`` waits for them).
    """

    def __init__(
        self,
        frames: Sequence[tuple[int, str]] | str | Path,
        *,
        speed: float = 1.0,
        keep_open: bool = True,
        conn: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        protocol: ReplayProtocol | None = None,
        expect: Iterable[str] = (),
    ) -> None:
        if isinstance(frames, (str, Path)):
            self.conn, frames = received(frames, conn)
        else:
            self.conn = conn or ""
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.frames = list(frames)
        self.speed = speed
        self.keep_open = keep_open
        self.host = host
        self.port = port
        self.protocol = protocol
        self.expect = {s.upper() for s in expect}
        self.connections = 0  # clients served so far
        self.sent = 0  # frames sent (answers included), all clients
        self.finished = asyncio.Event()  # protocol mode: every symbol played to its end
        self._server: Server | None = None
        # protocol mode: the frames that are data (recorded answers left out), their symbols
        self.timeline: list[tuple[int, str, frozenset[str]]] = []
        self.last: dict[str, int] = {}  # symbol -> index of its last frame in the timeline
        self.cursor: dict[str, int] = {}  # symbol -> index of its next frame to play
        self.subscribed: set[str] = set()  # every symbol any client subscribed so far
        self._gate = asyncio.Event()  # the shared clock runs
        self._start = 0.0
        self._gate_task: asyncio.Task | None = None
        if protocol is not None:
            self._index(protocol)

    def _index(self, protocol: ReplayProtocol) -> None:
        for ts, text in self.frames:
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError:
                msg = None
            syms = protocol.frame_symbols(msg) if isinstance(msg, dict) else frozenset()
            if syms is ANSWER:
                continue
            for sym in syms:
                self.last[sym] = len(self.timeline)
            self.timeline.append((ts, text, syms))

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> ReplayServer:
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            ping_interval=None,  # heartbeat-less: the replay sends nothing but the capture
            max_size=None,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.protocol is not None and self.expect:
            self._gate_task = asyncio.create_task(self._gate_timeout())
        return self

    async def stop(self) -> None:
        if self._gate_task is not None:
            self._gate_task.cancel()
            self._gate_task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ReplayServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        if self.protocol is not None:
            await self._serve(ws, self.protocol)
            return
        drain = asyncio.create_task(self._ignore_input(ws))
        try:
            await self._play(ws)
            await self._end(ws)
        except ConnectionClosed:
            pass
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

    async def _end(self, ws: ServerConnection) -> None:
        if self.keep_open:
            await ws.wait_closed()
        else:
            await ws.close(1000, "end of capture")

    async def _play(self, ws: ServerConnection) -> None:
        frames = self.frames
        if not frames:
            return
        if self.speed == 0:
            for _, text in frames:
                await ws.send(text)
                self.sent += 1
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        t0 = frames[0][0]
        scale = 1e-9 / self.speed
        for ts, text in frames:
            delay = start + (ts - t0) * scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(text)
            self.sent += 1

    @staticmethod
    async def _ignore_input(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    # -- protocol mode -------------------------------------------------------------------------
    async def _serve(self, ws: ServerConnection, proto: ReplayProtocol) -> None:
        client = Client()
        wake = asyncio.Event()
        path = ws.request.path if ws.request is not None else ""
        if proto.url_symbols(path):
            client.symbols |= proto.url_symbols(path)
            self._subscribed(client.symbols)
            wake.set()
        reader = asyncio.create_task(self._read(ws, proto, client, wake))
        player = asyncio.create_task(self._walk(ws, proto, client, wake))
        try:
            # the client leaving ends the reader; a closing replay (keep_open=False) the player
            await asyncio.wait([reader, player], return_when=asyncio.FIRST_COMPLETED)
            if player.done() and player.exception() is None:
                await self._end(ws)
        except ConnectionClosed:
            pass
        finally:
            for task in (reader, player):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    async def _read(
        self, ws: ServerConnection, proto: ReplayProtocol, client: Client, wake: asyncio.Event
    ) -> None:
        """Answer what the client sends; a new subscription wakes its player."""
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    msg = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(msg, dict):
                    continue
                before = set(client.symbols)
                for answer in proto.on_client(client, msg):
                    await self._send(ws, proto, client, answer)
                if client.symbols - before:
                    self._subscribed(client.symbols)
                    wake.set()

    def _subscribed(self, symbols: set[str]) -> None:
        self.subscribed |= symbols
        if not self._gate.is_set() and self.expect <= self.subscribed:
            self._open_gate()

    def _open_gate(self) -> None:
        if not self._gate.is_set():
            self._start = asyncio.get_running_loop().time()
            self._gate.set()
            self._check_finished()

    async def _gate_timeout(self) -> None:
        await asyncio.sleep(GATE_TIMEOUT)
        missing = self.expect - self.subscribed
        if missing and not self._gate.is_set():
            log.warning("replay %s: %d expected symbols never subscribed (%s...): playing anyway",
                        self.conn, len(missing), ", ".join(sorted(missing)[:5]))  # fmt: skip
            self._open_gate()

    async def _send(
        self, ws: ServerConnection, proto: ReplayProtocol, client: Client, text: str
    ) -> None:
        await ws.send(proto.rewrite(client, text))
        client.messages += 1
        self.sent += 1

    async def _walk(
        self, ws: ServerConnection, proto: ReplayProtocol, client: Client, wake: asyncio.Event
    ) -> None:
        """Play the timeline to this client: its symbols' frames not yet played by anyone."""
        timeline, cursor = self.timeline, self.cursor
        loop = asyncio.get_running_loop()
        scale = 1e-9 / self.speed if self.speed else 0.0
        t0 = timeline[0][0] if timeline else 0
        while True:
            await wake.wait()
            wake.clear()
            await self._gate.wait()
            mine = set(client.symbols)
            pos = min((cursor.get(s, 0) for s in mine), default=len(timeline))
            floor = pos  # connection-level frames from here on
            while pos < len(timeline):
                if wake.is_set():  # subscribed more: maybe earlier frames of a new symbol
                    wake.clear()
                    mine = set(client.symbols)
                    pos = min([pos, *(cursor.get(s, 0) for s in mine)])
                ts, text, syms = timeline[pos]
                if syms:
                    due = [s for s in syms if s in mine and cursor.get(s, 0) <= pos]
                    if not due:
                        pos += 1
                        continue
                elif pos < floor or not mine:
                    pos += 1
                    continue
                if scale:
                    delay = self._start + (ts - t0) * scale - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if syms:  # another connection may have played it meanwhile
                    due = [s for s in syms if s in client.symbols and cursor.get(s, 0) <= pos]
                    if not due:
                        pos += 1
                        continue
                    for s in due:
                        cursor[s] = pos + 1
                await self._send(ws, proto, client, text)
                pos += 1
            self._check_finished()
            if not self.keep_open and not wake.is_set():
                return

    def _check_finished(self) -> None:
        if self.finished.is_set() or not self._gate.is_set():
            return
        last, cursor = self.last, self.cursor
        if all(cursor.get(s, 0) > last.get(s, -1) for s in self.expect | self.subscribed):
            self.finished.set()


async def _main(args: argparse.Namespace) -> None:
    srv = ReplayServer(
        args.capture, speed=args.speed, keep_open=not args.close, conn=args.conn, port=args.port
    )
    async with srv:
        print(f"replaying {len(srv.frames)} frames of {srv.conn} on {srv.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", help="a .ws.<n> or .jsonl.zst capture")
    ap.add_argument("--speed", type=float, default=1.0, help="time scale, 0 = as fast as possible")
    ap.add_argument("--conn", default=None, help="recorded connection id or URL (default: first)")
    ap.add_argument("--close", action="store_true", help="close after the last frame")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
