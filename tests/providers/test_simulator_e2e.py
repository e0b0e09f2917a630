"""Simulator server + SimulatorAdapter over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import numpy as np

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import SimulatorOptions
from fairfeed.core.records import (
    CLASS_CODES,
    KIND_ASK,
    KIND_BID,
    KIND_TRADE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.core.registry import Registry
from fairfeed.local.simulator import SimulatorServer
from fairfeed.providers.base import IngestContext
from fairfeed.providers.simulator.adapter import SimulatorAdapter
from tests.providers.harness import Sink, schedule
from tests.waiting import wait_for_async as wait_for

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0, "SOL-USD": 150.0}
SEED = 20260801  # the reconnect jitter of tests that bound retry times
REGISTRY = Registry.build(
    [("XYZ-USD", CLASS_CODES["future"])] + [(s, CLASS_CODES["future"]) for s in PRICES],
    [("other", "v0"), ("sim", "simx")],
)


def make_adapter(
    url: str,
    cfg: SimulatorConfig,
    instruments=tuple(PRICES),
    rng: random.Random | None = None,
    **kw,
):
    kw.setdefault("backoff_base", 0.02)
    kw.setdefault("backoff_cap", 0.1)
    provider = ProviderConfig(
        name="sim", kind="simulator", venue="simx", serve=cfg, data_class="future",
        options=SimulatorOptions(**kw),
    )  # fmt: skip
    sink, counters = Sink(), DictCounters()
    ctx = IngestContext.for_instruments(provider, url, tuple(instruments), REGISTRY, sink, counters)
    ctx.rng = rng
    return SimulatorAdapter(ctx), sink, counters


def expected_records(log: list[tuple]) -> list[tuple]:
    """(instrument, kind, side, price, size, seq, T, P) per record implied by the server log."""
    out = []
    for ev in log:
        inst = REGISTRY.instrument_id(ev[1])
        if ev[0] == "trade":
            _, _, p, q, side, seq, t, pt = ev
            s = SIDE_BUY if side == "buy" else SIDE_SELL
            out.append((inst, KIND_TRADE, s, p, q, seq, t, pt))
        else:
            _, _, bp, bq, ap, aq, seq, t, pt = ev
            out.append((inst, KIND_BID, SIDE_UNKNOWN, bp, bq, seq, t, pt))
            out.append((inst, KIND_ASK, SIDE_UNKNOWN, ap, aq, seq, t, pt))
    return out


def as_tuples(r: np.ndarray) -> list[tuple]:
    cols = ("instrument", "kind", "side", "price", "size", "sequence", "ts_exchange", "ts_provider")
    return list(zip(*(r[c].tolist() for c in cols), strict=True))


def test_every_event_becomes_exactly_its_records():
    cfg = SimulatorConfig(prices=PRICES, rate=0, batch=7, max_events=3000, quote_ratio=0.4)

    async def main():
        async with SimulatorServer("sim", cfg, keep_log=True) as server:
            adapter, sink, counters = make_adapter(server.url, cfg)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: server.stats.events == 3000, what="all events sent")
            expected = server.stats.records
            await wait_for(lambda: sink.n >= expected, what="all records emitted")
            await asyncio.sleep(0.05)  # nothing more may arrive
            assert counters[Slot.CONNECTED] == 1
            await adapter.close()
            await task
            return server.stats, sink, counters

    t0 = time.time_ns()
    stats, sink, counters = asyncio.run(main())
    r = sink.records
    assert len(r) == stats.records == counters[Slot.RECORDS_IN]
    assert as_tuples(r) == expected_records(stats.log)
    assert {s: (v.trades, v.quotes) for s, v in stats.symbols.items()} == {
        s: (
            sum(1 for e in stats.log if e[1] == s and e[0] == "trade"),
            sum(1 for e in stats.log if e[1] == s and e[0] == "quote"),
        )
        for s in PRICES
    }
    for sym in PRICES:  # per symbol, seq rises by one per event
        seqs = [e[-3] for e in stats.log if e[1] == sym]
        assert seqs == list(range(1, len(seqs) + 1))
    assert (r["provider"] == REGISTRY.provider_id("sim")).all()
    assert (r["venue"] == REGISTRY.venue_id("simx")).all()
    assert (r["data_class"] == CLASS_CODES["future"]).all()
    assert (r["ts_receive"] >= r["ts_provider"]).all() and (r["ts_receive"] >= t0).all()
    assert (r["ts_receive"] <= time.time_ns()).all()
    # frames of one read are emitted together: fewer emits than batch frames
    assert counters[Slot.FRAMES_IN] >= stats.frames + 1  # + the subscribed answer
    assert len(sink.batches) < stats.frames
    assert counters[Slot.PARSE_ERRORS] == 0 and counters[Slot.RECONNECTS] == 0
    assert counters[Slot.CONNECTED] == 0
    # server stats: last trade / quote per symbol are those of the log
    btc = stats.symbols["BTC-USD"]
    assert btc.last_trade == [e for e in stats.log if e[:2] == ("trade", "BTC-USD")][-1][2:]
    assert btc.last_quote == [e for e in stats.log if e[:2] == ("quote", "BTC-USD")][-1][2:]


def test_batches_at_a_rate_and_subset_subscription():
    cfg = SimulatorConfig(prices=PRICES, rate=3000, batch=5, max_events=60, quote_ratio=0.5)

    async def main():
        async with SimulatorServer("sim", cfg, keep_log=True) as server:
            adapter, sink, counters = make_adapter(server.url, cfg, ("ETH-USD", "SOL-USD"))
            task = asyncio.create_task(adapter.run())
            t0 = time.monotonic()
            await wait_for(lambda: server.stats.events == 60, what="60 events")
            elapsed = time.monotonic() - t0
            await wait_for(lambda: sink.n == server.stats.records)
            await adapter.close()
            await task
            return server.stats, sink, counters, elapsed

    stats, sink, _, elapsed = asyncio.run(main())
    # 2 of 3 instruments subscribed: 2000 events/s, 60 events take >= ~30 ms
    assert 0.025 <= elapsed < 2
    assert stats.frames == 12  # 60 events in frames of 5
    assert set(stats.symbols) <= {"ETH-USD", "SOL-USD"}
    assert as_tuples(sink.records) == expected_records(stats.log)
    # a paced stream arrives in small reads: roughly one emit per frame, never one per event
    assert len(sink.batches) <= stats.frames


def test_reconnects_and_resubscribes_after_drop_and_restart():
    cfg = SimulatorConfig(prices=PRICES, rate=600, batch=2, heartbeat_interval=0.05)

    async def main():
        server = SimulatorServer("sim", cfg)
        await server.start()
        port = server.port
        adapter, sink, counters = make_adapter(server.url, cfg)
        task = asyncio.create_task(adapter.run())
        await wait_for(lambda: sink.n > 20, what="first records")
        assert server.drop_connections() == 1
        n_drop = sink.n
        await wait_for(lambda: server.stats.connections_total == 2, what="reconnect")
        await wait_for(lambda: sink.n > n_drop + 20, what="records after reconnect")
        assert server.stats.subscribe_requests == 2
        assert counters[Slot.RECONNECTS] == 1 and counters[Slot.CONNECTED] == 1
        # restart on the same port: graceful close, nothing in flight is lost
        await server.stop()
        first = server.stats
        await wait_for(lambda: counters[Slot.CONNECTED] == 0, what="disconnected")
        server2 = SimulatorServer("sim", cfg, port=port)
        await server2.start()
        await wait_for(lambda: sink.n > first.records + 20, what="records from new server")
        assert counters[Slot.CONNECTED] == 1 and counters[Slot.RECONNECTS] >= 2
        assert server2.stats.subscribe_requests == 1
        await adapter.close()
        await task
        await server2.stop()
        return first, server2.stats, sink, adapter

    first, second, sink, adapter = asyncio.run(main())
    assert sum(c.opened for c in adapter.connections) == 3
    r = sink.records
    assert len(r) == r.size
    # the dropped connection may lose what was in flight, never more than it sent
    assert len(r) <= first.records + second.records
    # sequences rise per instrument within each server's lifetime (gaps only at the drop)
    for inst in {REGISTRY.instrument_id(s) for s in PRICES}:
        seq = r["sequence"][(r["instrument"] == inst) & (r["kind"] != KIND_ASK)]
        restarts = np.flatnonzero(np.diff(seq) <= 0)
        assert len(restarts) <= 1  # the new server starts again at 1
        for part in np.split(seq, restarts + 1):
            assert (np.diff(part) > 0).all()


def test_malformed_frames_are_counted_and_logged_once(caplog):
    cfg = SimulatorConfig(prices=PRICES, rate=0, batch=3, max_events=9)
    bad = [
        b"not json",
        b"\xff\xfe garbage",
        b'{"type":"batch","events":[{"e":"trade","s":"BTC-USD"}]}',
        b'{"type":"batch","events":[{"e":"trade","s":"DOGE-USD","p":1.0,"q":1.0,'
        b'"side":"buy","seq":1,"T":1,"P":1}]}',
    ]

    async def main():
        async with SimulatorServer("sim", cfg) as server:
            adapter, sink, counters = make_adapter(server.url, cfg)
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: sink.n == server.stats.records and server.stats.events == 9)
            n_before = sink.n
            for raw in bad:
                assert server.inject_frame(raw) == 1
            server.inject_frame('{"type":"batch","events":[{"e":"quote","s":"SOL-USD","bp":149.9,'
                                '"bq":1,"ap":150.1,"aq":2,"seq":99,"T":5,"P":6}]}')  # fmt: skip
            await wait_for(lambda: sink.n == n_before + 2, what="the valid injected quote")
            errors = counters[Slot.PARSE_ERRORS]
            connected = counters[Slot.CONNECTED]
            await adapter.close()
            await task
            return sink, errors, connected

    with caplog.at_level(logging.WARNING, logger="fairfeed.providers.wsbase"):
        sink, errors, connected = asyncio.run(main())
    assert errors == len(bad)
    assert connected == 1  # bad frames do not cost the connection
    assert sink.records[-1]["price"] == 150.1 and sink.records[-1]["sequence"] == 99
    lines = [r for r in caplog.records if "malformed message" in r.getMessage()]
    assert len(lines) == 1  # rate-limited: one line per second
    assert "not json" in lines[0].getMessage()


def test_unknown_symbol_is_refused_and_retried_with_backoff():
    cfg = SimulatorConfig(prices=PRICES, rate=0, max_events=10)

    async def main():
        async with SimulatorServer("sim", cfg) as server:
            adapter, sink, counters = make_adapter(
                server.url, cfg, ("BTC-USD", "XYZ-USD"), backoff_base=0.05, backoff_cap=0.1,
                rng=random.Random(SEED),
            )  # fmt: skip
            t0 = time.monotonic()
            task = asyncio.create_task(adapter.run())
            await wait_for(lambda: adapter.subscribe_errors >= 4, what="4 refusals")
            took = time.monotonic() - t0
            await adapter.close()
            await task
            return server.stats, sink, counters, adapter, took

    stats, sink, counters, adapter, took = asyncio.run(main())
    assert sink.n == 0 and stats.events == 0
    assert stats.request_errors == adapter.subscribe_errors == stats.connections_total
    # each refusal costs the seeded backoff delay of 25..100 ms: no hot loop
    assert stats.connections_total == 4 and took >= sum(schedule(0.05, 0.1, SEED, 3))
    assert counters[Slot.RECONNECTS] == stats.connections_total - 1


def test_adapter_retries_until_the_server_appears():
    cfg = SimulatorConfig(prices=PRICES, rate=0, batch=4, max_events=40)

    async def main():
        probe = SimulatorServer("sim", cfg)
        await probe.start()
        port = probe.port
        await probe.stop()  # a port nobody listens on now
        adapter, sink, counters = make_adapter(f"ws://127.0.0.1:{port}", cfg)
        task = asyncio.create_task(adapter.run())
        await wait_for(lambda: counters[Slot.RECONNECTS] >= 2, what="failed attempts")
        async with SimulatorServer("sim", cfg, port=port) as server:
            await wait_for(lambda: sink.n > 0 and sink.n == server.stats.records)
            await adapter.close()
            await task
            return counters

    counters = asyncio.run(main())
    assert counters[Slot.CONNECTED] == 0 and counters[Slot.RECORDS_IN] > 0
