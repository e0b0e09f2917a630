"""CoinbaseAdapter (Exchange feed and Advanced Trade) against the local CoinbaseServer and the
replayed real captures: real WebSockets over loopback, no mocks.

Expected records are derived here independently of the parsers: the server logs every frame
it sent (``keep_log``), and this file decodes them with plain ``json`` and numpy's ISO-8601
parser, exactly as ``test_coinbase_replay`` does for the captures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import CoinbaseOptions
from fairfeed.core.records import (
    CLASS_CODES,
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_TRADE,
    NO_INSTRUMENT,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.ipc.pacer import Pacer
from fairfeed.local.capture import received
from fairfeed.local.coinbase import CoinbaseServer
from fairfeed.local.faults import Fault
from fairfeed.local.replay import ReplayServer
from fairfeed.providers.base import IngestContext
from fairfeed.providers.coinbase.adapter import CoinbaseAdapter
from tests.providers.harness import Sink, schedule
from tests.waiting import wait_for_async as wait_for

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0, "SOL-USD": 150.0}
CAPTURES = Path(__file__).resolve().parents[2] / "tests" / "data" / "captures"
EXCHANGE_CAPTURE = CAPTURES / "COINBASE.ws.28.0"
ADVANCED_CAPTURE = CAPTURES / "COINBASE.jsonl.zst"
EXCHANGE_PRODUCTS = ("SKL-USD", "SKL-BTC", "BAND-GBP", "NMR-EUR", "BAND-BTC", "YFI-BTC",
                     "DASH-BTC", "NU-GBP", "CRV-EUR", "SKL-GBP")  # fmt: skip
SPOT = CLASS_CODES["spot"]
USDC = ("BTC-USDC", "ETH-USDC")  # served by Advanced Trade as BTC-USD, ETH-USD
REGISTRY = Registry.build(
    [
        ("XRP-USD", SPOT),
        *((s, SPOT) for s in PRICES),
        *((s, SPOT) for s in EXCHANGE_PRODUCTS),
        *((s, SPOT) for s in USDC),
    ],
    [("other", "KRAKEN"), ("coinbase", "COINBASE")],
)
PROV = REGISTRY.provider_id("coinbase")
VENUE = REGISTRY.venue_id("COINBASE")
IDS = {s: REGISTRY.instrument_id(s) for s in (*PRICES, *EXCHANGE_PRODUCTS)}
FIELDS = ("ts_exchange", "ts_provider", "price", "size", "sequence", "instrument", "provider",
          "venue", "kind", "data_class", "side", "flags", "reserved")  # fmt: skip
FEEDS = ("exchange", "advanced")
SEED = 20260801  # the reconnect jitter of tests that bound retry times


# --- independent expectations ----------------------------------------------------------------


def ns(text: str) -> int:
    assert text.endswith("Z")
    return int(np.datetime64(text[:-1], "ns").astype(np.int64))


def go_ns(text: str) -> int:  # "2026-08-09 21:05:48.854840045 +0000 UTC m=+..."
    return ns(text.split(" +0000")[0].replace(" ", "T") + "Z")


def rec(ts_ex, ts_prov, price, size, seq, inst, kind, side, reserved=0):
    return (ts_ex, ts_prov, price, size, seq, inst, PROV, VENUE, kind, SPOT, side, 0, reserved)


def expect(feed: str, texts: list[str]) -> tuple[list[tuple], int, int]:
    """Records the adapter must emit for ``texts`` (in order), the subscriptions answers and
    the heartbeats among them. Exchange trades carry trade_id in ``sequence`` (the adapter's
    ``trade_sequence=True``), the venue sequence's low 32 bits in ``reserved``."""
    out: list[tuple] = []
    acks = beats = 0
    for text in texts:
        try:
            m = json.loads(text)
        except ValueError:
            continue  # malformed on purpose
        if feed == "exchange":
            t = m.get("type")
            if t == "match":  # last_match is history: never published
                taker = SIDE_BUY if m["side"] == "sell" else SIDE_SELL  # side is the maker's
                out.append(rec(ns(m["time"]), 0, float(m["price"]), float(m["size"]),
                               m["trade_id"], IDS[m["product_id"]], KIND_TRADE, taker,
                               m["sequence"] & 0xFFFFFFFF))  # fmt: skip
            elif t == "ticker":
                c = (ns(m["time"]), 0)
                i, s, tid = IDS[m["product_id"]], m["sequence"], m.get("trade_id", 0)
                out.append(rec(*c, float(m["best_bid"]), float(m.get("best_bid_size", 0)), s, i,
                               KIND_BID, SIDE_UNKNOWN, tid))  # fmt: skip
                out.append(rec(*c, float(m["best_ask"]), float(m.get("best_ask_size", 0)), s, i,
                               KIND_ASK, SIDE_UNKNOWN, tid))  # fmt: skip
            elif t == "heartbeat":
                beats += 1
                ts = ns(m["time"])
                out.append(rec(ts, ts, 0.0, 0.0, m["sequence"], IDS[m["product_id"]],
                               KIND_HEARTBEAT, SIDE_UNKNOWN, m["last_trade_id"]))  # fmt: skip
            elif t == "subscriptions":
                acks += 1
            continue
        ch = m.get("channel")
        if ch is None:
            continue  # an error answer
        tp = ns(m["timestamp"])
        for ev in m["events"]:
            if ch == "market_trades" and ev["type"] == "update":
                for tr in sorted(ev["trades"], key=lambda x: int(x["trade_id"])):
                    taker = SIDE_BUY if tr["side"] == "SELL" else SIDE_SELL
                    out.append(rec(ns(tr["time"]), tp, float(tr["price"]), float(tr["size"]),
                                   int(tr["trade_id"]), IDS[tr["product_id"]], KIND_TRADE,
                                   taker))  # fmt: skip
            elif ch == "ticker":
                for tk in ev["tickers"]:
                    i, s = IDS[tk["product_id"]], m["sequence_num"]
                    out.append(rec(0, tp, float(tk["best_bid"]), float(tk["best_bid_quantity"]),
                                   s, i, KIND_BID, SIDE_UNKNOWN))  # fmt: skip
                    out.append(rec(0, tp, float(tk["best_ask"]), float(tk["best_ask_quantity"]),
                                   s, i, KIND_ASK, SIDE_UNKNOWN))  # fmt: skip
            elif ch == "heartbeats":
                beats += 1
                out.append(rec(go_ns(ev["current_time"]), tp, 0.0, 0.0,
                               int(ev["heartbeat_counter"]), NO_INSTRUMENT, KIND_HEARTBEAT,
                               SIDE_UNKNOWN))  # fmt: skip
        if ch == "subscriptions":
            acks += 1
    return out, acks, beats


# --- harness ---------------------------------------------------------------------------------


def tuples(records: np.ndarray) -> list[tuple]:
    return [tuple(r[f].item() for f in FIELDS) for r in records]


def context(feed: str, url: str, instruments, sink: Sink, counters: DictCounters,
            stale_after: float = 0.0, rng: random.Random | None = None,
            **options) -> IngestContext:  # fmt: skip
    provider = ProviderConfig(name="coinbase", kind="coinbase", venue="COINBASE", url=url,
                              feed=feed, subscribe_interval=0.01, stale_after=stale_after,
                              options=CoinbaseOptions(**options))  # fmt: skip
    subs = tuple(Subscription.resolve(REGISTRY, "coinbase", "COINBASE", i, "spot")
                 for i in instruments)  # fmt: skip
    return IngestContext(provider, url, subs, REGISTRY, sink, counters,
                         dead_letter=sink.dead_letter, rng=rng)  # fmt: skip


class Harness:
    def __init__(self, feed: str, cfg: SimulatorConfig, instruments=tuple(PRICES), **kw) -> None:
        self.feed = feed
        self.server = CoinbaseServer("coinbase", cfg, feed=feed, keep_log=True)
        self.instruments = instruments
        self.kw = kw
        self.sink = Sink()
        self.counters = DictCounters()

    async def __aenter__(self) -> Harness:
        await self.server.start()
        self.kw.setdefault("backoff_base", 0.05)
        self.kw.setdefault("backoff_cap", 0.2)
        self.kw.setdefault("stale_after", 2.0)
        self.kw.setdefault("rate_limit_pause", 0.1)
        ctx = context(
            self.feed, self.server.url, self.instruments, self.sink, self.counters, **self.kw
        )
        self.adapter = CoinbaseAdapter(ctx)
        self.task = asyncio.create_task(self.adapter.run())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.adapter.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.server.stop()

    def trades(self, since: int = 0) -> np.ndarray:
        r = self.sink.all[since:]
        return r[r["kind"] == KIND_TRADE]

    @property
    def n(self) -> int:
        return sum(len(b) for b in self.sink.emitted)

    def sent(self) -> list[str]:
        return [t for _, t in self.server.sent_log]


# --- exact records against the local server --------------------------------------------------


@pytest.mark.parametrize("feed", FEEDS)
def test_local_server_records_exact(feed):
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=3000, max_events=900, heartbeat_interval=0.1,
                              seed=11)  # fmt: skip
        async with Harness(feed, cfg) as h:
            await wait_for(lambda: h.server.stats.events == 900)
            beats = h.counters[Slot.HEARTBEATS]  # and a few heartbeats once the market is quiet
            await wait_for(lambda: h.counters[Slot.HEARTBEATS] >= beats + 3, what="3 heartbeats")
            await h.server.stop()  # closes after what was sent: nothing is in flight afterwards
            expected, acks, beats = expect(feed, h.sent())
            await wait_for(lambda: len(h.sink.parsed) == len(expected))
            got = h.sink.parsed
            c = h.counters
        assert acks == (1 if feed == "exchange" else 3)
        assert len({i for i, _ in h.server.sent_log}) == 1  # one connection
        assert beats >= 3 and c[Slot.HEARTBEATS] == beats
        exp_trades = sum(s.trades for s in h.server.stats.symbols.values())
        assert sum(1 for e in expected if e[8] == KIND_TRADE) == exp_trades
        assert tuples(got) == expected
        assert (got["ts_receive"] > 0).all() and (np.diff(got["ts_receive"]) >= 0).all()
        # Sides: the taker is the opposite of the maker side the wire prints.
        trades = got[got["kind"] == KIND_TRADE]
        assert set(trades["side"].tolist()) == {SIDE_BUY, SIDE_SELL}
        assert c[Slot.RECORDS_IN] == len(got)
        assert c[Slot.PARSE_ERRORS] == c[Slot.GAPS] == c[Slot.SUBSCRIBE_ERRORS] == 0
        assert h.sink.statuses[0] == STATUS_CONNECTED
        # Per product, trades are contiguous: the gap tracker had nothing to say.
        for inst in IDS.values():
            seq = trades[trades["instrument"] == inst]["sequence"]
            assert (np.diff(seq) == 1).all()

    asyncio.run(main())


@pytest.mark.parametrize("with_usd", [False, True], ids=["usdc-only", "usd-and-usdc"])
def test_advanced_usdc_product_reads_the_usd_products_data(with_usd):
    """Advanced Trade answers a BTC-USDC subscription with BTC-USD's data, named BTC-USD in
    every message: read as BTC-USDC (and, with BTC-USD subscribed too, as both), never as a
    parse error."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=3000, max_events=900, heartbeat_interval=0.1,
                              seed=12)  # fmt: skip
        insts = ("BTC-USDC", "ETH-USD", *(("BTC-USD",) if with_usd else ()))
        async with Harness("advanced", cfg, instruments=insts) as h:
            await wait_for(lambda: h.server.stats.events == 900)
            await h.server.stop()
            expected, _, _ = expect("advanced", h.sent())
            await wait_for(lambda: len(h.sink.parsed) >= len(expected))
            got = h.sink.parsed
            c = h.counters
        usd, usdc = IDS["BTC-USD"], REGISTRY.instrument_id("BTC-USDC")
        want = []
        for r in expected:
            if r[5] == usd:
                want.append((*r[:5], usdc, *r[6:]))
                if with_usd:
                    want.append(r)
            else:
                want.append(r)
        assert sorted(tuples(got)) == sorted(want)
        btc_trades = h.server.stats.symbols["BTC-USD"].trades
        assert btc_trades > 0
        trades = got[got["kind"] == KIND_TRADE]
        assert (trades["instrument"] == usdc).sum() == btc_trades
        assert (trades["instrument"] == usd).sum() == (btc_trades if with_usd else 0)
        assert c[Slot.PARSE_ERRORS] == c[Slot.DEAD_LETTERS] == c[Slot.GAPS] == 0
        assert h.sink.dead == []

    asyncio.run(main())


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDS)
def test_disconnect_reconnects_resubscribes_and_reports_exactly_what_it_missed(feed):
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000, heartbeat_interval=0.2, seed=5)
        async with Harness(feed, cfg) as h:
            await wait_for(lambda: len(h.trades()) > 50)
            # every request answered (they are paced: trades flow before the last is sent)
            await wait_for(lambda: h.sink.statuses[:1] == [STATUS_CONNECTED])
            subscribes = h.server.subscribes
            assert await h.server.inject(Fault.DISCONNECT) == 1
            h.server.market.events(list(range(len(PRICES))), 300)  # trades we miss while away
            n = h.n
            await wait_for(lambda: h.server.stats.connections_total == 2)
            await wait_for(lambda: len(h.trades(n)) > 50)
            await wait_for(lambda: len(h.sink.statuses) >= 3, what="subscribed again")
            assert h.server.subscribes == 2 * subscribes  # everything subscribed again
            assert h.counters[Slot.RECONNECTS] == 1 and h.counters[Slot.DISCONNECTS] == 1
            st = h.sink.statuses
            assert st[:3] == [STATUS_CONNECTED, STATUS_DISCONNECTED, STATUS_CONNECTED]
            # Trade ids continue across connections: trades in flight when the server cut the
            # line are missed, and reported as one gap per instrument with the exact count.
            r, gaps = h.trades(), h.sink.kind(KIND_GAP)
            for i in set(r["instrument"].tolist()):
                ids = set(r["sequence"][r["instrument"] == i].tolist())
                assert len(ids) == (r["instrument"] == i).sum()  # nothing published twice
                missed = max(ids) - min(ids) + 1 - len(ids)
                assert int(gaps["size"][gaps["instrument"] == i].sum()) == missed
            assert h.counters[Slot.MISSED] == int(gaps["size"].sum()) > 0
            assert h.counters[Slot.CONNECTED] == 1

    asyncio.run(main())


def test_exchange_last_match_on_connect_is_not_published():
    """A fresh connection gets each product's ``last_match`` first: the last trade before it
    subscribed, possibly minutes old. It is history: the first trade published is the first
    live ``match``."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000, heartbeat_interval=0.2, seed=6)
        async with Harness("exchange", cfg) as h:
            await wait_for(lambda: len(h.trades()) > 50)  # the market has traded
            sink, counters = Sink(), DictCounters()
            ctx = context("exchange", h.server.url, tuple(PRICES), sink, counters,
                          backoff_base=0.05, backoff_cap=0.2, stale_after=2.0)  # fmt: skip
            second = CoinbaseAdapter(ctx)
            task = asyncio.create_task(second.run())
            await wait_for(lambda: sum(len(b) for b in sink.batches) > 50)
            await second.close()
            await task
            index = max(i for i, _ in h.server.sent_log)  # the second connection's frames
            sent = [json.loads(t) for i, t in h.server.sent_log if i == index]
        history = {(m["product_id"], m["trade_id"]) for m in sent if m["type"] == "last_match"}
        assert len(history) == len(PRICES)
        got = sink.parsed
        trades = got[got["kind"] == KIND_TRADE]
        published = {(p, int(s)) for p, i in IDS.items()
                     for s in trades["sequence"][trades["instrument"] == i]}  # fmt: skip
        assert published and not history & published
        assert counters[Slot.PARSE_ERRORS] == 0

    asyncio.run(main())


@pytest.mark.parametrize("feed", FEEDS)
def test_stall_is_stale_and_replaced_heartbeats_only_is_alive(feed):
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=1000, heartbeat_interval=0.1, seed=6)
        async with Harness(feed, cfg, stale_after=0.5) as h:
            await wait_for(lambda: len(h.trades()) > 20)
            # Heartbeats only: a quiet market, not a dead connection.
            await h.server.inject(Fault.HEARTBEATS_ONLY)
            await asyncio.sleep(0.2)
            n_trades, beats = len(h.trades()), h.counters[Slot.HEARTBEATS]
            t0 = time.monotonic()
            await wait_for(  # > 2 x stale_after without data, and heartbeats meanwhile
                lambda: time.monotonic() - t0 > 1.2 and h.counters[Slot.HEARTBEATS] >= beats + 8,
                what="8 heartbeats over 1.2 s",
            )
            assert len(h.trades()) == n_trades
            assert len(h.sink.kind(KIND_HEARTBEAT)) >= 8
            assert h.counters[Slot.RECONNECTS] == 0 and h.server.stats.connections_total == 1
            h.server.clear()
            await wait_for(lambda: len(h.trades()) > n_trades + 20)
            # Stall: socket open, nothing sent: stale after stale_after, replaced.
            await h.server.inject(Fault.STALL)
            t0 = time.monotonic()
            await wait_for(lambda: h.counters[Slot.DISCONNECTS] == 1, 3.0)
            assert 0.4 < time.monotonic() - t0 < 1.5
            h.server.clear()
            n = h.n
            await wait_for(lambda: len(h.trades(n)) > 20, 5.0)
            assert h.counters[Slot.CONNECTED] == 1 and h.counters[Slot.RECONNECTS] >= 1

    asyncio.run(main())


def test_exchange_sequence_gap_is_a_gap_record_per_product():
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000, quote_ratio=0.3, seed=8)
        async with Harness("exchange", cfg) as h:
            await wait_for(lambda: len(h.trades()) > 60)
            await h.server.inject(Fault.SEQUENCE_GAP, 7)
            await wait_for(lambda: len(h.sink.kind(KIND_GAP)) >= 1)
            await asyncio.sleep(0.2)
            gaps = h.sink.kind(KIND_GAP)
            trades = h.trades()
        # Independently: jumps in each product's trade ids as received.
        jumps = []
        for inst in {int(i) for i in trades["instrument"]}:
            tid = trades[trades["instrument"] == inst]["sequence"]
            d = np.diff(tid)
            jumps += [(inst, int(tid[k + 1]), int(d[k] - 1)) for k in np.flatnonzero(d > 1)]
        got = sorted((int(g["instrument"]), int(g["sequence"]), int(g["size"])) for g in gaps)
        assert got == sorted(jumps) and all(missed == 7 for _, _, missed in got)
        assert h.counters[Slot.GAPS] == len(got) and h.counters[Slot.MISSED] == 7 * len(got)

    asyncio.run(main())


def test_advanced_sequence_gap_is_one_connection_gap_record():
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=1000, heartbeat_interval=0.1, seed=9)
        async with Harness("advanced", cfg) as h:
            await wait_for(lambda: len(h.trades()) > 30)
            assert await h.server.inject(Fault.SEQUENCE_GAP, 5) == 1
            await wait_for(lambda: len(h.sink.kind(KIND_GAP)) == 1)
            await asyncio.sleep(0.2)
            [gap] = h.sink.kind(KIND_GAP)
            assert gap["size"] == 5 and gap["instrument"] == NO_INSTRUMENT
            # the gap sits right before the message whose sequence_num jumped
            nums = [json.loads(t)["sequence_num"] for t in h.sent() if '"sequence_num"' in t]
            jumps = [b for a, b in itertools.pairwise(nums) if b != a + 1]
            assert jumps == [int(gap["sequence"])]
            assert h.counters[Slot.GAPS] == 1 and h.counters[Slot.MISSED] == 5

    asyncio.run(main())


@pytest.mark.parametrize("feed", FEEDS)
def test_exchange_delay_and_price_offset_are_visible(feed):
    async def main():
        cfg = SimulatorConfig(prices={"BTC-USD": 64000.0}, rate=1000, quote_ratio=0.2, seed=3)
        async with Harness(feed, cfg, instruments=("BTC-USD",)) as h:
            await wait_for(lambda: len(h.trades()) > 30)
            before = h.trades()
            # the least transport time: a loaded machine delays some frames, not every one
            assert (before["ts_receive"] - before["ts_exchange"]).min() < 100e6
            await h.server.inject(Fault.EXCHANGE_DELAY, 400)
            # one connection, frames in order: from the first delayed trade on, all are
            await wait_for(
                lambda: h.trades()["ts_receive"][-1] - h.trades()["ts_exchange"][-1] >= 400e6
            )
            n = h.n
            await wait_for(lambda: len(h.trades(n)) > 30)
            lag = h.trades(n)["ts_receive"] - h.trades(n)["ts_exchange"]
            assert (lag >= 400e6).all() and lag.min() < 500e6
            h.server.clear()
            p0 = float(h.trades()["price"][-1])
            await h.server.inject(Fault.PRICE_OFFSET, 500)
            await wait_for(lambda: h.trades()["price"][-1] / p0 > 1.045, what="an offset trade")
            n = h.n
            await wait_for(lambda: len(h.trades(n)) > 30)
            ratio = h.trades(n)["price"] / p0
            assert (ratio > 1.045).all() and (ratio < 1.055).all()

    asyncio.run(main())


@pytest.mark.parametrize("feed", FEEDS)
def test_malformed_frames_are_counted_and_dead_lettered(feed):
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=500, seed=4)
        async with Harness(feed, cfg) as h:
            await wait_for(lambda: len(h.trades()) > 10)
            await h.server.inject(Fault.MALFORMED, 3)
            await wait_for(lambda: h.counters[Slot.PARSE_ERRORS] == 3)
            n = h.n
            await wait_for(lambda: len(h.trades(n)) > 10)  # the stream goes on
            assert h.counters[Slot.PARSE_ERRORS] == 3 and h.counters[Slot.RECONNECTS] == 0
            assert [f for _, f in h.sink.dead] == [h.server.malformed_message().encode()] * 3
            assert all(err for err, _ in h.sink.dead)
            # Coinbase has no reconnect notice: the fault sends nothing.
            assert await h.server.inject(Fault.RECONNECT_NOTICE) == 0

    asyncio.run(main())


@pytest.mark.parametrize("feed", FEEDS)
def test_rate_limit_refusal_backs_off_with_bounded_attempts(feed):
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=500, seed=2)
        kw = {"backoff_base": 0.1, "backoff_cap": 0.4, "rate_limit_pause": 0.25}
        async with Harness(feed, cfg, rng=random.Random(SEED), **kw) as h:
            await wait_for(lambda: len(h.trades()) > 10)
            await h.server.inject(Fault.REJECT_SUBSCRIBE)
            await h.server.inject(Fault.DISCONNECT)
            t0 = time.monotonic()
            await wait_for(lambda: h.counters[Slot.SUBSCRIBE_ERRORS] >= 3, what="3 refusals")
            took = time.monotonic() - t0
            refused = h.server.stats.rejected
            attempts = h.server.stats.connections_total - 1
            # The first attempt after the seeded backoff, each next one after
            # max(rate_limit_pause, backoff): bounded attempts, never a hot loop.
            d = schedule(0.1, 0.4, SEED, 3)
            assert took >= d[0] + max(0.25, d[1]) + max(0.25, d[2])
            assert attempts == 3 and attempts - 1 <= refused <= attempts
            assert h.counters[Slot.SUBSCRIBE_ERRORS] == refused
            assert h.sink.statuses.count(STATUS_SUBSCRIBE_ERROR) == refused
            h.server.clear()
            n = h.n
            await wait_for(lambda: len(h.trades(n)) > 10, 3.0)
            assert time.monotonic() - t0 < 3.5

    asyncio.run(main())


@pytest.mark.parametrize("feed", FEEDS)
def test_live_remove_unsubscribes_and_add_opens_a_connection(feed):
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=1500, seed=12)
        async with Harness(feed, cfg, instruments=("BTC-USD", "ETH-USD")) as h:
            await wait_for(lambda: len(h.trades()) > 30)
            eth = Subscription.resolve(REGISTRY, "coinbase", "COINBASE", "ETH-USD", "spot")
            sol = Subscription.resolve(REGISTRY, "coinbase", "COINBASE", "SOL-USD", "spot")
            slot = h.adapter.pacer._index[("coinbase", "message")]
            tat = float(h.adapter.pacer.slots[slot])
            h.adapter.remove((eth,))
            await asyncio.sleep(0.2)
            # the unsubscribe message took a per-IP message slot like a subscribe message
            assert float(h.adapter.pacer.slots[slot]) > tat
            n = h.n
            h.adapter.add((sol,))
            await wait_for(lambda: h.server.stats.connections_total == 2)
            await wait_for(lambda: IDS["SOL-USD"] in h.trades(n)["instrument"])
            await wait_for(lambda: len(h.trades(n)) > 60)
            got = set(h.trades(n)["instrument"].tolist())
            assert got == {IDS["BTC-USD"], IDS["SOL-USD"]}  # ETH-USD gone, SOL-USD added
            first = next(c for c in h.server._conns.values() if c.index == 0)
            assert first.symbols == [h.server.market.index["BTC-USD"]]  # unsubscribed there
            assert h.counters[Slot.RECONNECTS] == 0 and h.counters[Slot.SUBSCRIBE_ERRORS] == 0
            # a new session of that connection subscribes BTC-USD only: no filter left on it
            conn0 = h.adapter.connections[0]
            assert conn0.muted is not None
            opened = conn0.opened
            await h.server.inject(Fault.DISCONNECT)
            # conn0's own new session (the other connection may reconnect first)
            await wait_for(lambda: conn0.opened > opened and conn0.subscribed)
            n = h.n
            await wait_for(lambda: len(h.trades(n)) > 30)
            assert conn0.muted is None
            assert IDS["ETH-USD"] not in set(h.trades(n)["instrument"].tolist())

    asyncio.run(main())


# --- the real captures through the adapters ----------------------------------------------------


@pytest.mark.parametrize(
    ("feed", "path", "products"),
    [("exchange", EXCHANGE_CAPTURE, EXCHANGE_PRODUCTS), ("advanced", ADVANCED_CAPTURE,
                                                         ("BTC-USD", "ETH-USD"))],
)  # fmt: skip
def test_capture_replayed_through_the_adapter_exact(feed, path, products):
    _, frames = received(path)
    expected, acks, beats = expect(feed, [t for _, t in frames])
    kinds = [e[8] for e in expected]
    # The captures, counted independently (docs/providers/coinbase.md).
    if feed == "exchange":
        assert (kinds.count(KIND_TRADE), kinds.count(KIND_BID), beats, acks) == (97, 107, 0, 3)
    else:
        assert (kinds.count(KIND_TRADE), kinds.count(KIND_BID), beats, acks) == (79, 160, 25, 5)

    async def main():
        sink, counters = Sink(), DictCounters()
        async with ReplayServer(path, speed=0, keep_open=True) as srv:
            ctx = context(feed, srv.url, products, sink, counters, stale_after=5.0)
            adapter = CoinbaseAdapter(ctx)
            task = asyncio.create_task(adapter.run())
            try:
                await wait_for(lambda: len(sink.parsed) >= len(expected), 10)
                await asyncio.sleep(0.05)
            finally:
                await adapter.close()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return sink, counters

    sink, counters = asyncio.run(main())
    got = sink.parsed
    assert tuples(got) == expected
    assert counters[Slot.PARSE_ERRORS] == 0 and counters[Slot.GAPS] == 0
    assert counters[Slot.HEARTBEATS] == beats and counters[Slot.FRAMES_IN] == len(frames)
    assert sink.statuses[0] == STATUS_CONNECTED  # acknowledged by the recorded answers


def test_connections_and_subscribe_messages_are_paced_per_ip_across_workers():
    """Coinbase allows about 8 new connections and 8 messages a second per IP: two adapters
    (two ingest workers) sharing the daemon's pacer open 12 connections and send 36 subscribe
    messages without ever exceeding that in any second (unpaced, all would go at once); the
    declared ``Rate(8, 1.0)`` spaces them 1/7 s apart, so even a window with both ends on an
    action holds 8."""
    products = [f"C{i}-USD" for i in range(12)]
    reg = Registry.build([(p, SPOT) for p in products], [("coinbase", "COINBASE")])
    pacer = Pacer.local(["coinbase"])

    def per_second_max(times: list[float]) -> int:
        t = np.sort(np.array(times))
        return int(max(np.searchsorted(t, t + 1.0, side="left") - np.arange(len(t))))

    async def main():
        cfg = SimulatorConfig(prices=dict.fromkeys(products, 10.0), rate=50, seed=2)
        async with CoinbaseServer("coinbase", cfg, feed="advanced") as server:
            adapters = []
            for half in (products[:6], products[6:]):
                provider = ProviderConfig(
                    name="coinbase", kind="coinbase", venue="COINBASE", url=server.url,
                    feed="advanced", max_streams_per_connection=1, stale_after=10.0,
                    options=CoinbaseOptions(backoff_base=0.05, backoff_cap=0.2),
                )  # fmt: skip
                subs = tuple(Subscription.resolve(reg, "coinbase", "COINBASE", p, "spot")
                             for p in half)  # fmt: skip
                ctx = IngestContext(provider, server.url, subs, reg, Sink(), DictCounters(),
                                    pacer=pacer)  # fmt: skip
                adapters.append(CoinbaseAdapter(ctx))
            tasks = [asyncio.create_task(a.run()) for a in adapters]
            await wait_for(lambda: len(server.stats.request_times) == 36, timeout=30,
                           what="every subscribe message")  # fmt: skip
            for a in adapters:
                await a.close()
            await asyncio.gather(*tasks)
            return server.stats

    stats = asyncio.run(main())
    assert len(stats.connect_times) == 12
    assert per_second_max(stats.connect_times) <= 8
    assert per_second_max(stats.request_times) <= 8
    assert per_second_max(stats.request_times) >= 7  # paced, not slowed down further
