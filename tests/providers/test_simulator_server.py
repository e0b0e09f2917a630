"""SimulatorServer protocol behaviour, seen from a plain websockets client."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing as mp
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault
from fairfeed.local.simulator import SimulatorServer, serve_forever
from tests.waiting import wait_for_async

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0}


async def recv_json(ws, timeout: float = 2.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def sub(op: str, rid: int, *symbols: str) -> str:
    return json.dumps({"op": op, "id": rid, "symbols": list(symbols)})


def test_requests_answers_and_max_events_per_connection():
    cfg = SimulatorConfig(prices=PRICES, rate=0, batch=4, max_events=10, heartbeat_interval=0.05)

    async def main():
        async with SimulatorServer("sim", cfg) as server, connect(server.url) as ws:
            await ws.send(sub("subscribe", 1, "BTC-USD", "XYZ"))
            assert await recv_json(ws) == {
                "type": "error",
                "id": 1,
                "message": "unknown symbol XYZ",
            }
            await ws.send("{oops")
            err = await recv_json(ws)
            assert err["type"] == "error" and err["id"] is None
            await ws.send(sub("subscribe", 2, "ETH-USD"))
            assert await recv_json(ws) == {"type": "subscribed", "id": 2, "symbols": ["ETH-USD"]}
            events, heartbeats = [], 0
            while heartbeats < 2:  # after max_events: heartbeats only
                msg = await recv_json(ws)
                if msg["type"] == "batch":
                    assert heartbeats == 0
                    assert 1 <= len(msg["events"]) <= 4
                    events += msg["events"]
                else:
                    assert msg["type"] == "heartbeat" and msg["ts"] > 0
                    heartbeats += 1
            await ws.send(sub("unsubscribe", 3, "ETH-USD"))
            while (msg := await recv_json(ws))["type"] == "heartbeat":
                pass
            assert msg == {"type": "unsubscribed", "id": 3, "symbols": ["ETH-USD"]}
            # a second connection gets its own max_events
            async with connect(server.url) as ws2:
                await ws2.send(sub("subscribe", 1, "BTC-USD"))
                assert (await recv_json(ws2))["type"] == "subscribed"
                more = 0
                while more < 10:
                    msg = await recv_json(ws2)
                    more += len(msg.get("events", ()))
            await asyncio.sleep(0.05)
            return events, server.stats

    events, stats = asyncio.run(main())
    assert len(events) == 10
    assert {e["s"] for e in events} == {"ETH-USD"}
    assert [e["seq"] for e in events] == list(range(1, 11))
    for e in events:
        if e["e"] == "trade":
            assert e["side"] in ("buy", "sell") and e["p"] > 0 and e["q"] > 0
        else:
            assert e["e"] == "quote" and 0 < e["bp"] < e["ap"] and e["bq"] > 0 and e["aq"] > 0
        assert 0 < e["T"] < e["P"] <= time.time_ns()
    assert stats.events == 20 and stats.frames == 6
    assert stats.symbols["ETH-USD"].events == 10 and stats.symbols["BTC-USD"].events == 10
    assert stats.request_errors == 2 and stats.connections_total == 2


def _log(seed: int, offset_bps: float = 0.0) -> list[tuple]:
    cfg = SimulatorConfig(
        prices=PRICES, rate=0, batch=5, max_events=200, seed=seed, price_offset_bps=offset_bps
    )
    with SimulatorServer("sim", cfg, keep_log=True).run_in_thread() as th:
        with sync_connect(th.url) as ws:
            ws.send(sub("subscribe", 1, *PRICES))
            n = 0
            while n < 200:
                n += len(json.loads(ws.recv(timeout=2)).get("events", ()))
        return [e[:-2] for e in th.stats().log]  # without timestamps


def test_seeded_walk_is_reproducible_and_offset_moves_prices():
    a, b, c = _log(7), _log(7), _log(8)
    assert len(a) == 200 and a == b and a != c
    shifted = _log(7, offset_bps=100)
    first = next(e for e in a if e[:2] == ("quote", "BTC-USD"))
    moved = next(e for e in shifted if e[:2] == ("quote", "BTC-USD"))
    assert moved[2] == pytest.approx(first[2] * 1.01, rel=1e-5)


def test_rate_is_shared_by_all_instruments():
    # 2 instruments at 400 events/s in total: one subscribed instrument gets ~200/s
    cfg = SimulatorConfig(prices=PRICES, rate=400, batch=1, heartbeat_interval=10)
    with SimulatorServer("sim", cfg).run_in_thread() as th, sync_connect(th.url) as ws:
        ws.send(sub("subscribe", 1, "BTC-USD"))
        json.loads(ws.recv(timeout=2))
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 0.5:
            n += len(json.loads(ws.recv(timeout=2))["events"])
    assert 60 <= n <= 140, n


def _child(conn) -> None:
    cfg = SimulatorConfig(prices=PRICES, rate=0, batch=2, max_events=4)
    servers = [SimulatorServer("a", cfg), SimulatorServer("b", cfg)]
    asyncio.run(serve_forever(servers, lambda s: conn.send([x.port for x in s]), None, True))


def test_serve_forever_in_a_child_process_stops_on_sigterm():
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_child, args=(child,))
    proc.start()
    try:
        assert parent.poll(5)
        ports = parent.recv()
        assert len(set(ports)) == 2
        for port in ports:
            with sync_connect(f"ws://127.0.0.1:{port}") as ws:
                ws.send(sub("subscribe", 1, "BTC-USD"))
                assert json.loads(ws.recv(timeout=2))["type"] == "subscribed"
                assert json.loads(ws.recv(timeout=2))["type"] == "batch"
        proc.terminate()
        proc.join(5)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()


def test_gate_holds_a_pregenerated_workload_until_it_opens():
    cfg = SimulatorConfig(prices=PRICES, rate=0, batch=4, max_events=10, heartbeat_interval=0.05)

    async def main():
        gate = asyncio.Event()
        async with SimulatorServer("sim", cfg, gate=gate) as server, connect(server.url) as ws:
            await ws.send(sub("subscribe", 1, *PRICES))
            assert (await recv_json(ws))["type"] == "subscribed"
            await wait_for_async(lambda: server.stats.prepared == 1, what="the workload")
            # behind the gate: heartbeats only, nothing counted as written
            assert (await recv_json(ws))["type"] == "heartbeat"
            assert server.stats.events == 0 and server.stats.finished == 0
            gate.set()
            events = []
            while len(events) < 10:
                msg = await recv_json(ws)
                events += msg.get("events", ())
            await wait_for_async(lambda: server.stats.finished == 1, what="finished")
            return events, server.stats

    events, stats = asyncio.run(main())
    assert stats.events == 10 and stats.frames == 3  # frames of 4, 4, 2
    by_symbol = {s: [e["seq"] for e in events if e["s"] == s] for s in PRICES}
    for sym, seqs in by_symbol.items():
        assert seqs == list(range(1, len(seqs) + 1))
        assert stats.symbol(sym).events == len(seqs)
    with pytest.raises(ValueError, match="max_events"):
        SimulatorServer("sim", SimulatorConfig(prices=PRICES), gate=asyncio.Event())


def test_shared_faults_in_the_simulator_protocol():
    cfg = SimulatorConfig(prices=PRICES, rate=2000, batch=2, heartbeat_interval=0.05)

    async def main():
        async with SimulatorServer("sim", cfg) as server, connect(server.url) as ws:
            await server.inject(Fault.REJECT_SUBSCRIBE)
            await ws.send(sub("subscribe", 1, "BTC-USD"))
            refused = await recv_json(ws)
            server.clear()
            await ws.send(sub("subscribe", 2, "BTC-USD"))
            while (await recv_json(ws))["type"] != "subscribed":
                pass
            seqs: list[int] = []

            async def read_until(n: int) -> None:
                while len(seqs) < n:
                    seqs.extend(e["seq"] for e in (await recv_json(ws)).get("events", ()))

            await read_until(10)
            await server.inject(Fault.SEQUENCE_GAP, 7)
            await read_until(len(seqs) + 40)  # past what was in flight before the fault
            assert await server.inject(Fault.MALFORMED, 1) == 1
            assert await server.inject(Fault.RECONNECT_NOTICE) == 0  # the protocol has none
            while await asyncio.wait_for(ws.recv(), 2) != server.malformed_message():
                pass
            return refused, seqs, server.stats

    refused, seqs, stats = asyncio.run(main())
    assert (
        refused["type"] == "error" and refused["id"] == 1 and "rate limited" in refused["message"]
    )
    assert stats.requests == 2 and stats.rejected == 1 and stats.request_errors == 1
    steps = [b - a for a, b in itertools.pairwise(seqs)]
    assert steps.count(8) == 1 and set(steps) == {1, 8}  # 7 numbers skipped, once
    assert stats.malformed == 1 and stats.notices == 0


def test_format_events_per_event_timestamps_and_batches():
    server = SimulatorServer("sim", SimulatorConfig(prices=PRICES, batch=3, quote_ratio=0.5))
    ev = server.market.events([0, 1], 7)
    ev.ts_exchange += np.arange(7)  # not one stamp per chunk: the per-event path
    msgs = [json.loads(m) for m in server.format_events(None, ev)]  # type: ignore[arg-type]
    assert [len(m["events"]) for m in msgs] == [3, 3, 1]
    events = [e for m in msgs for e in m["events"]]
    assert [e["T"] for e in events] == ev.ts_exchange.tolist()
    assert [e["P"] for e in events] == ev.ts_provider.tolist()
    assert [e["seq"] for e in events] == ev.seq.tolist()
    assert [e["e"] == "quote" for e in events] == ev.is_quote.tolist()
    names = list(PRICES)
    assert [e["s"] for e in events] == [names[i] for i in ev.symbol.tolist()]
