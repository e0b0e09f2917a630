"""BinanceAdapter against BinanceServer over real sockets on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import time

import numpy as np
import pytest
from picows import WSListener, WSMsgType, ws_connect

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import BinanceOptions
from fairfeed.core.records import (
    CLASS_CODES,
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_GAP,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_TRADE,
    SIDE_BUY,
    SIDE_SELL,
    STATUS_CONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.ipc.pacer import Pacer
from fairfeed.local.binance import BinanceServer
from fairfeed.local.faults import Fault
from fairfeed.providers.base import IngestContext
from fairfeed.providers.binance.adapter import BinanceAdapter
from fairfeed.providers.wsbase import BEHIND_BYTES, ReadNap
from tests.providers.harness import Sink, schedule
from tests.waiting import wait_for_async as wait_for

SEED = 20260801  # the reconnect jitter of tests that bound retry times
PRICES = {"BTC-USDT": 64000.0, "ETH-USDT": 3000.0, "SOL-USDT": 150.0, "XRP-USDT": 0.5,
          "ADA-USDT": 0.4, "DOGE-USDT": 0.1, "BNB-USDT": 550.0}  # fmt: skip
REGISTRY = Registry.build(
    [("OTHER-USD", CLASS_SPOT)] + [(s, CLASS_SPOT) for s in PRICES],
    [("x", "y"), ("binance", "binance")],
)
pytestmark = pytest.mark.timeout(30)


def make(url: str, instruments=tuple(PRICES)[:3], *, feed: str = "", max_streams: int = 0,
         batch: int = 0, interval: float = 0.0, age: float = 0.0, stale: float = 2.0,
         url_streams: bool = False, rng: random.Random | None = None, flush_delay: float = 0.0,
         **kw):  # fmt: skip
    kw.setdefault("backoff_base", 0.02)
    kw.setdefault("backoff_cap", 0.1)
    provider = ProviderConfig(
        name="binance", kind="binance", venue="binance", url=url, feed=feed,
        max_streams_per_connection=max_streams, subscribe_batch=batch,
        subscribe_interval=interval, max_connection_age=age, stale_after=stale,
        options=BinanceOptions(url_streams=url_streams, **kw),
    )  # fmt: skip
    sink, counters, dead = Sink(), DictCounters(), []
    subs = tuple(
        Subscription.resolve(REGISTRY, "binance", "binance", i, "spot") for i in instruments
    )
    ctx = IngestContext(
        provider=provider, url=url, subscriptions=subs, registry=REGISTRY, emit=sink,
        counters=counters, dead_letter=lambda err, frame: dead.append((err, frame)), rng=rng,
        flush_delay=flush_delay,
    )  # fmt: skip
    adapter = BinanceAdapter(ctx)
    return adapter, sink, counters, dead


def expected(sent: list[str]) -> list[tuple]:
    """Records implied by the server's messages, decoded independently with json."""
    out = []
    for text in sent:
        m = json.loads(text)
        sym, kind = m["stream"].split("@")
        inst = next(REGISTRY.instrument_id(s) for s in PRICES if s.replace("-", "").lower() == sym)
        d = m["data"]
        if kind == "bookTicker":
            for k, p, q in ((KIND_BID, "b", "B"), (KIND_ASK, "a", "A")):
                out.append((inst, k, 0, float(d[p]), float(d[q]), d["u"], 0, 0))
        else:
            side = SIDE_SELL if d["m"] else SIDE_BUY
            seq = d["t"] if kind == "trade" else d["a"]
            out.append((inst, KIND_TRADE, side, float(d["p"]), float(d["q"]), seq,
                        d["T"] * 1_000_000, d["E"] * 1_000_000))  # fmt: skip
    return out


def as_tuples(r: np.ndarray) -> list[tuple]:
    cols = ("instrument", "kind", "side", "price", "size", "sequence", "ts_exchange", "ts_provider")
    return list(zip(*(r[c].tolist() for c in cols), strict=True))


@pytest.mark.parametrize("feed", ["", "aggTrade"])
def test_exact_records(feed):
    cfg = SimulatorConfig(prices=PRICES, rate=0, max_events=2000, quote_ratio=0.4, seed=1)

    async def main():
        async with BinanceServer("binance", cfg, keep_log=True) as server:
            adapter, sink, counters, _ = make(server.url, feed=feed)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.stats.events == 2000, what="all events")
            want = expected(server.sent)
            await wait_for(lambda: sink.n >= len(want), what="all records")
            await asyncio.sleep(0.05)
            await adapter.close()
            await task
            return server, want, sink, counters

    t0 = time.time_ns()
    server, want, sink, counters = asyncio.run(main())
    r = sink.records
    assert len(want) > 1000
    assert as_tuples(r) == want
    kinds = {json.loads(t)["stream"].split("@")[1] for t in server.sent}
    assert kinds == {"aggTrade" if feed else "trade", "bookTicker"}
    trades = r[r["kind"] == KIND_TRADE]
    assert set(trades["side"].tolist()) == {SIDE_BUY, SIDE_SELL}
    assert (trades["ts_provider"] > trades["ts_exchange"]).all()  # E after T
    assert (r["ts_receive"] >= t0).all() and (r["ts_receive"] <= time.time_ns()).all()
    assert (r["provider"] == REGISTRY.provider_id("binance")).all()
    assert (r["venue"] == REGISTRY.venue_id("binance")).all()
    assert (r["data_class"] == CLASS_SPOT).all()
    assert counters[Slot.RECORDS_IN] == len(r)
    assert counters[Slot.PARSE_ERRORS] == counters[Slot.GAPS] == counters[Slot.RECONNECTS] == 0
    assert sink.status(STATUS_CONNECTED) == 1


def test_stream_limit_splits_connections_and_url_streams():
    cfg = SimulatorConfig(prices=PRICES, rate=2000, quote_ratio=0.5)

    async def main():
        async with BinanceServer("binance", cfg, max_streams=4) as server:
            # 7 instruments x 2 streams, 4 streams per connection -> 4 connections
            adapter, sink, counters, _ = make(server.url, tuple(PRICES), max_streams=4)
            assert [len(c.subs) for c in adapter.connections] == [2, 2, 2, 1]
            task = asyncio.create_task(adapter.run())
            ids = {REGISTRY.instrument_id(s) for s in PRICES}
            await wait_for(lambda: set(sink.records["instrument"].tolist()) == ids, what="all")
            assert server.connections() == 4 and counters[Slot.CONNECTED] == 4
            assert all(len(c.state["streams"]) <= 4 for c in server._conns.values())
            assert server.limit_errors == 0 and sink.status(STATUS_CONNECTED) == 4
            await adapter.close()
            await task
            # the streams in the URL instead of SUBSCRIBE requests
            before = len(server.requests)
            adapter, sink, counters, _ = make(server.url, tuple(PRICES), max_streams=4,
                                              url_streams=True)  # fmt: skip
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: set(sink.records["instrument"].tolist()) == ids, what="url")
            assert len(server.requests) == before and server.connections() == 4
            await adapter.close()
            await task
            # a connection asking more than the server allows is refused (error code 2)
            adapter, sink, counters, _ = make(server.url, tuple(PRICES)[:3], max_streams=6)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 1, what="refusal")
            assert server.limit_errors >= 1 and sink.status(STATUS_SUBSCRIBE_ERROR) >= 1
            await adapter.close()
            await task

    asyncio.run(main())


def test_live_additions_respect_the_stream_limit():
    cfg = SimulatorConfig(prices=PRICES, rate=2000, quote_ratio=0.5)

    async def main():
        async with BinanceServer("binance", cfg, max_streams=4) as server:
            adapter, sink, counters, _ = make(server.url, tuple(PRICES)[:3], max_streams=4)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.connections() == 2, what="first connections")
            more = tuple(
                Subscription.resolve(REGISTRY, "binance", "binance", i, "spot")
                for i in tuple(PRICES)[3:]
            )
            adapter.add(more)  # 4 instruments = 8 streams: two more connections, not one
            assert [len(c.subs) for c in adapter.connections] == [2, 1, 2, 2]
            ids = {REGISTRY.instrument_id(s) for s in PRICES}
            await wait_for(lambda: set(sink.records["instrument"].tolist()) == ids, what="all")
            assert all(len(c.state["streams"]) <= 4 for c in server._conns.values())
            assert server.limit_errors == 0 and counters[Slot.SUBSCRIBE_ERRORS] == 0
            await adapter.close()
            await task

    asyncio.run(main())


def test_pings_answered_and_planned_reconnect_before_max_age():
    cfg = SimulatorConfig(prices=PRICES, rate=300, seed=2)

    async def main():
        # A tape (one market for every connection, as on the venue): during a switch both
        # sessions see the same trade ids, so the overlap is deduplicated, never a gap.
        async with BinanceServer(
            "binance", cfg, ping_interval=0.1, ping_timeout=0.3, max_connection_age=1.2, tape=True
        ) as server:
            adapter, sink, counters, _ = make(server.url, age=0.4, stale=1.0)
            task = asyncio.create_task(adapter.run())
            await wait_for(  # planned reconnects every 0.4 s, pings every 0.1 s
                lambda: (
                    server.stats.connections_total >= 3
                    and counters[Slot.RECONNECTS] >= 2
                    and server.pings >= 8
                    and server.pongs >= 6
                ),
                what="3 connections, pings answered",
            )
            assert server.pong_timeouts == 0
            assert server.age_closes == 0  # we always left before the server's cut
            assert counters[Slot.DISCONNECTS] == 0
            assert counters[Slot.GAPS] == 0  # a reconnect is not a gap
            n = sink.n
            await wait_for(lambda: sink.n > n + 20, what="data after reconnects")
            await adapter.close()
            await task
            # without the planned reconnect the server cuts at its age; we come back
            adapter, sink, counters, _ = make(server.url, age=100.0, stale=1.0)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.age_closes >= 1, timeout=3, what="age close")
            await wait_for(lambda: counters[Slot.RECONNECTS] >= 1, what="reconnect")
            n = sink.n
            await wait_for(lambda: sink.n > n + 20, what="data after the cut")
            await adapter.close()
            await task

    asyncio.run(main())


def test_a_client_that_does_not_pong_is_dropped():
    cfg = SimulatorConfig(prices=PRICES, rate=100)

    class Deaf(WSListener):
        frames = 0

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not WSMsgType.PING:
                Deaf.frames += 1

    async def main():
        async with BinanceServer("binance", cfg, ping_interval=0.1, ping_timeout=0.2) as server:
            url = server.url + "/stream?streams=btcusdt@trade"
            transport, _ = await ws_connect(Deaf, url, enable_auto_pong=False)
            await asyncio.wait_for(transport.wait_disconnected(), 2.0)
            assert server.pong_timeouts == 1 and Deaf.frames > 0

    asyncio.run(main())


def test_stall_reconnects_after_stale_after():
    cfg = SimulatorConfig(prices=PRICES, rate=400)

    async def main():
        async with BinanceServer("binance", cfg, ping_interval=0.1) as server:
            adapter, sink, counters, _ = make(server.url, stale=0.5, subscribe_timeout=0.6)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 20)
            await server.inject(Fault.STALL)
            t0 = time.monotonic()
            await wait_for(lambda: server.stats.connections_total >= 2, what="reconnect")
            assert 0.4 <= time.monotonic() - t0 < 2.0
            server.clear()
            n = sink.n
            await wait_for(lambda: sink.n > n + 20, timeout=5, what="data after the stall")
            assert counters[Slot.DISCONNECTS] >= 1
            # heartbeats-only (Binance: pings without data) keeps the connection
            await server.inject(Fault.HEARTBEATS_ONLY)
            total = server.stats.connections_total
            await asyncio.sleep(1.2)
            assert server.stats.connections_total == total
            await adapter.close()
            await task

    asyncio.run(main())


def test_disconnect_resubscribes_and_reports_what_it_missed():
    cfg = SimulatorConfig(prices=PRICES, rate=400)

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters, _ = make(server.url)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 20)
            assert await server.inject(Fault.DISCONNECT) == 1
            server.market.events([0, 1, 2], 300)  # trades we miss while away
            n = sink.n
            await wait_for(lambda: sink.n > n + 50, what="data after reconnect")
            subs = [r for r in server.requests if r[2] == "SUBSCRIBE"]
            assert len(subs) == 2 and server.stats.connections_total == 2
            assert counters[Slot.RECONNECTS] == 1 and counters[Slot.DISCONNECTS] == 1
            assert counters[Slot.CONNECTED] == 1
            # The trade ids continue across the reconnect: what was missed is one gap each.
            r, gaps = sink.records, sink.kind(KIND_GAP)
            for i in set(r["instrument"].tolist()):
                ids = set(
                    r["sequence"][(r["kind"] == KIND_TRADE) & (r["instrument"] == i)].tolist()
                )
                missed = max(ids) - min(ids) + 1 - len(ids)
                assert int(gaps["size"][gaps["instrument"] == i].sum()) == missed
            assert counters[Slot.MISSED] == int(gaps["size"].sum()) > 0
            await adapter.close()
            await task

    asyncio.run(main())


def test_sequence_gap_records():
    cfg = SimulatorConfig(prices=PRICES, rate=300, quote_ratio=0.3)

    async def main():
        async with BinanceServer("binance", cfg, keep_log=True) as server:
            adapter, sink, counters, _ = make(server.url, ("ETH-USDT",))
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 20)
            await server.inject(Fault.SEQUENCE_GAP, 5)
            await wait_for(lambda: counters[Slot.GAPS] == 1, what="gap")
            await asyncio.sleep(0.1)
            await adapter.close()
            await task
            return server, sink, counters

    server, sink, counters = asyncio.run(main())
    assert counters[Slot.GAPS] == 1 and counters[Slot.MISSED] == 5
    gaps = sink.events[sink.events["kind"] == KIND_GAP]
    ids = [json.loads(t)["data"]["t"] for t in server.sent if "@trade" in t]
    after = next(b for a, b in itertools.pairwise(ids) if b != a + 1)
    assert len(gaps) == 1 and gaps["size"][0] == 5.0 and gaps["sequence"][0] == after
    assert gaps["instrument"][0] == REGISTRY.instrument_id("ETH-USDT")


def test_rate_limited_subscribe_backs_off_then_recovers():
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with BinanceServer("binance", cfg) as server:
            await server.inject(Fault.REJECT_SUBSCRIBE)
            adapter, sink, counters, _ = make(
                server.url, backoff_base=0.05, backoff_cap=0.3, rate_limit_pause=0.1,
                rng=random.Random(SEED),
            )  # fmt: skip
            t0 = time.monotonic()
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 3, what="3 refusals")
            took = time.monotonic() - t0
            rejected = server.stats.rejected
            # retried, with growing pauses: bounded (each >= the seeded backoff delay)
            assert rejected == 3 and took >= sum(max(0.1, d) for d in schedule(0.05, 0.3, SEED, 2))
            assert (
                counters[Slot.SUBSCRIBE_ERRORS] == rejected == sink.status(STATUS_SUBSCRIBE_ERROR)
            )
            assert sink.n == 0 and sink.status(STATUS_CONNECTED) == 0
            server.clear()
            await wait_for(lambda: sink.n > 20, timeout=3, what="data after the limit")
            assert sink.status(STATUS_CONNECTED) == 1
            await adapter.close()
            await task

    asyncio.run(main())


def test_malformed_frames_counted_and_dead_lettered():
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters, dead = make(server.url)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 10)
            await server.inject(Fault.MALFORMED, 3)
            await wait_for(lambda: counters[Slot.PARSE_ERRORS] == 3, what="3 errors")
            n = sink.n
            await wait_for(lambda: sink.n > n + 10, what="data goes on")
            assert len(dead) == 3 and all(f == server.malformed_message().encode() for _, f in dead)
            assert counters[Slot.RECONNECTS] == 0
            await adapter.close()
            await task

    asyncio.run(main())


def test_an_absurd_venue_time_is_cleared_and_counted():
    """``"T": "2024"`` decodes to a trade in 1970: the record is kept (price, size) with its
    exchange time cleared to unknown and counted, so no latency detector sees 56 years."""
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapter, sink, counters, _ = make(server.url)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 10)
            e_ms = time.time_ns() // 1_000_000
            server.inject_frame(json.dumps({"stream": "btcusdt@trade", "data": {
                "e": "trade", "E": e_ms, "s": "BTCUSDT", "t": 5_000_000, "p": "12345.5",
                "q": "0.5", "T": "2024", "m": True, "M": True}}))  # fmt: skip
            await wait_for(lambda: counters[Slot.TIME_ERRORS] == 1, what="the time error")
            await wait_for(lambda: (sink.parsed["price"] == 12345.5).any(), what="the record")
            r = sink.parsed[sink.parsed["price"] == 12345.5][0]
            assert (r["ts_exchange"], r["ts_provider"]) == (0, e_ms * 1_000_000)
            assert counters[Slot.PARSE_ERRORS] == 0
            good = sink.parsed[sink.parsed["price"] != 12345.5]
            assert (good["ts_exchange"][good["kind"] == KIND_TRADE] > 0).all()
            await adapter.close()
            await task

    asyncio.run(main())


def test_staggered_subscribe_requests():
    """Binance allows 5 incoming messages a second per connection, pings and pongs included:
    the declared per-connection limit keeps our requests 1/3 s apart (4 a second) whatever
    ``subscribe_interval`` says; without it, unstaggered requests get the connection closed."""
    cfg = SimulatorConfig(prices=PRICES, rate=1000)

    async def main():
        async with BinanceServer("binance", cfg) as server:
            # 7 instruments -> 14 streams, 5 per request -> 3 requests, 0.25 s apart asked,
            # 1/3 s apart by the declared limit
            adapter, sink, _, _ = make(server.url, tuple(PRICES), batch=5, interval=0.25)
            assert adapter.request_spacing == pytest.approx(1 / 3)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.status(STATUS_CONNECTED) == 1, what="acknowledged")
            reqs = [r for r in server.requests if r[2] == "SUBSCRIBE"]
            assert [r[3] for r in reqs] == [5, 5, 4]
            gaps = np.diff([r[0] for r in reqs])
            assert (gaps >= 0.3).all() and (gaps < 1.0).all()
            assert server.rate_closes == 0
            ids = {REGISTRY.instrument_id(s) for s in PRICES}
            await wait_for(lambda: set(sink.records["instrument"].tolist()) == ids, what="all")
            await adapter.close()
            await task
            # subscribe_interval 0, one stream per request: still 1/3 s apart, never closed
            n = len(server.requests)
            adapter, sink, _, _ = make(server.url, tuple(PRICES)[:3], batch=1)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.status(STATUS_CONNECTED) == 1, what="acknowledged")
            reqs = [r for r in server.requests[n:] if r[2] == "SUBSCRIBE"]
            assert len(reqs) == 6
            assert (np.diff([r[0] for r in reqs]) >= 0.3).all()
            assert server.rate_closes == 0
            await adapter.close()
            await task
            # without the declared limit, 14 requests at once break the 5 messages/s limit
            adapter, sink, _counters, _ = make(server.url, tuple(PRICES), batch=1)
            adapter.request_spacing = 0.0
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.rate_closes >= 1, what="rate close")
            await adapter.close()
            await task

    asyncio.run(main())


def test_connections_burst_then_keep_to_300_per_5_minutes():
    """Binance allows 300 connection attempts per 5 minutes per IP: the declared limit lets two
    workers (two adapters sharing the daemon's pacer) open 20 connections at once, then one
    every 300/280 s, so that no 5 minutes can ever hold more than 300."""
    names = [f"C{i}-USDT" for i in range(22)]
    reg = Registry.build([(n, CLASS_SPOT) for n in names], [("binance", "binance")])
    pacer = Pacer.local(["binance"])
    cfg = SimulatorConfig(prices=dict.fromkeys(names, 10.0), rate=0)

    async def main():
        async with BinanceServer("binance", cfg) as server:
            adapters = []
            for half in (names[:11], names[11:]):
                provider = ProviderConfig(
                    name="binance", kind="binance", venue="binance", url=server.url,
                    max_streams_per_connection=2, stale_after=10.0,
                    options=BinanceOptions(backoff_base=0.05, backoff_cap=0.2),
                )  # fmt: skip
                subs = tuple(Subscription.resolve(reg, "binance", "binance", n, "spot")
                             for n in half)  # fmt: skip
                ctx = IngestContext(provider, server.url, subs, reg, Sink(), DictCounters(),
                                    pacer=pacer)  # fmt: skip
                adapters.append(BinanceAdapter(ctx))
            t0 = time.monotonic()
            tasks = [asyncio.create_task(a.run()) for a in adapters]
            # the server shares this event loop: 20 handshakes at once keep it busy for seconds
            await wait_for(lambda: len(server.stats.connect_times) == 22, timeout=30,
                           what="every connection")  # fmt: skip
            for a in adapters:
                await a.close()
            await asyncio.gather(*tasks)
            return np.sort(np.array(server.stats.connect_times)) - t0

    times = asyncio.run(main())
    interval = 300 / 280
    assert times[19] < interval  # the burst: nobody waited for a slot
    assert times[20] >= interval and times[21] >= 2 * interval  # then the sustained rate


# --- USD-M futures ---------------------------------------------------------------------------
FUTURES = {"BTC-USDT-PERP": 64000.0, "ETH-USDT-250328": 3000.0}
FUT_CLASS = {"BTC-USDT-PERP": "perpetual", "ETH-USDT-250328": "future"}
FUT_REGISTRY = Registry.build(
    [("BTC-USDT-PERP", CLASS_CODES["perpetual"]), ("ETH-USDT-250328", CLASS_CODES["future"])],
    [("binance-f", "binance")],
)


def test_usdm_routes_trades_and_book_tickers_and_keeps_quote_times():
    """USD-M futures push book tickers on /public and aggregate trades on /market only: one
    connection per route gets both (one unrouted connection would never see a trade), and the
    futures book ticker's T and E reach the records."""
    cfg = SimulatorConfig(prices=FUTURES, rate=0, max_events=1000, quote_ratio=0.5, seed=4)

    async def main():
        async with BinanceServer("binance-f", cfg, market="usdm", keep_log=True) as server:
            provider = ProviderConfig(
                name="binance-f", kind="binance", venue="binance", url=server.url,
                stale_after=2.0, options=BinanceOptions(market="usdm", backoff_base=0.02,
                                                        backoff_cap=0.1),
            )  # fmt: skip
            sink, counters = Sink(), DictCounters()
            subs = tuple(Subscription.resolve(FUT_REGISTRY, "binance-f", "binance", i,
                                              FUT_CLASS[i]) for i in FUTURES)  # fmt: skip
            adapter = BinanceAdapter(IngestContext(provider, server.url, subs, FUT_REGISTRY,
                                                   sink, counters))  # fmt: skip
            assert sorted(c.route for c in adapter.connections) == ["market", "public"]
            task = asyncio.create_task(adapter.run())
            # each connection gets its own max_events; each pushes only its route's streams
            await wait_for(lambda: server.stats.finished == 2, what="both connections served")
            trades = sum('@aggTrade"' in t for t in server.sent)
            quotes = sum('@bookTicker"' in t for t in server.sent)
            await wait_for(lambda: sink.n >= trades + 2 * quotes, what="every record")
            await adapter.close()
            await task
            return server, sink, counters, trades, quotes

    server, sink, counters, trades, quotes = asyncio.run(main())
    r = sink.parsed
    assert (r["kind"] == KIND_TRADE).sum() == trades > 0
    assert (r["kind"] == KIND_BID).sum() == (r["kind"] == KIND_ASK).sum() == quotes > 0
    sent = [json.loads(t) for t in server.sent]
    books = [m["data"] for m in sent if m["stream"].endswith("@bookTicker")]
    bids = r[r["kind"] == KIND_BID]
    assert bids["ts_exchange"].tolist() == [b["T"] * 1_000_000 for b in books]
    assert bids["ts_provider"].tolist() == [b["E"] * 1_000_000 for b in books]
    assert (bids["ts_exchange"] > 0).all()
    dated = FUT_REGISTRY.instrument_id("ETH-USDT-250328")
    assert {m["data"]["s"] for m in sent} == {"BTCUSDT", "ETHUSDT_250328"}
    assert (r["instrument"] == dated).any()
    assert counters[Slot.PARSE_ERRORS] == 0


def test_usdm_server_pushes_each_stream_on_its_route_only():
    """The local server as fstream since the 2026 split: an unrouted connection subscribed to
    aggTrade and bookTicker gets book tickers only (the failure the routes fix)."""
    cfg = SimulatorConfig(prices=FUTURES, rate=0, max_events=400, quote_ratio=0.5, seed=5)

    async def main():
        async with BinanceServer("binance-f", cfg, market="usdm", keep_log=True) as server:
            url = f"{server.url}/stream?streams=btcusdt@aggTrade/btcusdt@bookTicker"
            got: list[str] = []

            class Listener(WSListener):
                def on_ws_frame(self, transport, frame) -> None:
                    if frame.msg_type == WSMsgType.TEXT:
                        got.append(frame.get_payload_as_ascii_text())

            transport, _ = await ws_connect(Listener, url)
            await wait_for(lambda: server.stats.finished == 1, what="the connection served")
            await wait_for(lambda: len(got) >= len(server.sent) > 10, what="every message")
            transport.disconnect()
            return got

    got = asyncio.run(main())
    assert {json.loads(t)["stream"] for t in got} == {"btcusdt@bookTicker"}


def test_reads_batched_over_the_flush_delay_lose_and_reorder_nothing():
    """With a flush delay, a read that brought data makes the loop sleep (ReadNap); the frames
    of a read are parsed together (the Numba scanner, or msgspec): every record is there,
    exact and in order."""
    cfg = SimulatorConfig(prices=PRICES, rate=0, max_events=6000, quote_ratio=0.4, seed=2)

    async def main():
        async with BinanceServer("binance", cfg, keep_log=True) as server:
            adapter, sink, counters, dead = make(server.url, flush_delay=0.002)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.stats.events == 6000, what="all events")
            want = expected(server.sent)
            await wait_for(lambda: sink.n >= len(want), what="all records")
            nap = adapter.connections[0].nap
            await adapter.close()
            await task
            return want, sink, counters, dead, nap

    want, sink, counters, dead, nap = asyncio.run(main())
    assert as_tuples(sink.records) == want
    assert nap is not None and nap.naps >= 1
    assert counters[Slot.PARSE_ERRORS] == 0 and not dead
    assert len(sink.batches) < counters[Slot.FRAMES_IN]  # frames share their reads' emits


def test_read_nap_sleeps_once_per_loop_iteration():
    async def main():
        nap = ReadNap.of_loop(0.001)
        assert ReadNap.of_loop(0.001) is nap  # one per loop
        nap.request()
        nap.request()  # the same iteration: still one sleep
        t0 = time.monotonic()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return nap.naps, time.monotonic() - t0

    naps, slept = asyncio.run(main())
    assert naps == 1 and slept >= 0.001


def test_read_nap_is_skipped_while_a_socket_is_behind():
    """A socket holding more than a read takes is behind: napping would cap its rate at one
    read per delay, so the loop goes on at once; with little waiting it naps."""
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        a.sendall(b"x" * 100)

        async def iteration(nap: ReadNap) -> None:
            nap.request(b.fileno())
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        async def main():
            nap = ReadNap.of_loop(0.001)
            await iteration(nap)  # 100 bytes waiting: not behind
            assert (nap.naps, nap.skipped) == (1, 0)
            a.sendall(b"x" * (BEHIND_BYTES + 1))
            await iteration(nap)
            assert (nap.naps, nap.skipped) == (1, 1)
            b.recv(1 << 20)
            await iteration(nap)  # caught up: naps again
            return nap.naps, nap.skipped

        assert asyncio.run(main()) == (2, 1)
    finally:
        a.close()
        b.close()


def _derivatives_expected(sent: list[dict]) -> list[tuple]:
    """Records implied by the server's markPrice / forceOrder messages, decoded with json."""
    out = []
    for m in sent:
        d = m["data"]
        inst = FUT_REGISTRY.instrument_id(
            "BTC-USDT-PERP" if m["stream"].startswith("btcusdt@") else "ETH-USDT-250328"
        )
        if m["stream"].endswith("@markPrice@1s"):
            t = d["E"] * 1_000_000
            out.append((inst, KIND_MARK, 0, float(d["p"]), 0.0, t, t, 0))
            out.append((inst, KIND_INDEX, 0, float(d["i"]), 0.0, t, t, 0))
            if d["r"] != "":
                out.append((inst, KIND_FUNDING, 0, float(d["r"]), None, t, t, d["T"] // 1000))
        elif m["stream"].endswith("@forceOrder"):
            o = d["o"]
            side = SIDE_SELL if o["S"] == "SELL" else SIDE_BUY
            out.append((inst, KIND_LIQUIDATION, side, float(o["ap"]), float(o["z"]),
                        o["T"] * 1_000_000, d["E"] * 1_000_000, 0))  # fmt: skip
    return out


def test_usdm_derivatives_streams_on_the_market_route_exact():
    """With ``derivatives = true`` the /market connection also carries markPrice@1s and
    forceOrder of every instrument: mark, index, funding (perpetual only) and liquidation
    records, exactly as the server sent them; the book tickers stay on /public."""
    cfg = SimulatorConfig(prices=FUTURES, rate=0, max_events=1000, quote_ratio=0.5, seed=6)

    async def main():
        async with BinanceServer("binance-f", cfg, market="usdm", keep_log=True,
                                 mark_interval=0.001, liquidation_every=7) as server:  # fmt: skip
            provider = ProviderConfig(
                name="binance-f", kind="binance", venue="binance", url=server.url,
                stale_after=2.0, options=BinanceOptions(market="usdm", derivatives=True,
                                                        backoff_base=0.02, backoff_cap=0.1),
            )  # fmt: skip
            sink, counters = Sink(), DictCounters()
            subs = tuple(Subscription.resolve(FUT_REGISTRY, "binance-f", "binance", i,
                                              FUT_CLASS[i]) for i in FUTURES)  # fmt: skip
            adapter = BinanceAdapter(IngestContext(provider, server.url, subs, FUT_REGISTRY,
                                                   sink, counters))  # fmt: skip
            market = next(c for c in adapter.connections if c.route == "market")
            assert adapter.streams(market.subs, "market") == [
                "btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder",
                "ethusdt_250328@aggTrade", "ethusdt_250328@markPrice@1s",
                "ethusdt_250328@forceOrder",
            ]  # fmt: skip
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.stats.finished == 2, what="both connections served")
            want = _derivatives_expected([json.loads(t) for t in server.sent])
            await wait_for(
                lambda: (sink.parsed["kind"] >= KIND_MARK).sum() >= len(want), what="records"
            )
            await adapter.close()
            await task
            return sink, counters, want

    sink, counters, want = asyncio.run(main())
    r = sink.parsed
    d = r[(r["kind"] >= KIND_MARK) & (r["kind"] <= KIND_LIQUIDATION)]
    cols = ("instrument", "kind", "side", "price", "size", "ts_exchange", "ts_provider", "reserved")
    got = list(zip(*(d[c].tolist() for c in cols), strict=True))
    got = [(*g[:4], None if g[1] == KIND_FUNDING else g[4], *g[5:]) for g in got]
    kinds = {k for _, k, *_ in want}
    assert kinds == {KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_LIQUIDATION}
    assert got == want
    assert np.isnan(d[d["kind"] == KIND_FUNDING]["size"]).all()
    assert (d["sequence"] == -1).all()
    dated = FUT_REGISTRY.instrument_id("ETH-USDT-250328")
    assert not ((d["kind"] == KIND_FUNDING) & (d["instrument"] == dated)).any()
    assert ((d["kind"] == KIND_MARK) & (d["instrument"] == dated)).any()
    assert counters[Slot.PARSE_ERRORS] == 0
