"""CoinApiAdapter against the local CoinAPI v1 server over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import CoinApiOptions
from fairfeed.core.records import (
    CLASS_CODES,
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_STATUS,
    KIND_TRADE,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.coinapi import CoinApiServer, iso_to_ns_reference
from fairfeed.local.faults import Fault
from fairfeed.providers.base import IngestContext
from fairfeed.providers.coinapi.adapter import CoinApiAdapter
from fairfeed.providers.coinapi.parse import SIDES
from fairfeed.providers.coinapi.symbols import from_symbol_id
from tests.providers.harness import Sink, schedule
from tests.waiting import wait_for_async as wait_for

KEY_ENV = "FAIRFEED_TEST_COINAPI_KEY"
SEED = 20260801  # the reconnect jitter of tests that bound retry times
PRICES = {
    "COINBASE_SPOT_BTC_USD": 64000.0,
    "KRAKEN_SPOT_BTC_USD": 64010.0,
    "COINBASE_SPOT_ETH_USD": 3000.0,
    "BINANCE_PERP_BTC_USDT": 64020.0,
    "COINBASE_SPOT_BTC_USDT": 63990.0,  # not subscribed: an exact filter must leave it out
}
SUBSCRIBED = [s for s in PRICES if s != "COINBASE_SPOT_BTC_USDT"]
REGISTRY = Registry.build(
    [("BTC-USD", CLASS_CODES["spot"]), ("ETH-USD", CLASS_CODES["spot"]),
     ("BTC-USDT-PERP", CLASS_CODES["perpetual"])],
    [("other", "X"), ("coinapi", "COINBASE"), ("coinapi", "KRAKEN"), ("coinapi", "BINANCE")],
)  # fmt: skip


SUBS_BY_SYMBOL = {
    sid: Subscription.resolve(REGISTRY, "coinapi", *from_symbol_id(sid)) for sid in SUBSCRIBED
}


def make(
    url: str,
    *,
    stale_after: float = 0.6,
    rng: random.Random | None = None,
    secrets: tuple[str, ...] = (),
    **kw,
):
    kw.setdefault("backoff_base", 0.02)
    kw.setdefault("backoff_cap", 0.1)
    provider = ProviderConfig(
        name="coinapi", kind="coinapi", url=url, api_key_env=KEY_ENV, stale_after=stale_after,
        options=CoinApiOptions(**kw),
    )  # fmt: skip
    subs = tuple(SUBS_BY_SYMBOL.values())
    sink, counters, dead = Sink(), DictCounters(), []
    ctx = IngestContext(
        provider=provider, url=url, subscriptions=subs, registry=REGISTRY, emit=sink,
        counters=counters, dead_letter=lambda error, frame: dead.append((error, frame)), rng=rng,
        secrets=secrets,
    )  # fmt: skip
    return CoinApiAdapter(ctx), sink, counters, dead


def server(rate: float = 400, max_events: int = 0, **kw) -> CoinApiServer:
    cfg = SimulatorConfig(prices=PRICES, rate=rate, max_events=max_events, seed=11)
    kw.setdefault("heartbeat_interval", 0.1)
    return CoinApiServer("coinapi-local", cfg, api_key="k-123", **kw)


async def running(adapter: CoinApiAdapter) -> asyncio.Task:
    return asyncio.create_task(adapter.run())


async def stop(adapter: CoinApiAdapter, task: asyncio.Task) -> None:
    await adapter.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(autouse=True)
def _key(monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, "k-123")


def expected(log) -> list[tuple]:
    """(ts_ex, ts_prov, price, size, seq, instrument, venue, kind, class, side) per record."""
    out = []
    for text in log:
        m = json.loads(text)
        venue, inst, dclass = from_symbol_id(m["symbol_id"])
        ids = (REGISTRY.instrument_id(inst), REGISTRY.venue_id(venue))
        clocks = (iso_to_ns_reference(m["time_exchange"]), iso_to_ns_reference(m["time_coinapi"]))
        dc = CLASS_CODES[dclass]
        if m["type"] == "trade":
            side = SIDES.get(m["taker_side"], 0)
            out.append((*clocks, m["price"], m["size"], m["sequence"], *ids, KIND_TRADE, dc, side))
        else:
            for kind, p, q in ((KIND_BID, "bid_price", "bid_size"),
                               (KIND_ASK, "ask_price", "ask_size")):  # fmt: skip
                out.append((*clocks, m[p], m[q], m["sequence"], *ids, kind, dc, 0))
    return out


def as_tuples(r: np.ndarray) -> list[tuple]:
    cols = ("ts_exchange", "ts_provider", "price", "size", "sequence", "instrument", "venue",
            "kind", "data_class", "side")  # fmt: skip
    return [tuple(x.item() for x in row) for row in zip(*(r[c] for c in cols), strict=True)]


def test_every_message_becomes_exactly_its_records() -> None:
    async def main() -> None:
        async with server(rate=3000, max_events=600, keep_log=10_000) as srv:
            adapter, sink, counters, dead = make(srv.url)
            task = await running(adapter)
            try:
                await wait_for(lambda: srv.stats.events == 600 and sink.n == len(expected(srv.log)))
                await asyncio.sleep(0.1)
            finally:
                await stop(adapter, task)
        recs = sink.records
        assert as_tuples(recs) == expected(srv.log)
        assert srv.stats.records == len(recs)  # 2 records per quote, 1 per trade
        sent = [json.loads(t) for t in srv.log]
        assert {m["symbol_id"] for m in sent} == set(SUBSCRIBED)  # the $ filter is exact
        assert {m["taker_side"] for m in sent if m["type"] == "trade"} == {
            "BUY", "SELL", "BUY_ESTIMATED", "SELL_ESTIMATED", "UNKNOWN"}  # fmt: skip
        # Venue / class mapping: BTC-USD from two spot venues, a perpetual from a third.
        combos = set(zip(recs["instrument"].tolist(), recs["venue"].tolist(),
                         recs["data_class"].tolist(), strict=True))  # fmt: skip
        assert combos == {(0, 1, 1), (0, 2, 1), (1, 1, 1), (2, 3, CLASS_CODES["perpetual"])}
        # Three clocks: exchange (2 ms before generation) < CoinAPI (1 ms) < our receive time,
        # all at CoinAPI's 100 ns resolution, not rounded to µs.
        assert np.all(recs["ts_exchange"] < recs["ts_provider"])
        assert np.all(recs["ts_provider"] < recs["ts_receive"])
        assert np.all(recs["ts_receive"] - recs["ts_provider"] < 5_000_000_000)
        assert np.all(recs["ts_exchange"] % 100 == 0) and np.any(recs["ts_exchange"] % 1000 != 0)
        assert counters[Slot.RECORDS_IN] == len(recs) and counters[Slot.PARSE_ERRORS] == 0
        assert counters[Slot.GAPS] == 0 and not dead

    asyncio.run(main())


@pytest.mark.parametrize("spelling", ["hearbeat", "heartbeat"])
def test_heartbeats_keep_a_quiet_connection_alive(spelling) -> None:
    async def main() -> None:
        async with server(heartbeat_type=spelling) as srv:
            adapter, sink, counters, _ = make(srv.url, stale_after=0.5)
            task = await running(adapter)
            try:
                await wait_for(lambda: sink.n > 10)
                await srv.inject(Fault.HEARTBEATS_ONLY)
                await asyncio.sleep(0.2)
                n, beats = sink.n, counters[Slot.HEARTBEATS]
                t0 = time.monotonic()
                await wait_for(  # three times stale_after without data; ~10 heartbeats/s
                    lambda: time.monotonic() - t0 > 1.5 and counters[Slot.HEARTBEATS] - beats >= 8,
                    what="8 heartbeats over 1.5 s",
                )
                assert sink.n == n  # data stopped
                assert srv.stats.connections_total == 1 and counters[Slot.RECONNECTS] == 0
                assert (sink.events["kind"] == KIND_HEARTBEAT).sum() >= 1
                srv.clear()
                await wait_for(lambda: sink.n > n, what="data again")
            finally:
                await stop(adapter, task)

    asyncio.run(main())


def test_stall_reconnects_after_stale_after_and_resubscribes() -> None:
    async def main() -> None:
        async with server() as srv:
            adapter, sink, counters, _ = make(srv.url, stale_after=0.5)
            task = await running(adapter)
            try:
                await wait_for(lambda: sink.n > 10)
                await srv.inject(Fault.STALL)
                t0 = time.monotonic()
                await wait_for(lambda: srv.stats.connections_total >= 2, what="reconnect")
                took = time.monotonic() - t0
                assert 0.4 <= took < 2.0
                srv.clear()
                n = sink.n
                await wait_for(lambda: sink.n > n + 10, what="data after the stall")
                assert srv.hellos >= 2 and counters[Slot.RECONNECTS] >= 1
            finally:
                await stop(adapter, task)

    asyncio.run(main())


def test_disconnect_reconnects_and_resubscribes_without_a_false_gap() -> None:
    async def main() -> None:
        async with server() as srv:
            adapter, sink, counters, _ = make(srv.url)
            task = await running(adapter)
            try:
                await wait_for(lambda: sink.n > 10)
                assert await srv.inject(Fault.DISCONNECT) == 1
                await wait_for(lambda: srv.hellos == 2 and srv.connections() == 1)
                n = sink.n
                await wait_for(lambda: sink.n > n + 10, what="data after the reconnect")
                assert counters[Slot.DISCONNECTS] == 1 and counters[Slot.RECONNECTS] == 1
                # The new connection numbers from 1 again: that is not a gap.
                assert counters[Slot.GAPS] == 0 and not (sink.events["kind"] == KIND_GAP).any()
            finally:
                await stop(adapter, task)

    asyncio.run(main())


def test_reconnect_notice_reconnects_at_once_before_the_deadline() -> None:
    async def main() -> None:
        async with server(reconnect_within=1.0) as srv:
            adapter, sink, counters, _ = make(srv.url)
            task = await running(adapter)
            try:
                await wait_for(lambda: sink.n > 10)
                assert await srv.inject(Fault.RECONNECT_NOTICE) == 1
                t0 = time.monotonic()
                await wait_for(lambda: srv.hellos == 2 and srv.connections() == 1)
                took = time.monotonic() - t0
                assert took < 0.5  # no backoff delay, far ahead of the 1 s deadline
                n = sink.n
                await wait_for(lambda: sink.n > n + 10, what="data after the reconnect")
                await asyncio.sleep(1.0)  # past the deadline: the server had nothing to close
                assert srv.forced_closes == 0 and adapter.notices == 1
                assert counters[Slot.DISCONNECTS] == 0  # planned, not a failure
                assert srv.stats.connections_total == 2
            finally:
                await stop(adapter, task)

    asyncio.run(main())


@pytest.mark.parametrize("cause", ["rate_limit", "bad_key"])
def test_error_is_counted_backs_off_and_never_hot_loops(cause, monkeypatch) -> None:
    if cause == "bad_key":
        monkeypatch.setenv(KEY_ENV, "wrong")

    async def main() -> None:
        async with server() as srv:
            if cause == "rate_limit":
                await srv.inject(Fault.REJECT_SUBSCRIBE)
            adapter, sink, counters, _ = make(
                srv.url, backoff_base=0.02, backoff_cap=0.1, rng=random.Random(SEED),
                error_retry_after=0.2, error_retry_cap=0.8,
            )  # fmt: skip
            t0 = time.monotonic()
            task = await running(adapter)
            try:
                await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 4, what="4 errors")
                took = time.monotonic() - t0
                attempts = srv.stats.connections_total
                # waits 0.2, 0.4, 0.8, 0.8 ... (or the seeded backoff if longer): never a hot loop
                jitter = schedule(0.02, 0.1, SEED, 3)
                waits = [max(r, d) for r, d in zip((0.2, 0.4, 0.8), jitter, strict=True)]
                assert attempts == 4 and took >= sum(waits), (attempts, took)
                assert counters[Slot.SUBSCRIBE_ERRORS] == adapter.errors >= attempts - 1
                assert srv.errors_sent == attempts and sink.n == 0
                if cause == "bad_key":
                    assert srv.auth_failures == attempts
                else:
                    assert srv.stats.rejected == attempts
                refused = sink.events[sink.events["kind"] == KIND_STATUS]["flags"]
                assert (refused == STATUS_SUBSCRIBE_ERROR).sum() == adapter.errors
                if cause == "rate_limit":
                    srv.clear()
                    await wait_for(lambda: sink.n > 10, timeout=3.0, what="data after the limit")
            finally:
                await stop(adapter, task)

    asyncio.run(main())


def test_an_api_key_echoed_in_a_provider_error_is_never_logged(caplog) -> None:
    """CoinAPI-style errors quoting our request carry the key; the log line must not."""

    async def main() -> None:
        async with server(echo_requests=True) as srv:
            await srv.inject(Fault.REJECT_SUBSCRIBE)
            adapter, _sink, counters, _ = make(srv.url, error_retry_after=0.05, error_retry_cap=0.1)
            adapter.conn_log.interval = 0.0  # every refusal logged, none suppressed
            task = await running(adapter)
            try:
                await wait_for(lambda: counters[Slot.SUBSCRIBE_ERRORS] >= 3, what="3 refusals")
            finally:
                await stop(adapter, task)

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    refused = [r.getMessage() for r in caplog.records if "subscription refused" in r.getMessage()]
    assert len(refused) >= 3
    assert all("(request: {" in line and "<redacted>" in line for line in refused), refused
    assert not [r for r in caplog.records if "k-123" in r.getMessage()]


def test_malformed_frames_are_counted_and_dead_lettered() -> None:
    async def main() -> None:
        async with server() as srv:
            adapter, sink, counters, dead = make(srv.url)
            task = await running(adapter)
            try:
                await wait_for(lambda: sink.n > 10)
                await srv.inject(Fault.MALFORMED, 3)
                await wait_for(lambda: counters[Slot.PARSE_ERRORS] == 3)
                n = sink.n
                await wait_for(lambda: sink.n > n + 5, what="data after the bad frames")
                assert len(dead) == 3 and srv.stats.malformed == 3
                assert all(f == srv.malformed_message().encode() and e for e, f in dead)
                assert srv.stats.connections_total == 1  # a bad frame does not drop anything
            finally:
                await stop(adapter, task)

    asyncio.run(main())


def test_sequence_gap_yields_gap_records_per_type_and_symbol() -> None:
    async def main() -> None:
        async with server(rate=800) as srv:
            adapter, sink, counters, _ = make(srv.url)
            task = await running(adapter)
            try:
                await wait_for(lambda: sink.n > 10)
                await srv.inject(Fault.SEQUENCE_GAP, 4)
                await wait_for(lambda: counters[Slot.GAPS] >= 1, what="a gap")
                gaps = sink.events[sink.events["kind"] == KIND_GAP]
                # one per (trade|quote, symbol) stream that emitted since: at most 8 streams
                assert 1 <= len(gaps) <= 8 and np.all(gaps["size"] == 4.0)
                assert counters[Slot.GAPS] == len(gaps) and counters[Slot.MISSED] == 4 * len(gaps)
            finally:
                await stop(adapter, task)

    asyncio.run(main())


def test_missing_api_key_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match=KEY_ENV):
        make("ws://127.0.0.1:9")
