"""Reconnects against the local servers on a tape (one market, as a venue): what an unplanned
reconnect misses is one gap per stream with the exact count; a planned one loses nothing and
publishes nothing twice."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.counters import Slot
from fairfeed.core.records import KIND_GAP, KIND_TRADE, STATUS_DISCONNECTED
from fairfeed.ipc.lastids import LastIds
from fairfeed.local.binance import BinanceServer
from fairfeed.local.coinapi import CoinApiServer
from fairfeed.local.faults import Fault
from fairfeed.local.kraken import KrakenServer
from fairfeed.providers.coinapi.parse import uuid_key
from tests.providers import test_binance_adapter as binance
from tests.providers import test_coinapi_adapter as coinapi
from tests.providers import test_kraken_adapter as kraken
from tests.providers.harness import Sink
from tests.waiting import wait_for_async as wait_for

pytestmark = pytest.mark.timeout(60)
AWAY = 0.3  # seconds a dropped client waits before reconnecting: the market goes on meanwhile


def trade_ids(sink: Sink, instrument: int) -> list[int]:
    r = sink.records
    return r["sequence"][(r["kind"] == KIND_TRADE) & (r["instrument"] == instrument)].tolist()


def gaps_of(sink: Sink, instrument: int) -> np.ndarray:
    g = sink.kind(KIND_GAP)
    return g[g["instrument"] == instrument]


async def unplanned(server, adapter, sink: Sink, counters, instruments: dict[int, int]) -> None:
    """Drop the connection under a steady flow; ``instruments``: registry id -> market index."""
    task = asyncio.create_task(adapter.run())
    await wait_for(lambda: all(len(trade_ids(sink, i)) >= 5 for i in instruments), what="trades")
    assert await server.inject(Fault.DISCONNECT) == 1
    at_drop = server.market.trade_id.copy()  # the server's last id per instrument at the drop
    await wait_for(
        lambda: all(max(trade_ids(sink, i)) > at_drop[m] + 5 for i, m in instruments.items()),
        what="trades after the reconnect",
    )
    await adapter.close()
    await task
    assert server.stats.connections_total == 2
    for i, m in instruments.items():
        ids = trade_ids(sink, i)
        assert len(ids) == len(set(ids)) and ids == sorted(ids)
        missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
        # the ids the server generated while the client was away, one block
        assert missing and missing == list(range(missing[0], missing[-1] + 1))
        assert missing[-1] <= server.market.trade_id[m] and missing[-1] > at_drop[m]
        g = gaps_of(sink, i)
        assert len(g) == 1, g
        assert (int(g[0]["size"]), int(g[0]["sequence"])) == (len(missing), missing[-1] + 1)
    assert counters[Slot.GAPS] == len(instruments)
    assert counters[Slot.MISSED] == sum(int(gaps_of(sink, i)[0]["size"]) for i in instruments)
    assert counters[Slot.DISCONNECTS] == 1


@pytest.mark.parametrize("feed", ["", "aggTrade"])
def test_binance_unplanned_reconnect_is_one_exact_gap_per_stream(feed: str) -> None:
    cfg = SimulatorConfig(prices=binance.PRICES, rate=600, quote_ratio=0.3, seed=5)
    names = tuple(binance.PRICES)[:3]
    inst = {binance.REGISTRY.instrument_id(s): k for k, s in enumerate(names)}

    async def main():
        async with BinanceServer("binance", cfg, tape=True) as server:
            adapter, sink, counters, _ = binance.make(
                server.url, names, feed=feed, backoff_base=AWAY, backoff_cap=AWAY
            )
            await unplanned(server, adapter, sink, counters, inst)

    asyncio.run(main())


def test_kraken_unplanned_reconnect_is_one_exact_gap_per_stream() -> None:
    cfg = SimulatorConfig(prices=kraken.PRICES, rate=600, quote_ratio=0.3, seed=6)
    names = tuple(kraken.PRICES)[:3]
    inst = {kraken.REGISTRY.instrument_id(s): k for k, s in enumerate(names)}

    async def main():
        async with KrakenServer("kraken", cfg, tape=True) as server:
            adapter, sink, counters, _ = kraken.make(
                server.url, names, backoff_base=AWAY, backoff_cap=AWAY
            )
            await unplanned(server, adapter, sink, counters, inst)

    asyncio.run(main())


@pytest.mark.parametrize("feed", ["", "aggTrade"])
def test_binance_planned_reconnect_loses_and_repeats_nothing(feed: str) -> None:
    cfg = SimulatorConfig(prices=binance.PRICES, rate=600, quote_ratio=0.3, seed=7)
    names = tuple(binance.PRICES)[:3]

    async def main():
        # The adapter switches every second, well before the server's own age limit.
        async with BinanceServer("binance", cfg, tape=True, max_connection_age=30.0) as server:
            adapter, sink, counters, _ = binance.make(server.url, names, feed=feed, age=1.0)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.stats.connections_total >= 3, what="two switches")
            await wait_for(lambda: server.stats.connections_open == 1, what="old session closed")
            n = sink.n
            await wait_for(lambda: sink.n > n + 50, what="data after the switches")
            await adapter.close()
            await task
            for s in names:
                ids = trade_ids(sink, binance.REGISTRY.instrument_id(s))
                assert ids == list(range(ids[0], ids[-1] + 1)), "every id exactly once"
            assert len(sink.kind(KIND_GAP)) == 0
            assert STATUS_DISCONNECTED not in sink.statuses
            assert counters[Slot.DISCONNECTS] == 0 and counters[Slot.RECONNECTS] >= 2
            assert server.age_closes == 0

    asyncio.run(main())


def sent_trades(server: CoinApiServer) -> dict[tuple[int, int, int], tuple[str, int]]:
    """Every trade the server sent (on any connection): (instrument, venue, uuid key) ->
    (symbol id, market trade id, from the uuid's last group)."""
    out = {}
    for text in server.log:
        m = json.loads(text)
        if m["type"] == "trade":
            sub = coinapi.SUBS_BY_SYMBOL[m["symbol_id"]]
            key = (sub.instrument_id, sub.venue_id, uuid_key(m["uuid"]))
            out[key] = (m["symbol_id"], int(m["uuid"].rsplit("-", 1)[1]))
    return out


def test_coinapi_reconnect_notices_publish_every_trade_exactly_once(monkeypatch) -> None:
    """CoinAPI's trades carry no number spanning connections: both sessions of a switch deliver
    and the trade uuid (its hash in ``reserved``) keeps the first arrival of each."""
    monkeypatch.setenv(coinapi.KEY_ENV, "k-123")
    cfg = SimulatorConfig(prices=coinapi.PRICES, rate=1500, quote_ratio=0.5, seed=12)

    async def main():
        srv = CoinApiServer("coinapi-local", cfg, api_key="k-123", heartbeat_interval=0.1,
                            reconnect_within=20.0, tape=True, keep_log=1_000_000)  # fmt: skip
        async with srv as server:
            adapter, sink, counters, _ = coinapi.make(server.url, stale_after=5.0)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: len(sink.kind(KIND_TRADE)) > 50, what="trades")
            for k in (2, 3):
                assert await server.inject(Fault.RECONNECT_NOTICE) == 1
                await wait_for(lambda k=k: server.stats.connections_total == k, what="a session")
                await wait_for(lambda: server.stats.connections_open == 1, what="old one closed")
                n = len(sink.kind(KIND_TRADE))
                await wait_for(lambda n=n: len(sink.kind(KIND_TRADE)) > n + 50, what="trades")
                await wait_for(
                    lambda: all(c.overlap is None for c in adapter.connections),
                    what="the switch's keys forgotten",
                )
            await adapter.close()
            await task
            assert STATUS_DISCONNECTED not in sink.statuses
            assert counters[Slot.DISCONNECTS] == 0 and counters[Slot.RECONNECTS] == 2
            assert server.forced_closes == 0
            sent = sent_trades(server)
            r = sink.kind(KIND_TRADE)
            got = list(zip(r["instrument"].tolist(), r["venue"].tolist(),
                           r["reserved"].tolist(), strict=True))  # fmt: skip
            assert len(got) == len(set(got)), "a trade published twice"
            assert set(got) <= set(sent)
            for sym in coinapi.SUBSCRIBED:
                ids = [sent[k][1] for k in got if sent[k][0] == sym]
                # every trade of the window, in order; the window: the first to the last one
                # published (the ones in flight at the close are not)
                assert ids == list(range(ids[0], ids[-1] + 1)), sym

    asyncio.run(main())


def test_a_restarted_adapter_on_the_same_table_reports_what_the_restart_missed() -> None:
    """As a worker restarted by the supervisor: a new adapter and connection, the old last-id
    table (the daemon's is in shared memory)."""
    cfg = SimulatorConfig(prices=binance.PRICES, rate=600, quote_ratio=0.3, seed=8)
    names = tuple(binance.PRICES)[:2]
    table = LastIds.local(len(binance.REGISTRY.instruments), len(binance.REGISTRY.sources))

    async def main():
        async with BinanceServer("binance", cfg, tape=True) as server:
            before, sink1, _, _ = binance.make(server.url, names)
            before.ctx.last_ids = table
            before.last_ids = table
            task = asyncio.create_task(before.run())
            await wait_for(lambda: sink1.n > 30, what="data")
            await before.close()
            await task
            at_stop = server.market.trade_id.copy()
            await wait_for(lambda: (server.market.trade_id > at_stop + 5).all(), what="trades")
            after, sink2, counters, _ = binance.make(server.url, names)
            after.ctx.last_ids = after.last_ids = table
            task = asyncio.create_task(after.run())
            ids = [binance.REGISTRY.instrument_id(s) for s in names]
            await wait_for(lambda: all(trade_ids(sink2, i) for i in ids), what="trades after")
            await after.close()
            await task
            for s in names:
                i = binance.REGISTRY.instrument_id(s)
                last_before, first_after = max(trade_ids(sink1, i)), min(trade_ids(sink2, i))
                g = gaps_of(sink2, i)
                assert len(g) == 1 and int(g[0]["size"]) == first_after - last_before - 1 > 0
            assert counters[Slot.GAPS] == len(names)

    asyncio.run(main())
