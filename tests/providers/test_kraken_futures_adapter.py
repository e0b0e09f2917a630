"""KrakenFuturesAdapter against KrakenFuturesServer over real sockets on 127.0.0.1 (no mocks):
exact records of every kind in base units, the error event, reconnects, heartbeats and pings."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import KrakenFuturesOptions
from fairfeed.core.records import (
    CLASS_FUTURE,
    CLASS_PERPETUAL,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    MAX_DATA_KIND,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    STATUS_CONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.faults import Fault
from fairfeed.local.kraken_futures import KrakenFuturesServer
from fairfeed.providers.base import IngestContext
from fairfeed.providers.kraken_futures.adapter import KrakenFuturesAdapter
from tests.providers.harness import Sink
from tests.waiting import wait_for_async as wait_for

# linear perpetual (PF_XBTUSD), inverse perpetual (PI_ETHUSD), a linear future of 0.1 SOL
PRICES = {"BTC-USD-PERP": 64000.0, "ETH-USD-PERP": 3000.0, "SOL-USD-270326": 150.0}
CLASSES = {"BTC-USD-PERP": CLASS_PERPETUAL, "ETH-USD-PERP": CLASS_PERPETUAL,
           "SOL-USD-270326": CLASS_FUTURE, "NOPE-USD-PERP": CLASS_PERPETUAL}  # fmt: skip
PRODUCTS = {"ETH-USD-PERP": "PI_ETHUSD"}
CONTRACTS = {"FF_SOLUSD_270326": "0.1 base"}
REGISTRY = Registry.build(list(CLASSES.items()), [("x", "y"), ("kf", "KRAKEN_FUTURES")])
NAMES = {"PF_XBTUSD": "BTC-USD-PERP", "PI_ETHUSD": "ETH-USD-PERP",
         "FF_SOLUSD_270326": "SOL-USD-270326"}  # fmt: skip
pytestmark = pytest.mark.timeout(30)


def make(url: str, instruments=tuple(PRICES), *, stale: float = 2.0, **kw):
    kw.setdefault("backoff_base", 0.02)
    kw.setdefault("backoff_cap", 0.1)
    kw.setdefault("products", PRODUCTS)
    kw.setdefault("contracts", CONTRACTS)
    provider = ProviderConfig(
        name="kf", kind="kraken_futures", venue="KRAKEN_FUTURES", url=url, stale_after=stale,
        subscribe_interval=0.0, options=KrakenFuturesOptions(**kw),
    )  # fmt: skip
    sink, counters = Sink(), DictCounters()
    subs = tuple(
        Subscription.resolve(REGISTRY, "kf", "KRAKEN_FUTURES", i,
                             "future" if CLASSES[i] == CLASS_FUTURE else "perpetual")
        for i in instruments
    )  # fmt: skip
    ctx = IngestContext(
        provider=provider, url=url, subscriptions=subs, registry=REGISTRY, emit=sink,
        counters=counters, dead_letter=sink.dead_letter,
    )  # fmt: skip
    return KrakenFuturesAdapter(ctx), sink, counters


def server(cfg: SimulatorConfig, **kw) -> KrakenFuturesServer:
    return KrakenFuturesServer("kf", cfg, products=PRODUCTS, contracts=CONTRACTS, **kw)


def base(pid: str, contracts: float, price: float) -> float:
    """Contracts → base units, independently of the parser's table."""
    if pid[1] == "I":
        return contracts * 1.0 / price if price > 0 else 0.0
    return contracts * (0.1 if pid.startswith("FF_SOL") else 1.0)


def expected(sent: list[str]) -> list[tuple]:
    out = []
    for text in sent:
        m = json.loads(text)
        pid = m["product_id"]
        inst = REGISTRY.instrument_id(NAMES[pid])
        t = m["time"] * 1_000_000
        if m["feed"] == "trade":
            side = SIDE_BUY if m["side"] == "buy" else SIDE_SELL
            size = base(pid, m["qty"], m["price"])
            out.append((inst, KIND_TRADE, side, m["price"], size, m["seq"], t, 0))
            if m["type"] == "liquidation":  # also a liquidation print, unnumbered
                out.append((inst, KIND_LIQUIDATION, side, m["price"], size, SEQ_NONE, t, 0))
        elif m["feed"] == "ticker":
            out.append((inst, KIND_BID, 0, m["bid"], base(pid, m["bid_size"], m["bid"]),
                        SEQ_NONE, t, 0))  # fmt: skip
            out.append((inst, KIND_ASK, 0, m["ask"], base(pid, m["ask_size"], m["ask"]),
                        SEQ_NONE, t, 0))  # fmt: skip
            out.append((inst, KIND_MARK, 0, m["markPrice"], 0.0, SEQ_NONE, t, 0))
            out.append((inst, KIND_INDEX, 0, m["index"], 0.0, SEQ_NONE, t, 0))
            if "relative_funding_rate" in m:
                out.append((inst, KIND_FUNDING, 0, m["relative_funding_rate"],
                             m["relative_funding_rate_prediction"], SEQ_NONE, t,
                             m["next_funding_rate_time"] // 1000))  # fmt: skip
            oi = base(pid, m["openInterest"], m["markPrice"])
            out.append((inst, KIND_OPEN_INTEREST, 0, 0.0, oi, SEQ_NONE, t, 0))
    return out


def data(sink: Sink) -> np.ndarray:
    r = sink.all
    return r[r["kind"] <= MAX_DATA_KIND]


def as_tuples(r: np.ndarray) -> list[tuple]:
    cols = ("instrument", "kind", "side", "price", "size", "sequence", "ts_exchange", "reserved")
    return list(zip(*(r[c].tolist() for c in cols), strict=True))


def test_exact_records_of_every_kind():
    cfg = SimulatorConfig(prices=PRICES, rate=3000, max_events=1500, quote_ratio=0.4, seed=4)

    async def main():
        async with server(cfg, keep_log=True) as srv:
            adapter, sink, counters = make(srv.url)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: srv.stats.events == 1500, what="all events")
            want = expected(srv.sent)
            await wait_for(lambda: len(data(sink)) >= len(want), what="all records")
            await adapter.close()
            await task
            return srv, want, sink, counters

    _, want, sink, counters = asyncio.run(main())
    r = data(sink)
    got = as_tuples(r)
    assert len(want) > 1000
    # ticker snapshots (sent while answering) may interleave: all records, trades in order
    assert sorted(got) == sorted(want)
    for kind in (KIND_TRADE, KIND_LIQUIDATION):
        assert [t for t in got if t[1] == kind] == [t for t in want if t[1] == kind]
    kinds = set(r["kind"].tolist())
    assert kinds == {KIND_TRADE, KIND_BID, KIND_ASK, KIND_MARK, KIND_INDEX, KIND_FUNDING,
                     KIND_OPEN_INTEREST, KIND_LIQUIDATION}  # fmt: skip
    # every 50th trade of a product is a liquidation fill: a trade and a liquidation print
    trades, liqs = r[r["kind"] == KIND_TRADE], r[r["kind"] == KIND_LIQUIDATION]
    forced = trades[trades["sequence"] % 50 == 0]
    assert len(liqs) == len(forced) > 0
    for f in ("instrument", "side", "price", "size", "ts_exchange"):
        assert liqs[f].tolist() == forced[f].tolist(), f
    assert (liqs["sequence"] == SEQ_NONE).all()
    fut = REGISTRY.instrument_id("SOL-USD-270326")
    funding = r[r["kind"] == KIND_FUNDING]
    assert fut not in funding["instrument"].tolist() and len(funding)  # perpetuals only
    # the inverse perpetual's trades are whole USD contracts on the wire, ETH in the records
    eth = r[(r["instrument"] == REGISTRY.instrument_id("ETH-USD-PERP")) & (r["kind"] == 1)]
    usd = eth["size"] * eth["price"]
    np.testing.assert_allclose(usd, np.round(usd), rtol=1e-12)
    classes = [CLASSES[REGISTRY.instruments[i]] for i in r["instrument"].tolist()]
    assert r["data_class"].tolist() == classes
    assert (r["venue"] == REGISTRY.venue_id("KRAKEN_FUTURES")).all()
    assert counters[Slot.PARSE_ERRORS] == counters[Slot.GAPS] == counters[Slot.RECONNECTS] == 0
    assert not sink.dead and sink.status(STATUS_CONNECTED) == 1


def test_trade_snapshot_is_history_and_disconnect_reports_what_it_missed():
    cfg = SimulatorConfig(prices=PRICES, rate=400)

    async def main():
        async with server(cfg, keep_log=True) as srv:
            adapter, sink, counters = make(srv.url)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.kind(KIND_TRADE).size > 20)
            assert await srv.inject(Fault.DISCONNECT) == 1
            srv.market.events([0, 1, 2], 300)  # trades we miss while away
            n = sink.kind(KIND_TRADE).size
            await wait_for(lambda: sink.kind(KIND_TRADE).size > n + 30, what="data again")
            assert srv.stats.connections_total == 2
            snaps = [json.loads(t) for t in srv.sent if '"feed":"trade_snapshot"' in t]
            assert len(snaps) == 3 and all(m["trades"] for m in snaps)  # on the reconnect
            assert counters[Slot.RECONNECTS] == 1 and sink.status(STATUS_CONNECTED) == 2
            # the snapshot replayed the missed trades; they are not published, the gap is
            trades, gaps = sink.kind(KIND_TRADE), sink.kind(KIND_GAP)
            keys = set(zip(trades["instrument"].tolist(), trades["sequence"].tolist(), strict=True))
            assert len(keys) == len(trades)  # none twice
            for i in set(trades["instrument"].tolist()):
                ids = set(trades["sequence"][trades["instrument"] == i].tolist())
                missed = max(ids) - min(ids) + 1 - len(ids)
                assert int(gaps["size"][gaps["instrument"] == i].sum()) == missed
            assert counters[Slot.MISSED] == int(gaps["size"].sum()) > 0
            await adapter.close()
            await task

    asyncio.run(main())


def test_error_event_refuses_and_reconnects_with_backoff():
    """An unknown product: Kraken's error names none, so the connection is refused and retried
    (paced); the daemon's configuration check catches most such names at load."""
    cfg = SimulatorConfig(prices=PRICES, rate=200)

    async def main():
        async with server(cfg) as srv:
            adapter, sink, counters = make(srv.url, ("BTC-USD-PERP", "NOPE-USD-PERP"))
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 3, what="refusals")
            assert srv.errors >= 3 and counters[Slot.RECONNECTS] >= 2
            assert sink.status(STATUS_SUBSCRIBE_ERROR) >= 3 and not sink.dead
            assert sink.status(STATUS_CONNECTED) == 0
            await adapter.close()
            await task
            # rate-limited subscribe: refused, then subscribed once the server accepts again
            adapter, sink, counters = make(srv.url, ("BTC-USD-PERP",), rate_limit_pause=0.05)
            await srv.inject(Fault.REJECT_SUBSCRIBE)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 2, what="refusals")
            srv.clear()
            await wait_for(lambda: sink.status(STATUS_CONNECTED) == 1, what="subscribed")
            await wait_for(lambda: sink.kind(KIND_TRADE).size > 5, what="data")
            await adapter.close()
            await task

    asyncio.run(main())


def test_heartbeats_keep_a_quiet_connection_and_pings_go_out():
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with server(cfg, heartbeat_interval=0.1) as srv:
            adapter, sink, counters = make(srv.url, stale=0.5, ping_interval=0.1)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: len(data(sink)) > 20)
            await srv.inject(Fault.HEARTBEATS_ONLY)
            await asyncio.sleep(0.1)
            n = len(data(sink))
            t0 = time.monotonic()
            await wait_for(  # three times stale_after without data; heartbeats and pings go on
                lambda: (time.monotonic() - t0 > 1.5 and counters[Slot.HEARTBEATS] >= 10
                         and adapter.pings >= 8),
                what="heartbeats and pings over 1.5 s",
            )  # fmt: skip
            assert len(data(sink)) == n and srv.stats.connections_total == 1
            assert counters[Slot.RECONNECTS] == 0
            assert len(sink.kind(KIND_HEARTBEAT)) >= 1
            srv.clear()
            await wait_for(lambda: len(data(sink)) > n + 20, what="data again")
            await adapter.close()
            await task

    asyncio.run(main())


def test_stall_reconnects_after_stale_after():
    cfg = SimulatorConfig(prices=PRICES, rate=300)

    async def main():
        async with server(cfg, heartbeat_interval=0.1) as srv:
            adapter, sink, counters = make(srv.url, stale=0.5, subscribe_timeout=0.6)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: len(data(sink)) > 20)
            await srv.inject(Fault.STALL)
            await wait_for(lambda: srv.stats.connections_total >= 2, what="reconnect")
            srv.clear()
            n = len(data(sink))
            await wait_for(lambda: len(data(sink)) > n + 20, what="data after the stall")
            assert counters[Slot.DISCONNECTS] >= 1
            await adapter.close()
            await task

    asyncio.run(main())
