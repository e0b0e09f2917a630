"""`fairfeed record`: the configured WebSocket providers' frames, written as a capture.

One connection per provider (per route, where the protocol splits streams across endpoints),
carrying all its configured subscriptions: the adapter's own
subscribe requests are sent (so the recording is what the daemon would receive), and every
frame received is written with its receive time in integer nanoseconds
(:class:`~fairfeed.local.recordfmt.CaptureWriter`). ``fairfeed replay`` plays the file.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fairfeed.core.config import Config, ProviderConfig
from fairfeed.core.counters import DictCounters
from fairfeed.core.subscriptions import Subscription
from fairfeed.daemon.run import build_registry
from fairfeed.local.recordfmt import CaptureWriter
from fairfeed.providers.base import IngestContext
from fairfeed.providers.catalog import adapter_class
from fairfeed.providers.wsbase import WsAdapter, WsConnection


class RecordError(RuntimeError):
    """The configuration cannot be recorded (the message says why)."""


def record(cfg: Config, out: str | Path, seconds: float) -> int:
    """Record ``cfg``'s one WebSocket provider for ``seconds``; returns the frames written."""
    live = [p for p in cfg.providers if p.serve is None and p.replay is None]
    if len(live) != 1:
        raise RecordError(
            f"{cfg.source}: a recording holds one provider; the configuration has {len(live)} "
            "without [providers.serve] or [providers.replay]"
        )
    p = live[0]
    adapter = _adapter(cfg, p)
    subs = adapter.ctx.subscriptions
    instruments = list(dict.fromkeys(s.instrument for s in subs))
    header = {"exchange": p.venue, "fairfeed": {"kind": p.kind, "feed": p.feed,
              "venue": p.venue, "instruments": instruments}}  # fmt: skip
    try:
        writer = CaptureWriter(out, header)
    except (OSError, ValueError) as exc:
        raise RecordError(str(exc)) from None
    try:
        return asyncio.run(_record(adapter, subs, writer, seconds))
    finally:
        writer.close()


def _adapter(cfg: Config, p: ProviderConfig) -> WsAdapter:
    registry = build_registry(cfg)
    streams = [s for s in cfg.streams() if s.provider == p.name]
    subs = tuple(
        Subscription.resolve(registry, p.name, s.venue, s.instrument, s.data_class) for s in streams
    )
    ctx = IngestContext(
        provider=p, url=p.url, subscriptions=subs, registry=registry,
        emit=lambda records: None, counters=DictCounters(),
    )  # fmt: skip
    adapter = adapter_class(p.kind)(ctx)
    if not isinstance(adapter, WsAdapter):
        raise RecordError(f"provider {p.name!r}: only WebSocket providers can be recorded")
    return adapter


async def _record(
    adapter: WsAdapter, subs: tuple[Subscription, ...], writer: CaptureWriter, seconds: float
) -> int:
    deadline = time.monotonic() + seconds
    counts = await asyncio.gather(*(
        _record_route(adapter, subs, route, i, writer, deadline)
        for i, route in enumerate(adapter.routes)
    ))  # fmt: skip
    return sum(counts)


async def _record_route(
    adapter: WsAdapter,
    subs: tuple[Subscription, ...],
    route: str,
    index: int,
    writer: CaptureWriter,
    deadline: float,
) -> int:
    """One connection (one per route of the protocol), as the daemon would open it."""
    conn_id = f"{adapter.ctx.provider.name}.ws.{index + 1}"
    conn = WsConnection(adapter, index, subs, route)
    url = adapter.url_for(conn)
    adapter.on_open(conn)
    frames = 0
    try:
        ws = await connect(url, max_size=None, additional_headers=adapter.extra_headers())
    except (OSError, TimeoutError) as exc:
        raise RecordError(f"cannot connect to {url}: {exc}") from None
    async with ws:
        writer.connect(conn_id, url, time.time_ns())
        for msg in adapter.subscribe_messages(conn, subs):
            text = msg.decode() if isinstance(msg, bytes) else msg
            await ws.send(text)
            writer.send(conn_id, text, time.time_ns())
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(ws.recv(), left)
            except (TimeoutError, ConnectionClosed):
                break
            ts = time.time_ns()
            writer.recv(conn_id, data if isinstance(data, str) else data.decode(), ts)
            frames += 1
    return frames
