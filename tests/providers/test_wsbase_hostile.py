"""Hostile and broken input never hurts an adapter (wsbase), over real sockets on 127.0.0.1.

A Binance server streams two instruments to a Binance adapter, one instrument per connection.
One connection then gets an oversized message (one frame, or fragments) or its handling of a
frame raises; the adapter must count it, dead-letter it where it is a message, keep its memory
bounded, and go on: the other connection delivers throughout, the hit one recovers.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import BinanceOptions
from fairfeed.core.records import CLASS_SPOT
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.binance import BinanceServer
from fairfeed.providers.base import IngestContext
from fairfeed.providers.binance.adapter import BinanceAdapter
from fairfeed.providers.wsbase import DEAD_LETTER_HEAD, WsAdapter, WsConnection
from tests.providers.harness import Sink
from tests.waiting import wait_for_async as wait_for

PRICES = {"BTC-USDT": 64000.0, "ETH-USDT": 3000.0}
REGISTRY = Registry.build([(s, CLASS_SPOT) for s in PRICES], [("binance", "binance")])
LIMIT = 64 << 10  # the test's max_message_bytes
pytestmark = pytest.mark.timeout(60)


def make(url: str, max_message_bytes: int = LIMIT) -> tuple[BinanceAdapter, Sink, DictCounters]:
    provider = ProviderConfig(
        name="binance", kind="binance", venue="binance", url=url,
        max_streams_per_connection=2,  # two streams per instrument: one instrument a connection
        stale_after=5.0, max_message_bytes=max_message_bytes,
        options=BinanceOptions(backoff_base=0.02, backoff_cap=0.1),
    )  # fmt: skip
    subs = tuple(Subscription.resolve(REGISTRY, "binance", "binance", s, "spot") for s in PRICES)
    sink, counters = Sink(), DictCounters()
    ctx = IngestContext(
        provider=provider, url=url, subscriptions=subs, registry=REGISTRY, emit=sink,
        counters=counters, dead_letter=sink.dead_letter,
    )  # fmt: skip
    return BinanceAdapter(ctx), sink, counters


def delivered(sink: Sink, conn: WsConnection) -> int:
    """Market records of ``conn``'s instrument emitted so far."""
    inst = conn.subs[0].instrument_id
    return sum(int(np.count_nonzero(b["instrument"] == inst)) for b in sink.batches)


async def streaming(adapter: WsAdapter, sink: Sink, server: BinanceServer) -> None:
    """Both connections subscribed and delivering; the server knows them as 0 and 1."""
    await wait_for(lambda: server.connections() == 2, what="two connections")
    await wait_for(
        lambda: all(c.subscribed and delivered(sink, c) for c in adapter.connections),
        what="both connections delivering",
    )


def hit_and_other(adapter: WsAdapter, server: BinanceServer) -> tuple[WsConnection, WsConnection]:
    """(the adapter connection the server accepted first, the other one)."""
    first = next(iter(server._conns.values()))
    port = first.ws.remote_address[1]
    a, b = adapter.connections
    local = a.transport.underlying_transport.get_extra_info("sockname")[1]
    return (a, b) if local == port else (b, a)


async def still_flowing(sink: Sink, conn: WsConnection, more: int = 20) -> None:
    n = delivered(sink, conn)
    await wait_for(lambda: delivered(sink, conn) >= n + more, what=f"{conn.name} delivering")


def test_default_limit_is_the_adapters_and_config_overrides_it():
    assert make("ws://x", 0)[0].max_message_bytes == 1 << 20  # Binance: the base's 1 MiB
    assert make("ws://x", 5000)[0].max_message_bytes == 5000


def test_oversized_single_frame_is_refused_counted_and_dead_lettered():
    """An 11 MiB frame (over picows' own 10 MiB default too): picows refuses it from its header;
    the connection reconnects, the adapter and the other connection keep running."""
    cfg = SimulatorConfig(prices=PRICES, rate=400, quote_ratio=0.5)
    size = 11 << 20

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters = make(server.url)
            task = asyncio.create_task(adapter.run())
            await streaming(adapter, sink, server)
            hit, other = hit_and_other(adapter, server)
            assert await server.send_oversized(size, index=0) == 1
            await wait_for(lambda: counters[Slot.OVERSIZED] or task.done(), what="the count")
            assert not task.done(), f"the adapter's run ended: {task.exception()!r}"
            assert counters[Slot.OVERSIZED] == 1
            await wait_for(lambda: hit.opened == 2 and hit.subscribed, what="the reconnect")
            await still_flowing(sink, hit)
            await still_flowing(sink, other)
            assert not task.done(), "the adapter's run ended"
            await adapter.close()
            await task
            return hit, other, sink, counters

    _, other, sink, counters = asyncio.run(main())
    assert other.opened == 1  # the other connection never noticed
    assert counters[Slot.PARSE_ERRORS] == 1
    assert counters[Slot.ADAPTER_FAILURES] == 0
    assert counters[Slot.RECONNECTS] == 1
    # dead-lettered with its real size; none of its payload was ever buffered
    assert sink.dead_sizes == [size]
    assert sink.dead[0][1] == b""
    assert "over max_message_bytes (65536)" in sink.dead[0][0]


def test_oversized_fragmented_message_stops_growing_and_the_connection_goes_on():
    """A 4 MiB message in 64 KiB fragments: reassembly stops at the limit, the head is
    dead-lettered with the real size, the rest dropped; the connection is not even closed."""
    cfg = SimulatorConfig(prices=PRICES, rate=400, quote_ratio=0.5)
    size = 4 << 20

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters = make(server.url)
            task = asyncio.create_task(adapter.run())
            await streaming(adapter, sink, server)
            hit, other = hit_and_other(adapter, server)
            assert await server.send_oversized(size, fragment=64 << 10, index=0) == 1
            await wait_for(lambda: counters[Slot.OVERSIZED] == 1, what="the oversized count")
            await still_flowing(sink, hit)
            await still_flowing(sink, other)
            assert not task.done(), "the adapter's run ended"
            await adapter.close()
            await task
            return hit, other, sink, counters

    hit, other, sink, counters = asyncio.run(main())
    assert hit.frag_peak <= LIMIT  # never held more than the limit of the message
    assert hit.frag is None
    assert hit.opened == other.opened == 1  # skipped, not reconnected
    assert counters[Slot.RECONNECTS] == counters[Slot.ADAPTER_FAILURES] == 0
    assert counters[Slot.PARSE_ERRORS] == 1
    assert sink.dead_sizes == [size]
    head = sink.dead[0][1]
    assert len(head) == DEAD_LETTER_HEAD and head.startswith(b'{"pad":"xxx')


def _trade_frame(conn: WsConnection, seq: int) -> str:
    """A valid Binance trade of ``conn``'s instrument, numbered ``seq``."""
    sym = conn.subs[0].instrument.replace("-", "")
    return (
        f'{{"stream":"{sym.lower()}@trade","data":{{"e":"trade","E":1700000000001,'
        f'"s":"{sym}","t":{seq},"p":"64000.5","q":"0.25","T":1700000000000,"m":false}}}}'
    )


def test_fragmented_message_within_the_limit_is_still_parsed():
    """The cap does not touch legitimate fragmented messages: a valid message sent in pieces
    is reassembled and delivered (no dead letter, no error)."""
    cfg = SimulatorConfig(prices=PRICES, rate=50, quote_ratio=0.5)
    seq = 987_654_321  # far above the server's own trade ids

    def ours(sink: Sink) -> np.ndarray:
        r = sink.records
        return r[r["sequence"] == seq]

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters = make(server.url)
            task = asyncio.create_task(adapter.run())
            await streaming(adapter, sink, server)
            hit, _ = hit_and_other(adapter, server)
            msg = _trade_frame(hit, seq)
            conn = next(iter(server._conns.values()))
            await conn.ws.send([msg[:30], msg[30:90], msg[90:]])
            await wait_for(lambda: len(ours(sink)) == 1, what="the record")
            await adapter.close()
            await task
            return hit, sink, counters

    hit, sink, counters = asyncio.run(main())
    r = ours(sink)
    assert r["price"].tolist() == [64000.5] and r["size"].tolist() == [0.25]
    assert r["instrument"].tolist() == [hit.subs[0].instrument_id]
    assert hit.frag_peak > 90  # it went through the reassembly
    assert counters[Slot.PARSE_ERRORS] == counters[Slot.OVERSIZED] == 0 and not sink.dead


def test_a_binary_message_holding_json_is_refused_not_taken_as_data():
    """Every provider we read sends text: a binary message, even holding a valid trade (one
    frame, or fragments), is counted and dead-lettered, and the connection goes on."""
    cfg = SimulatorConfig(prices=PRICES, rate=50, quote_ratio=0.5)
    seq = 987_654_322

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters = make(server.url)
            task = asyncio.create_task(adapter.run())
            await streaming(adapter, sink, server)
            hit, _ = hit_and_other(adapter, server)
            msg = _trade_frame(hit, seq).encode()
            conn = next(iter(server._conns.values()))
            await conn.ws.send(msg)  # bytes: one binary frame
            await conn.ws.send([msg[:40], msg[40:]])  # a fragmented binary message
            await wait_for(lambda: len(sink.dead) == 2, what="two dead letters")
            await still_flowing(sink, hit)
            await adapter.close()
            await task
            return sink, counters, msg

    sink, counters, msg = asyncio.run(main())
    assert not (sink.records["sequence"] == seq).any()
    assert counters[Slot.PARSE_ERRORS] == 2 and counters[Slot.OVERSIZED] == 0
    assert [d[0] for d in sink.dead] == ["a binary message: the protocol sends text"] * 2
    assert [bytes(d[1]) for d in sink.dead] == [msg, msg]


class _Exploding:
    """A parser that raises once armed (a bug, or a library error inside the frame callback)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.armed = False

    def parse(self, payload, buf, n, ts):
        if self.armed:
            self.armed = False
            raise RuntimeError("boom inside on_frame")
        return self.inner.parse(payload, buf, n, ts)

    def parse_batch(self, messages, buf, n, ts):
        if self.armed:
            self.armed = False
            raise RuntimeError("boom inside on_frame")
        return self.inner.parse_batch(messages, buf, n, ts)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_an_exception_in_a_frame_callback_reconnects_only_that_connection(caplog):
    cfg = SimulatorConfig(prices=PRICES, rate=400, quote_ratio=0.5)

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters = make(server.url)
            task = asyncio.create_task(adapter.run())
            await streaming(adapter, sink, server)
            hit, other = hit_and_other(adapter, server)
            bomb = _Exploding(hit.parser)
            hit.parser = bomb  # type: ignore[assignment]
            bomb.armed = True
            await wait_for(
                lambda: counters[Slot.ADAPTER_FAILURES] or task.done(), what="the failure"
            )
            assert not task.done(), f"the adapter's run ended: {task.exception()!r}"
            assert counters[Slot.ADAPTER_FAILURES] == 1
            await wait_for(lambda: hit.opened == 2 and hit.subscribed, what="the reconnect")
            await still_flowing(sink, hit)
            await still_flowing(sink, other)
            assert not task.done(), "the adapter's run ended"
            await adapter.close()
            await task
            return hit, other, counters

    _, other, counters = asyncio.run(main())
    assert other.opened == 1
    assert counters[Slot.RECONNECTS] == 1
    assert counters[Slot.OVERSIZED] == 0
    text = caplog.text
    assert "boom inside on_frame" in text and "Traceback" in text
