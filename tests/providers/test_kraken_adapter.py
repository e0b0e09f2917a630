"""KrakenAdapter against KrakenServer over real sockets on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import calendar
import itertools
import json
import random
import time

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import KrakenOptions
from fairfeed.core.records import (
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_TRADE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    STATUS_CONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.faults import Fault
from fairfeed.local.kraken import KrakenServer
from fairfeed.providers.base import IngestContext
from fairfeed.providers.kraken.adapter import KrakenAdapter
from tests.providers.harness import Sink, schedule
from tests.waiting import wait_for_async as wait_for

SEED = 20260801  # the reconnect jitter of tests that bound retry times
PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0, "SOL-USD": 150.0, "XRP-USD": 0.5,
          "ADA-EUR": 0.4, "DOGE-USD": 0.1, "DOT-USD": 5.5}  # fmt: skip
REGISTRY = Registry.build(
    [("NOPE-USD", CLASS_SPOT)] + [(s, CLASS_SPOT) for s in PRICES],
    [("x", "y"), ("kraken", "kraken")],
)
pytestmark = pytest.mark.timeout(30)


def make(url: str, instruments=tuple(PRICES)[:3], *, max_streams: int = 0, batch: int = 0,
         interval: float = 0.0, stale: float = 2.0, rng: random.Random | None = None,
         **kw):  # fmt: skip
    kw.setdefault("backoff_base", 0.02)
    kw.setdefault("backoff_cap", 0.1)
    provider = ProviderConfig(
        name="kraken", kind="kraken", venue="kraken", url=url,
        max_streams_per_connection=max_streams, subscribe_batch=batch,
        subscribe_interval=interval, stale_after=stale, options=KrakenOptions(**kw),
    )  # fmt: skip
    sink, counters, dead = Sink(), DictCounters(), []
    subs = tuple(Subscription.resolve(REGISTRY, "kraken", "kraken", i, "spot") for i in instruments)
    ctx = IngestContext(
        provider=provider, url=url, subscriptions=subs, registry=REGISTRY, emit=sink,
        counters=counters, dead_letter=lambda err, frame: dead.append((err, frame)), rng=rng,
    )  # fmt: skip
    return KrakenAdapter(ctx), sink, counters, dead


def ts_ns(s: str) -> int:
    """RFC 3339 with a fraction → ns, independently of the parser's implementation."""
    whole, frac = s.rstrip("Z").split(".")
    sec = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return sec * 1_000_000_000 + int(frac.ljust(9, "0"))


def expected(sent: list[str]) -> list[tuple]:
    out = []
    for text in sent:
        m = json.loads(text)
        for d in m["data"]:
            inst = REGISTRY.instrument_id(d["symbol"].replace("/", "-"))
            if m["channel"] == "ticker":
                out.append((inst, KIND_BID, 0, d["bid"], d["bid_qty"], SEQ_NONE, 0, 0))
                out.append((inst, KIND_ASK, 0, d["ask"], d["ask_qty"], SEQ_NONE, 0, 0))
            else:
                side = SIDE_BUY if d["side"] == "buy" else SIDE_SELL
                out.append((inst, KIND_TRADE, side, d["price"], d["qty"], d["trade_id"],
                            ts_ns(d["timestamp"]), 0))  # fmt: skip
    return out


def as_tuples(r: np.ndarray) -> list[tuple]:
    cols = ("instrument", "kind", "side", "price", "size", "sequence", "ts_exchange", "ts_provider")
    return list(zip(*(r[c].tolist() for c in cols), strict=True))


def test_exact_records():
    cfg = SimulatorConfig(prices=PRICES, rate=0, max_events=2000, quote_ratio=0.4, seed=4)

    async def main():
        async with KrakenServer("kraken", cfg, keep_log=True) as server:
            adapter, sink, counters, _ = make(server.url)
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
    got = as_tuples(r)
    assert len(want) > 1000
    # ticker snapshots (sent while answering) may interleave: all records, trades in order
    assert sorted(got) == sorted(want)
    assert [t for t in got if t[1] == KIND_TRADE] == [t for t in want if t[1] == KIND_TRADE]
    assert any('"type":"snapshot"' in t for t in server.sent)
    assert not any('"channel":"trade","type":"snapshot"' in t for t in server.sent)
    multi = [json.loads(t) for t in server.sent if '"channel":"trade"' in t]
    assert max(len(m["data"]) for m in multi) > 1  # several trades in one message
    trades = r[r["kind"] == KIND_TRADE]
    assert set(trades["side"].tolist()) == {SIDE_BUY, SIDE_SELL}
    assert (trades["ts_exchange"] % 1000 == 0).all()  # microseconds on the wire
    assert (trades["ts_exchange"] <= trades["ts_receive"]).all()
    assert (r["ts_receive"] >= t0).all() and (r["ts_receive"] <= time.time_ns()).all()
    assert (r["provider"] == REGISTRY.provider_id("kraken")).all()
    assert (r["venue"] == REGISTRY.venue_id("kraken")).all()
    assert (r["data_class"] == CLASS_SPOT).all()
    assert counters[Slot.RECORDS_IN] == len(r)
    assert counters[Slot.PARSE_ERRORS] == counters[Slot.GAPS] == counters[Slot.RECONNECTS] == 0
    assert sink.status(STATUS_CONNECTED) == 1


def test_stream_limit_splits_connections():
    cfg = SimulatorConfig(prices=PRICES, rate=2000)

    async def main():
        async with KrakenServer("kraken", cfg, max_streams=4) as server:
            adapter, sink, counters, _ = make(server.url, tuple(PRICES), max_streams=4)
            assert [len(c.subs) for c in adapter.connections] == [2, 2, 2, 1]
            task = asyncio.create_task(adapter.run())
            ids = {REGISTRY.instrument_id(s) for s in PRICES}
            await wait_for(lambda: set(sink.records["instrument"].tolist()) == ids, what="all")
            assert server.connections() == 4 and counters[Slot.CONNECTED] == 4
            assert server.limit_errors == 0 and sink.status(STATUS_CONNECTED) == 4
            await adapter.close()
            await task
            # a connection asking more than the server allows is refused and retried
            adapter, sink, counters, _ = make(server.url, tuple(PRICES)[:3], max_streams=6)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 2, what="refusals")
            assert server.limit_errors >= 2 and counters[Slot.RECONNECTS] >= 1
            await adapter.close()
            await task

    asyncio.run(main())


def test_live_additions_respect_the_stream_limit():
    """Two streams (trade, ticker) per instrument: a live add of 4 instruments on a 4-stream
    limit needs two new connections; one connection with 8 streams would be refused."""
    cfg = SimulatorConfig(prices=PRICES, rate=2000, quote_ratio=0.5)

    async def main():
        async with KrakenServer("kraken", cfg, max_streams=4) as server:
            adapter, sink, counters, _ = make(server.url, tuple(PRICES)[:3], max_streams=4)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.connections() == 2, what="first connections")
            more = tuple(
                Subscription.resolve(REGISTRY, "kraken", "kraken", i, "spot")
                for i in tuple(PRICES)[3:]
            )
            adapter.add(more)
            assert [len(c.subs) for c in adapter.connections] == [2, 1, 2, 2]
            ids = {REGISTRY.instrument_id(s) for s in PRICES}
            await wait_for(lambda: set(sink.records["instrument"].tolist()) == ids, what="all")
            assert server.connections() == 4
            assert server.limit_errors == 0 and counters[Slot.SUBSCRIBE_ERRORS] == 0
            await adapter.close()
            await task

    asyncio.run(main())


def test_heartbeats_keep_a_quiet_connection_and_pings_are_answered():
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with KrakenServer("kraken", cfg, heartbeat_interval=0.1) as server:
            adapter, sink, counters, _ = make(server.url, stale=0.5, ping_interval=0.1)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 20)
            await server.inject(Fault.HEARTBEATS_ONLY)
            await asyncio.sleep(0.1)
            n = sink.n
            t0 = time.monotonic()
            await wait_for(  # three times stale_after without data; heartbeats and pings go on
                lambda: (
                    time.monotonic() - t0 > 1.5
                    and counters[Slot.HEARTBEATS] >= 10
                    and server.pings >= 8
                    and adapter.pongs >= 8
                ),
                what="heartbeats and pings over 1.5 s",
            )
            assert sink.n == n and server.stats.connections_total == 1
            assert counters[Slot.RECONNECTS] == 0
            assert (sink.events["kind"] == KIND_HEARTBEAT).sum() >= 1
            server.clear()
            await wait_for(lambda: sink.n > n + 20, what="data again")
            await adapter.close()
            await task

    asyncio.run(main())


def test_stall_reconnects_after_stale_after():
    cfg = SimulatorConfig(prices=PRICES, rate=400)

    async def main():
        async with KrakenServer("kraken", cfg, heartbeat_interval=0.1) as server:
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
            await adapter.close()
            await task

    asyncio.run(main())


def test_disconnect_resubscribes_and_reports_what_it_missed():
    cfg = SimulatorConfig(prices=PRICES, rate=400)

    async def main():
        async with KrakenServer("kraken", cfg) as server:
            adapter, sink, counters, _ = make(server.url)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 20)
            assert await server.inject(Fault.DISCONNECT) == 1
            server.market.events([0, 1, 2], 300)  # trades we miss while away
            n = sink.n
            await wait_for(lambda: sink.n > n + 50, what="data after reconnect")
            subs = [r for r in server.requests if r[2] == "subscribe"]
            assert len(subs) == 4 and server.stats.connections_total == 2  # 2 channels x 2
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
        async with KrakenServer("kraken", cfg, keep_log=True) as server:
            adapter, sink, counters, _ = make(server.url, ("ETH-USD",))
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n > 20)
            await server.inject(Fault.SEQUENCE_GAP, 7)
            await wait_for(lambda: counters[Slot.GAPS] == 1, what="gap")
            await asyncio.sleep(0.1)
            await adapter.close()
            await task
            return server, sink, counters

    server, sink, counters = asyncio.run(main())
    assert counters[Slot.GAPS] == 1 and counters[Slot.MISSED] == 7
    gaps = sink.events[sink.events["kind"] == KIND_GAP]
    ids = [d["trade_id"] for t in server.sent if '"trade"' in t for d in json.loads(t)["data"]]
    after = next(b for a, b in itertools.pairwise(ids) if b != a + 1)
    assert len(gaps) == 1 and gaps["size"][0] == 7.0 and gaps["sequence"][0] == after
    assert gaps["instrument"][0] == REGISTRY.instrument_id("ETH-USD")


@pytest.mark.parametrize("msg_rate_error", [False, True], ids=["answer", "exceeded-msg-rate"])
def test_rate_limited_subscribe_backs_off_then_recovers(msg_rate_error):
    """A refused request (the v2 answer, or the request dropped with ``{"Error": "Exceeded msg
    rate"}``) is a paced retry: no dead letter, no 10 s subscribe timeout."""
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with KrakenServer("kraken", cfg, msg_rate_error=msg_rate_error) as server:
            await server.inject(Fault.REJECT_SUBSCRIBE)
            adapter, sink, counters, dead = make(
                server.url, backoff_base=0.05, backoff_cap=0.3, rate_limit_pause=0.1,
                rng=random.Random(SEED),
            )  # fmt: skip
            t0 = time.monotonic()
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.stats.connections_total >= 3, what="3 attempts")
            await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 3, what="3 refusals")
            took = time.monotonic() - t0
            refused = counters[Slot.SUBSCRIBE_ERRORS]
            # retried, with growing pauses: bounded (each >= the seeded backoff delay)
            assert 3 <= refused <= 6 and server.stats.connections_total == 3
            assert took >= sum(max(0.1, d) for d in schedule(0.05, 0.3, SEED, 2))
            assert refused == sink.status(STATUS_SUBSCRIBE_ERROR)
            assert server.stats.rejected >= refused  # (the ticker request may be refused too)
            assert sink.n == 0 and sink.status(STATUS_CONNECTED) == 0
            assert counters[Slot.PARSE_ERRORS] == 0 and dead == []
            server.clear()
            await wait_for(lambda: sink.n > 20, timeout=3, what="data after the limit")
            assert sink.status(STATUS_CONNECTED) == 1
            await adapter.close()
            await task

    asyncio.run(main())


def test_unknown_pair_is_counted_without_reconnecting():
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with KrakenServer("kraken", cfg) as server:
            adapter, sink, counters, _ = make(server.url, ("NOPE-USD", "BTC-USD"))
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.status(STATUS_CONNECTED) == 1, what="acknowledged")
            await wait_for(lambda: sink.n > 20)
            assert counters[Slot.SUBSCRIBE_ERRORS] == 2  # trade and ticker
            assert sink.status(STATUS_SUBSCRIBE_ERROR) == 2 and adapter.symbol_errors == 2
            assert counters[Slot.RECONNECTS] == 0
            await adapter.close()
            await task

    asyncio.run(main())


def test_malformed_frames_counted_and_dead_lettered():
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with KrakenServer("kraken", cfg) as server:
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


def test_staggered_subscribe_requests():
    cfg = SimulatorConfig(prices=PRICES, rate=1000)

    async def main():
        async with KrakenServer("kraken", cfg) as server:
            # 7 symbols, 3 per request, 2 channels -> 6 requests, 0.1 s apart
            adapter, sink, _, _ = make(server.url, tuple(PRICES), batch=3, interval=0.1)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.status(STATUS_CONNECTED) == 1, what="acknowledged")
            reqs = [r for r in server.requests if r[2] == "subscribe"]
            assert [(r[3], r[4]) for r in reqs] == [
                ("trade", 3), ("trade", 3), ("trade", 1), ("ticker", 3), ("ticker", 3),
                ("ticker", 1),
            ]  # fmt: skip
            gaps = np.diff([r[0] for r in reqs])
            assert (gaps >= 0.08).all() and (gaps < 0.3).all()
            ids = {REGISTRY.instrument_id(s) for s in PRICES}
            await wait_for(lambda: set(sink.records["instrument"].tolist()) == ids, what="all")
            await adapter.close()
            await task

    asyncio.run(main())
