"""A WebSocket server that plays a capture's received frames to every client that connects.

Each client gets the frames of one recorded connection, from the first, as text frames:

* ``speed > 0``: with the original spacing divided by ``speed`` (1 = real time, 10 = ten times
  faster). Frame *i* is due at ``start + (ts_i - ts_0) / speed``, measured from when the client
  connected, so a slow send does not accumulate drift.
* ``speed == 0``: as fast as possible.

Afterwards the connection stays open and silent (``keep_open=True``; no pings either, so a
client's stale detection can be tested) or is closed with code 1000.

The replay does not speak the provider's protocol: what the client sends (subscribes, pings at
the application level) is read and ignored, and the frames are those recorded for the original
subscription, whatever the client asks for. WebSocket-level pings from the client are answered
(the library does that).

Run it by hand: ``python -m fairfeed.local.replay CAPTURE [--speed 1] [--conn ID]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fairfeed.local.capture import received

log = logging.getLogger(__name__)


class ReplayServer:
    """``async with ReplayServer(frames) as srv: connect(srv.url)``; or :meth:`start`/:meth:`stop`.

    ``frames`` is ``[(ts_ns, text), ...]`` (see :func:`capture.received`) or a capture path
    (``conn`` picks the recorded connection, None = the first).
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
        self.connections = 0  # clients served so far
        self.sent = 0  # frames sent, all clients
        self._server: Server | None = None

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
        return self

    async def stop(self) -> None:
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
        drain = asyncio.create_task(self._ignore_input(ws))
        try:
            await self._play(ws)
            if self.keep_open:
                await ws.wait_closed()
            else:
                await ws.close(1000, "end of capture")
        except ConnectionClosed:
            pass
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

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
