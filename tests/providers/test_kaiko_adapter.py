"""KaikoAdapter against the local KaikoServer: real gRPC over loopback, no mocks."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time

import grpc
import numpy as np
import pytest
from kaikosdk import sdk_pb2_grpc

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import KaikoOptions
from fairfeed.core.records import (
    CLASS_CODES,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_GAP,
    KIND_INDEX,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    NO_INSTRUMENT,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.faults import Fault
from fairfeed.local.kaiko import KaikoServer
from fairfeed.local.tcpproxy import TcpProxy
from fairfeed.providers.base import IngestContext
from fairfeed.providers.kaiko.adapter import (
    MARKET_UPDATE_METHOD,
    METRICS_METHOD,
    TRADES_METHOD,
    KaikoAdapter,
)
from tests.providers.harness import Sink
from tests.providers.kaiko_metrics import expected_metrics
from tests.waiting import wait_for_async as wait_for

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0, "BTC-USDT-PERP": 64010.0}
SUBS = [
    ("COINBASE", "BTC-USD", "spot"),
    ("COINBASE", "ETH-USD", "spot"),
    ("BINANCE", "BTC-USDT-PERP", "perpetual"),
]
REGISTRY = Registry.build(
    [
        ("XRP-USD", CLASS_CODES["spot"]),
        ("BTC-USD", 1),
        ("ETH-USD", 1),
        ("BTC-USDT-PERP", 3),
        ("BTC-USD-250328", CLASS_CODES["future"]),
    ],
    [("other", "KRAKEN"), ("kaiko", "COINBASE"), ("kaiko", "BINANCE"), ("kaiko", "KRAKEN")],
)
KEY = "secret-key"
KEY_ENV = "FAIRFEED_TEST_KAIKO_KEY"
SEED = 20260801  # the reconnect jitter of tests that bound retry times


class Harness:
    """The adapter against a local server; ``proxy=True`` puts a :class:`TcpProxy` between."""

    def __init__(
        self, cfg: SimulatorConfig, *, api_key: str = KEY, subs=SUBS, rng=None,
        venues=("COINBASE", "BINANCE"), quiet=(), proxy: bool = False, max_message_bytes=0,
        server_kw=None, **kw,
    ) -> None:  # fmt: skip
        self.server = KaikoServer(cfg, api_key=KEY, venues=venues, quiet=quiet, **(server_kw or {}))
        self.proxy: TcpProxy | None = None
        self.use_proxy = proxy
        self.api_key = api_key
        self.rng = rng
        self.subs = subs
        self.max_message_bytes = max_message_bytes
        self.kw = kw
        self.sink = Sink()
        self.counters = DictCounters()

    async def __aenter__(self) -> Harness:
        await self.server.start()
        target = self.server.target
        if self.use_proxy:
            self.proxy = await TcpProxy("127.0.0.1", self.server.port).start()
            target = f"127.0.0.1:{self.proxy.port}"
        self.kw.setdefault("backoff_base", 0.05)
        self.kw.setdefault("backoff_cap", 0.2)
        stale_after = self.kw.pop("stale_after", 2.0)
        os.environ[KEY_ENV] = self.api_key
        provider = ProviderConfig(
            name="kaiko", kind="kaiko", url=target, tls=False, api_key_env=KEY_ENV,
            stale_after=stale_after, max_message_bytes=self.max_message_bytes,
            options=KaikoOptions(**self.kw),
        )  # fmt: skip
        subs = tuple(Subscription.resolve(REGISTRY, "kaiko", v, i, c) for v, i, c in self.subs)
        ctx = IngestContext(
            provider, target, subs, REGISTRY, self.sink, self.counters,
            dead_letter=self.sink.dead_letter, rng=self.rng,
        )  # fmt: skip
        self.adapter = KaikoAdapter(ctx)
        self.task = asyncio.create_task(self.adapter.run())
        return self

    async def __aexit__(self, *exc) -> None:
        os.environ.pop(KEY_ENV, None)
        await self.adapter.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if self.proxy is not None:
            await self.proxy.stop()
        await self.server.stop(0)

    @property
    def n(self) -> int:
        return self.sink.n

    def expected_records(self, exchange: str = "") -> int:
        """Records the server's messages make (of one exchange code, or all)."""
        return sum(
            s.trades + 2 * s.quotes
            for key, s in self.server.stats.items()
            if key.startswith(exchange)
        )

    def records_of(self, venue: str) -> int:
        """Market records received from ``venue``."""
        return int((self.sink.records["venue"] == REGISTRY.venue_id(venue)).sum())


def test_method_paths_match_generated_stubs():
    class Channel:
        def unary_stream(self, path, **kw):
            return path

    assert sdk_pb2_grpc.StreamTradesServiceV1Stub(Channel()).Subscribe == TRADES_METHOD
    assert sdk_pb2_grpc.StreamMarketUpdateServiceV1Stub(Channel()).Subscribe == MARKET_UPDATE_METHOD
    stub = sdk_pb2_grpc.StreamDerivativesInstrumentMetricsServiceV1Stub(Channel())
    assert stub.Subscribe == METRICS_METHOD


def test_trades_and_top_of_book_arrive_as_records():
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=6000, max_events=300, seed=7)
        async with Harness(cfg) as h:
            # every call (2 venues x 2 services) has sent its max_events, and all has arrived
            await wait_for(lambda: h.server.calls_capped == 4, 10, what="every call's events")
            await wait_for(lambda: h.n == h.expected_records(), 10)
            assert h.counters[Slot.CONNECTED] == 1
            stats = h.server.stats
            recs = h.sink.records
        assert h.counters[Slot.CONNECTED] == 0
        assert h.counters[Slot.RECORDS_IN] == len(recs)
        assert h.counters[Slot.FRAMES_IN] == len(recs)  # one message per trade / book side
        assert h.counters[Slot.PARSE_ERRORS] == 0
        assert h.server.subscribes == 4  # (cbse, spot) and (binc, perpetual-future) x 2 services
        for venue, inst, dclass in SUBS:
            sub = Subscription.resolve(REGISTRY, "kaiko", venue, inst, dclass)
            mine = recs[(recs["instrument"] == sub.instrument_id) & (recs["venue"] == sub.venue_id)]
            assert len(mine) and (mine["provider"] == sub.provider_id).all()
            assert (mine["data_class"] == sub.class_code).all()
            ex = {"COINBASE": "cbse", "BINANCE": "binc"}[venue]
            kc = "spot" if dclass == "spot" else "perpetual-future"
            st = stats[f"{ex}:{kc}:{inst.removesuffix('-PERP').lower()}"]
            trades = mine[mine["kind"] == KIND_TRADE]
            assert len(trades) == st.trades
            price, amount, side, tid, t_ex, t_pr = st.last_trade
            last = trades[-1]
            assert (last["price"], last["size"], last["side"]) == (price, amount, side)
            assert last["sequence"] == tid  # numeric exchange trade id
            assert (last["ts_exchange"], last["ts_provider"]) == (t_ex, t_pr)  # exact ns
            assert t_pr % 1000 != 0 or t_ex % 1000 != 0  # really ns, not µs rounded
            assert (np.diff(trades["sequence"]) >= 1).all()  # quote calls use ids too
            bids, asks = mine[mine["kind"] == KIND_BID], mine[mine["kind"] == KIND_ASK]
            assert len(bids) == len(asks) == st.quotes
            bid, bsz, ask, asz, q_ex, q_pr = st.last_quote
            assert (bids[-1]["price"], bids[-1]["size"], asks[-1]["price"], asks[-1]["size"]) == (
                bid, bsz, ask, asz,
            )  # fmt: skip
            assert (asks[-1]["ts_exchange"], asks[-1]["ts_provider"]) == (q_ex, q_pr)
            assert (bids["price"] < asks["price"]).all()
        now = time.time_ns()
        assert (recs["ts_receive"] >= recs["ts_provider"]).all()
        assert (recs["ts_provider"] > recs["ts_exchange"]).all()
        assert (now - recs["ts_receive"] < 30e9).all()
        health = np.concatenate(h.sink.health)
        assert (health["instrument"] == NO_INSTRUMENT).all()
        assert h.sink.statuses == [STATUS_CONNECTED] * 2 + [STATUS_DISCONNECTED] * 2  # per venue

    asyncio.run(main())


def test_paused_reading_holds_records_in_the_threads_and_loses_nothing():
    """While the worker's ring is full the loop emits nothing: the reader threads fill the
    bounded hand-off buffer and wait (HTTP/2 pushes back); on resume everything arrives."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=4000, max_events=400, seed=8)
        async with Harness(cfg, buffer_records=64) as h:
            # connected first: a status record drains the buffer even while paused (order)
            await wait_for(
                lambda: h.counters[Slot.CONNECTED] == 1 and h.n > 0, 10, what="first records"
            )
            h.adapter.pause_reading()
            n = h.n
            await wait_for(lambda: h.adapter._n >= 64, 10, what="the hand-off buffer full")
            assert h.n == n  # nothing emitted while paused
            h.adapter.resume_reading()
            assert h.n == n  # resume never emits from inside the call
            await wait_for(lambda: h.server.calls_capped == 4, 10, what="every call's events")
            await wait_for(lambda: h.n == h.expected_records(), 10, what="every record")
            assert h.counters[Slot.RECONNECTS] == 0

    asyncio.run(main())


def test_wrong_api_key_is_a_counted_subscribe_error_without_hot_loop():
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=1000)
        t0 = time.monotonic()
        async with Harness(
            cfg, api_key="wrong", backoff_base=0.2, backoff_cap=0.4, rng=random.Random(SEED)
        ) as h:
            await wait_for(
                lambda: all(c.backoff.attempts >= 3 for c in h.adapter.calls), what="3 refusals"
            )
            took = time.monotonic() - t0
            # Every call is refused and retried on its own capped, half-jittered schedule:
            # 3 refusals = 2 pauses of at least 0.1 and 0.2 s (a hot loop makes hundreds).
            assert took >= 0.1 + 0.2
            assert h.server.rejected <= 4 * 4
            assert h.counters[Slot.SUBSCRIBE_ERRORS] >= 4 * 3
            assert h.server.subscribes == 0
            assert h.counters[Slot.CONNECTED] == 0
            assert h.counters[Slot.RECONNECTS] == 0  # refusals never re-create the channel
            assert STATUS_SUBSCRIBE_ERROR in h.sink.statuses
            assert STATUS_CONNECTED not in h.sink.statuses
            assert h.n == 0

    asyncio.run(main())


def test_disconnect_reconnects_and_resubscribes():
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000)
        async with Harness(cfg) as h:
            await wait_for(lambda: h.n > 100)
            h.server.inject(Fault.DISCONNECT)
            await wait_for(lambda: h.counters[Slot.DISCONNECTS] >= 1)
            await wait_for(lambda: h.server.subscribes >= 8 and h.counters[Slot.CONNECTED] == 1)
            n = h.n
            await wait_for(lambda: h.n > n + 100)
            assert h.counters[Slot.RECONNECTS] >= 1
            assert h.sink.statuses[:4] == [STATUS_CONNECTED] * 2 + [STATUS_DISCONNECTED] * 2
            assert h.sink.statuses[4:6] == [STATUS_CONNECTED] * 2
            assert h.server.restarts == 1

    asyncio.run(main())


def test_a_quiet_call_beside_busy_ones_reconnects_nothing():
    """Kaiko sends no heartbeat: a venue that does not trade is a quiet call, not a dead one.
    Long past ``stale_after`` the busy calls were never re-subscribed and lost nothing."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=1000, max_events=1500, seed=9)
        subs = [*SUBS, ("KRAKEN", "BTC-USD", "spot")]
        venues = ("COINBASE", "BINANCE", "KRAKEN")
        async with Harness(cfg, subs=subs, venues=venues, quiet=("KRAKEN",), stale_after=0.3) as h:
            t0 = time.monotonic()
            # the busy calls (2 venues x 2 services) send 1500 events each: seconds, at 1000/s
            await wait_for(lambda: h.server.calls_capped == 4, 30, what="the busy calls' events")
            await wait_for(lambda: h.n == h.expected_records(), 10, what="every record")
            assert time.monotonic() - t0 > 3 * 0.3
            assert h.server.subscribes == 6  # each call once, the 2 quiet ones included
            assert h.server.stats["krkn:spot:btc-usd"].trades == 0
            assert h.counters[Slot.RECONNECTS] == h.counters[Slot.STREAM_RESTARTS] == 0
            assert h.counters[Slot.DISCONNECTS] == 0
            assert h.counters[Slot.CONNECTED] == 1
            assert h.sink.statuses == [STATUS_CONNECTED] * 3  # one per venue, once
            quiet = [c for c in h.adapter.calls if "-krkn-" in c.name]
            assert len(quiet) == 2 and all(c.subscribed and c.end is None for c in quiet)

    asyncio.run(main())


def test_a_call_the_server_ends_restarts_alone():
    """The server ends Binance's calls (closed, UNAVAILABLE, INTERNAL): only they restart, each
    on its own backoff; Coinbase's calls stream on, never re-subscribed, nothing lost."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000, seed=10)
        async with Harness(cfg) as h:
            await wait_for(lambda: h.counters[Slot.CONNECTED] == 1 and h.n > 100)
            by = h.server.subscribes_by
            assert by == {"cbse": 2, "binc": 2}
            for code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                restarts, binc = h.counters[Slot.STREAM_RESTARTS], by["binc"]
                assert h.server.end_calls("BINANCE", code) == 2
                want = (restarts + 2, binc + 2)
                await wait_for(
                    lambda: (h.counters[Slot.STREAM_RESTARTS], by["binc"]) == want,  # noqa: B023
                    what=f"binance's calls restarted after {code.name}",
                )
                n = h.records_of("BINANCE")
                await wait_for(lambda: h.records_of("BINANCE") > n + 50)  # noqa: B023
            h.server.inject(Fault.STALL)  # nothing more is sent: what was sent must all arrive
            await wait_for(
                lambda: h.records_of("COINBASE") == h.expected_records("cbse"),
                what="every coinbase record",
            )
            assert h.server.calls_ended == 6
            assert by["cbse"] == 2  # never re-subscribed
            assert h.adapter.call_restarts == 6
            assert h.counters[Slot.RECONNECTS] == h.counters[Slot.DISCONNECTS] == 0
            assert h.counters[Slot.CONNECTED] == 1
            assert h.sink.statuses == [STATUS_CONNECTED] * 2

    asyncio.run(main())


def test_keepalive_finds_a_dead_channel_and_a_stall_is_only_quiet():
    """Through a TCP proxy: a stalled server (transport alive, pings answered) is quiet calls,
    never a reconnect; a blackholed path is found by keepalive (time + timeout) and the whole
    channel reconnects once the path is back."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=1000, seed=11)
        kt, kto = 0.3, 0.3
        async with Harness(
            cfg, proxy=True, keepalive_time=kt, keepalive_timeout=kto, stale_after=kt,
            subscribe_timeout=1.0,
        ) as h:  # fmt: skip
            for fault in (Fault.STALL, Fault.HEARTBEATS_ONLY):
                await wait_for(lambda: h.counters[Slot.CONNECTED] == 1 and h.n > 100)
                h.server.inject(fault)
                # quiet for many keepalive periods (pings answered in between)
                await wait_for(
                    lambda: all(time.monotonic() - c.last_data > 5 * kt for c in h.adapter.calls),
                    10,
                    what="every call quiet",
                )
                h.server.clear()
                n = h.n
                await wait_for(lambda: h.n > n + 100)  # noqa: B023
            assert h.server.subscribes == 4
            assert h.counters[Slot.RECONNECTS] == h.counters[Slot.STREAM_RESTARTS] == 0
            assert h.counters[Slot.DISCONNECTS] == 0
            assert h.proxy is not None and h.proxy.connections == 1
            t0 = time.monotonic()
            h.proxy.set_mode("blackhole")
            await wait_for(lambda: h.counters[Slot.DISCONNECTS] == 1, 10, what="keepalive")
            # a ping after kt without a read, unanswered for kto (+ scheduling on a loaded box)
            assert time.monotonic() - t0 < kt + kto + 1.0
            h.proxy.set_mode("pass")
            await wait_for(lambda: h.counters[Slot.CONNECTED] == 1, 10, what="reconnected")
            n = h.n
            await wait_for(lambda: h.n > n + 100)
            assert h.counters[Slot.RECONNECTS] >= 1
            assert h.counters[Slot.STREAM_RESTARTS] == 0
            assert (
                h.sink.statuses[:6]
                == [STATUS_CONNECTED] * 2 + [STATUS_DISCONNECTED] * 2 + [STATUS_CONNECTED] * 2
            )

    asyncio.run(main())


def _trades_since(h: Harness, start: int) -> np.ndarray:
    r = h.sink.records[start:]
    return r[r["kind"] == KIND_TRADE]


def test_price_offset_exchange_delay_and_sequence_gap_are_visible():
    async def main():
        cfg = SimulatorConfig(prices={"BTC-USD": 64000.0}, rate=2000, quote_ratio=0.0)
        subs = [("COINBASE", "BTC-USD", "spot")]
        async with Harness(cfg, subs=subs, quotes=False) as h:
            await wait_for(lambda: h.n > 200)
            base = _trades_since(h, 0)
            # exchange -> provider as the server stamped it (2 ms - 1 ms): exact, whatever the load
            assert ((base["ts_provider"] - base["ts_exchange"]) == 1_000_000).all()
            mark = h.n
            h.server.inject(Fault.PRICE_OFFSET, 500)  # +5 %
            h.server.inject(Fault.EXCHANGE_DELAY, 400)  # 400 ms

            def delayed() -> np.ndarray:
                """The trades from the first one the delay reached (earlier ones were in
                flight when the faults were injected)."""
                r = _trades_since(h, mark)
                hit = r["ts_provider"] - r["ts_exchange"] >= 400e6
                return r[int(np.argmax(hit)) :] if hit.any() else r[:0]

            await wait_for(lambda: len(delayed()) > 200)
            after = delayed()
            # once reached, every trade is delayed by exactly the fault and offset in price
            assert ((after["ts_provider"] - after["ts_exchange"]) == 401_000_000).all()
            assert abs(after["price"].mean() / base["price"].mean() - 1.05) < 0.01
            assert (after["ts_receive"] >= after["ts_provider"]).all()
            h.server.clear()
            h.server.inject(Fault.SEQUENCE_GAP, 1000)

            def steps() -> np.ndarray:
                seq = h.sink.records["sequence"][h.sink.records["kind"] == KIND_TRADE]
                return np.diff(seq)

            # trades generated before the fault may still be in flight: wait for the skip itself
            await wait_for(lambda: (steps() != 1).any(), what="the sequence gap")
            await wait_for(lambda: len(steps()) > np.flatnonzero(steps() != 1)[0] + 50)
            assert sorted(set(steps().tolist())) == [1, 1001]  # one skip of 1000, nothing else

    asyncio.run(main())


def test_malformed_messages_are_counted_and_never_stop_the_stream():
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000)
        async with Harness(cfg) as h:
            await wait_for(lambda: h.n > 100)
            h.server.inject(Fault.MALFORMED, 12)  # 12 per open call: 48
            await wait_for(lambda: h.counters[Slot.PARSE_ERRORS] == 48)
            n = h.n
            await wait_for(lambda: h.n > n + 100)
            assert h.server.malformed_sent == 48
            assert h.counters[Slot.RECONNECTS] == 0
            assert h.counters[Slot.FRAMES_IN] >= h.counters[Slot.RECORDS_IN] + 48
            assert len(h.sink.dead) == 48
            errors = " ".join(e for e, _ in h.sink.dead)
            for reason in ("DecodeError", "bad price", "bad amount", "unnamed instrument"):
                assert reason in errors
            assert "unknown update type" in errors

    asyncio.run(main())


def test_a_message_over_max_message_bytes_restarts_only_its_call():
    """A 1 MiB message against a 64 KiB limit: grpc refuses it unread; each call it hit is
    counted once as oversized, dead-lettered with the message's size, and restarted alone (not
    as a rate limit, no reconnect of the channel); data flows again."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000)
        async with Harness(cfg, max_message_bytes=64 << 10) as h:
            await wait_for(lambda: h.n > 100)
            calls = len(h.adapter.calls)
            h.server.inject(Fault.OVERSIZED_FRAME, 1 << 20)
            await wait_for(lambda: h.counters[Slot.OVERSIZED] == calls)
            n = h.n
            await wait_for(lambda: h.n > n + 100)
            assert h.counters[Slot.PARSE_ERRORS] == calls
            assert h.counters[Slot.RECONNECTS] == 0 and h.counters[Slot.SUBSCRIBE_ERRORS] == 0
            assert h.adapter.rate_limits == 0
            error = f"message of {1 << 20} bytes over max_message_bytes ({64 << 10})"
            assert [e for e, _ in h.sink.dead] == [error] * calls
            assert h.sink.dead_sizes == [1 << 20] * calls
            assert not any(frame for _, frame in h.sink.dead)

    asyncio.run(main())


def test_rate_limit_backs_off_longer_without_hot_loop():
    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=1000)
        async with Harness(
            cfg,
            backoff_base=0.02,
            backoff_cap=0.05,
            rate_limit_pause=0.6,
        ) as h:
            await wait_for(lambda: h.n > 50)
            rejected, injected = h.server.rejected, time.monotonic()
            h.server.inject(Fault.REJECT_SUBSCRIBE)
            h.server.inject(Fault.DISCONNECT)  # the new channel's calls are refused
            await wait_for(lambda: h.adapter.rate_limits >= 4 * 3, what="3 refusals per call")
            # 3 refusals of each call, 2 pauses of at least rate_limit_pause (0.6 s) between;
            # the normal schedule (<= 50 ms) would be ~10 times quicker
            assert time.monotonic() - injected >= 2 * 0.6
            assert h.server.rejected - rejected <= 4 * 4
            assert h.counters[Slot.SUBSCRIBE_ERRORS] == h.adapter.subscribe_errors >= 4 * 3
            assert h.counters[Slot.RECONNECTS] == 1  # the disconnect; refusals are per call
            h.server.clear()
            subs = h.server.subscribes
            await wait_for(lambda: h.server.subscribes >= subs + 4, 3)
            n = h.n
            await wait_for(lambda: h.n > n + 50)
            assert h.counters[Slot.CONNECTED] == 1
            assert STATUS_SUBSCRIBE_ERROR in h.sink.statuses

    asyncio.run(main())


def test_dated_future_code_and_contract_sizes_over_grpc():
    """A dated future is subscribed by Kaiko's code (``btcusd250328``); the sizes of an inverse
    future (contracts of 100 USD) and of a contract-sized perpetual (0.001 BTC) arrive in base
    currency."""

    async def main():
        prices = {"BTC-USD-250328": 64100.0, "BTC-USDT-PERP": 64010.0}
        cfg = SimulatorConfig(prices=prices, rate=2000, quote_ratio=0.0, max_events=200, seed=12)
        subs = [("BINANCE", "BTC-USD-250328", "future"), ("BINANCE", "BTC-USDT-PERP", "perpetual")]
        units = {
            "BINANCE:future:BTC-USD-250328": "100 quote",
            "BINANCE:perpetual:BTC-USDT-PERP": 0.001,
        }
        async with Harness(
            cfg, subs=subs, venues=("BINANCE",), quotes=False, amount_units=units
        ) as h:
            assert sorted(c.request.instrument_criteria.code for c in h.adapter.calls) == [
                "btc-usdt", "btcusd250328",
            ]  # fmt: skip
            await wait_for(lambda: h.server.calls_capped == 2, 10, what="both calls' events")
            await wait_for(lambda: h.n == h.expected_records(), 10, what="every record")
            recs = h.sink.records
        for inst, key, size_of in (
            ("BTC-USD-250328", "binc:future:btcusd250328", lambda a, p: a * 100 / p),
            ("BTC-USDT-PERP", "binc:perpetual-future:btc-usdt", lambda a, p: a * 0.001),
        ):
            st = h.server.stats[key]
            mine = recs[recs["instrument"] == REGISTRY.instrument_id(inst)]
            assert len(mine) == st.trades > 0
            price, amount = st.last_trade[:2]
            assert mine[-1]["price"] == price
            assert mine[-1]["size"] == pytest.approx(size_of(amount, price), rel=1e-12)
            assert mine[-1]["size"] != amount

    asyncio.run(main())


def test_trade_id_gaps_of_gap_venues_and_no_false_gap_after_a_call_restart():
    """With ``gap_venues`` = BINANCE, a jump of Binance's trade ids is one gap record (what a
    restarted call missed would show so); the restart itself makes no false gap and drops
    nothing; Coinbase (not listed) is not tracked."""

    async def main():
        cfg = SimulatorConfig(prices=PRICES, rate=2000, quote_ratio=0.0, seed=13)
        async with Harness(cfg, quotes=False, gap_venues=("BINANCE",)) as h:
            await wait_for(lambda: h.records_of("BINANCE") > 50, what="binance trades")
            assert h.server.end_calls("BINANCE") == 1
            await wait_for(lambda: h.counters[Slot.STREAM_RESTARTS] == 1, what="the restart")
            n = h.records_of("BINANCE")
            await wait_for(lambda: h.records_of("BINANCE") > n + 50)
            assert h.counters[Slot.GAPS] == h.counters[Slot.REPEATS_DROPPED] == 0
            h.server.inject(Fault.SEQUENCE_GAP, 1000)  # every instrument's ids skip 1000
            await wait_for(lambda: h.counters[Slot.GAPS] == 1, what="the gap record")
            n = h.records_of("BINANCE")
            await wait_for(lambda: h.records_of("BINANCE") > n + 50)
            gaps = h.sink.kind(KIND_GAP)
            assert len(gaps) == 1 and h.counters[Slot.MISSED] == 1000
            assert gaps[0]["size"] == 1000
            assert gaps[0]["instrument"] == REGISTRY.instrument_id("BTC-USDT-PERP")
            assert gaps[0]["venue"] == REGISTRY.venue_id("BINANCE")

            def coinbase_steps() -> np.ndarray:
                r = h.sink.records
                mine = r[(r["venue"] == REGISTRY.venue_id("COINBASE"))
                         & (r["instrument"] == REGISTRY.instrument_id("BTC-USD"))]  # fmt: skip
                return np.diff(mine["sequence"])

            # Coinbase's jump is in its data, and untracked: no gap record
            await wait_for(lambda: 1001 in coinbase_steps(), what="coinbase's jump")
            assert h.counters[Slot.GAPS] == 1
            assert h.counters[Slot.REPEATS_DROPPED] == 0

    asyncio.run(main())


# --- derivatives instrument metrics ----------------------------------------------------------

DERIV_PRICES = {"BTC-USD": 64000.0, "BTC-USDT-PERP": 64010.0, "BTC-USD-250328": 64100.0}
DERIV_SUBS = [
    ("COINBASE", "BTC-USD", "spot"),
    ("BINANCE", "BTC-USDT-PERP", "perpetual"),
    ("BINANCE", "BTC-USD-250328", "future"),
]
# the perpetual counts contracts of 0.001 BTC, the future is inverse (contracts of 100 USD)
DERIV_UNITS = {
    "BINANCE:perpetual:BTC-USDT-PERP": 0.001,
    "BINANCE:future:BTC-USD-250328": "100 quote",
}
DERIV_KINDS = (KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_OPEN_INTEREST)


def _derivatives(h: Harness, inst: str) -> list[tuple]:
    r = h.sink.all
    mine = r[np.isin(r["kind"], DERIV_KINDS) & (r["instrument"] == REGISTRY.instrument_id(inst))]
    return list(zip(*(mine[f].tolist() for f in ("kind", "price", "size", "ts_provider")),
                    strict=True))  # fmt: skip


def test_derivatives_metrics_arrive_as_records_with_exact_values():
    """With ``derivatives``, each perpetual and future gets a metrics call of its own (the spot
    instrument none): mark, index, funding (rate and predicted rate) and open interest in base
    units arrive exactly as sent; other commodities (last price, 24h volume, time to expiry)
    give no record; trades and quotes flow as before."""

    async def main():
        cfg = SimulatorConfig(prices=DERIV_PRICES, rate=3000, max_events=300, seed=15)
        server_kw = {"metrics_interval": 0.02, "metrics_max": 6}
        async with Harness(cfg, subs=DERIV_SUBS, derivatives=True, amount_units=DERIV_UNITS,
                           server_kw=server_kw) as h:  # fmt: skip
            metrics = [c for c in h.adapter.calls if c.method == METRICS_METHOD]
            crits = sorted((c.request.instrument_criteria.exchange,
                            c.request.instrument_criteria.instrument_class,
                            c.request.instrument_criteria.code) for c in metrics)  # fmt: skip
            assert crits == [("binc", "future", "btcusd250328"),
                             ("binc", "perpetual-future", "btc-usdt")]  # fmt: skip
            assert all(not c.request.commodities for c in metrics)  # none named: Kaiko sends all
            calls = len(h.adapter.calls)
            assert calls == 3 * 2 + 2  # (exchange, class) x (trades, top of book) + metrics
            await wait_for(lambda: h.server.calls_capped == calls, 15, what="every call's events")
            await wait_for(lambda: h.n == h.expected_records(), 10, what="every market record")
            want = {
                "BTC-USDT-PERP": expected_metrics(
                    h.server.stats["binc:perpetual-future:btc-usdt"].metrics_log,
                    lambda a, _mark: a * 0.001,
                ),
                "BTC-USD-250328": expected_metrics(
                    h.server.stats["binc:future:btcusd250328"].metrics_log,
                    lambda a, mark: a * 100 / mark,
                ),
            }
            n_want = sum(map(len, want.values()))
            await wait_for(lambda: sum(len(_derivatives(h, i)) for i in want) == n_want, 10,
                           what="every derivatives record")  # fmt: skip
            for inst, rows in want.items():
                got = _derivatives(h, inst)
                assert len(got) == len(rows)
                for g, w in zip(got, rows, strict=True):
                    assert g[0] == w[0] and g[1] == w[1] and g[3] == w[3]
                    assert g[2] == pytest.approx(w[2], rel=1e-15, nan_ok=True)
            assert _derivatives(h, "BTC-USD") == []
            perp = want["BTC-USDT-PERP"]
            assert {r[0] for r in perp} == set(DERIV_KINDS)
            # 6 updates, each a funding rate and a predicted rate: a funding record each, the
            # first without a predicted rate (Kaiko sends the rate first)
            funding = [r for r in perp if r[0] == KIND_FUNDING]
            assert len(funding) == 2 * 6 and math.isnan(funding[0][2])
            assert perp[-1][1:3] == (0.0001, -0.0000756735759807)  # rate, predicted rate
            assert [r[2] for r in perp if r[0] == KIND_OPEN_INTEREST] == [
                pytest.approx((1000 + u) * 0.001, rel=1e-15) for u in range(6)
            ]
            fut = want["BTC-USD-250328"]
            assert KIND_FUNDING not in {r[0] for r in fut}  # a dated future has no funding
            recs = h.sink.all
            deriv = recs[np.isin(recs["kind"], DERIV_KINDS)]
            assert (deriv["ts_exchange"] == 0).all() and (deriv["sequence"] == -1).all()
            assert (deriv["venue"] == REGISTRY.venue_id("BINANCE")).all()
            future = deriv[deriv["instrument"] == REGISTRY.instrument_id("BTC-USD-250328")]
            assert (future["data_class"] == CLASS_CODES["future"]).all()
            assert h.counters[Slot.PARSE_ERRORS] == 0
            assert h.counters[Slot.RECORDS_IN] == h.n + n_want
            assert h.counters[Slot.CONNECTED] == 1

    asyncio.run(main())


def test_a_metrics_call_restarts_alone_and_bad_metrics_are_dead_letters():
    """Derivatives metrics only (no trades, no quotes): a metrics call the server ends restarts
    alone, on its own backoff, the other streams on; malformed metrics messages are counted and
    dead-lettered and the stream goes on; nothing ever re-creates the channel."""

    async def main():
        cfg = SimulatorConfig(prices=DERIV_PRICES, rate=1000, seed=16)
        subs = [*DERIV_SUBS[1:], ("COINBASE", "BTC-USDT-PERP", "perpetual")]
        server_kw = {"metrics_interval": 0.01}
        # the smallest hand-off buffer still holds a metrics message's two records
        async with Harness(cfg, subs=subs, trades=False, quotes=False, derivatives=True,
                           server_kw=server_kw, buffer_records=1) as h:  # fmt: skip
            assert len(h.adapter.calls) == 3 and h.adapter._cap == 2
            assert all(c.method == METRICS_METHOD for c in h.adapter.calls)

            def marks(venue: str) -> int:
                r = h.sink.kind(KIND_MARK)
                return int((r["venue"] == REGISTRY.venue_id(venue)).sum())

            await wait_for(lambda: h.counters[Slot.CONNECTED] == 1 and marks("COINBASE") > 5)
            assert h.server.subscribes_by == {"binc": 2, "cbse": 1}
            assert h.server.end_calls("COINBASE", grpc.StatusCode.INTERNAL) == 1
            await wait_for(lambda: h.server.subscribes_by["cbse"] == 2, what="the restart")
            n = marks("COINBASE")
            await wait_for(lambda: marks("COINBASE") > n + 5)
            assert h.counters[Slot.STREAM_RESTARTS] == 1
            assert h.server.subscribes_by["binc"] == 2  # never re-subscribed
            h.server.inject(Fault.MALFORMED, 5)  # 5 per open call: 15
            await wait_for(lambda: h.counters[Slot.PARSE_ERRORS] == 15)
            n = marks("BINANCE")
            await wait_for(lambda: marks("BINANCE") > n + 5)
            assert len(h.sink.dead) == 15
            errors = " ".join(e for e, _ in h.sink.dead)
            for reason in ("DecodeError", "not a decimal number", "bad mark_price",
                           "exchange 'zzzz'"):  # fmt: skip
                assert reason in errors
            assert h.counters[Slot.RECONNECTS] == h.counters[Slot.DISCONNECTS] == 0
            assert h.sink.statuses == [STATUS_CONNECTED] * 2  # one per venue, once

    asyncio.run(main())
