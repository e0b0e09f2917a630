"""Simulator ingest costs: decoder/record-fill options, WebSocket client libraries, server rate.

Run: ``.venv/bin/pytest bench/test_bench_parse.py --benchmark-only``. Per-unit figures
(``us_per_event``, ``us_per_frame``, ``events_per_s``) land in ``extra_info`` (keep them with
``--benchmark-json``) and are printed at the end of each test (``-s`` shows them).

Decoder options, all producing identical records (asserted):

* ``msgspec_pack``   msgspec typed decode (tagged unions) + ``struct.pack_into`` per record
  (the production parser, :class:`FrameParser`)
* ``orjson_pack``    orjson → dicts + ``struct.pack_into``
* ``msgspec_item``   msgspec + structured-array item assignment ``out[i] = (...)``
* ``msgspec_cols``   msgspec + per-column lists assigned once per frame
* ``msgspec_tuples`` msgspec + ``np.array(list_of_tuples, RECORD_DTYPE)``
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import struct
import time

import numpy as np
import orjson
import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import (
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_TRADE,
    RECORD_DTYPE,
    SIDE_BUY,
    SIDE_SELL,
)
from fairfeed.providers.simulator.parse import FrameParser
from fairfeed.providers.simulator.wire import SERVER_FRAME_DECODER, Trade, ws_text_frame

SYMS = {"BTC-USD": 0, "ETH-USD": 1}
SIDES = {"buy": SIDE_BUY, "sell": SIDE_SELL}
REC = struct.Struct("<qqqddqIHHBBBBI")
PROV, VENUE, DC, TS = 3, 4, CLASS_SPOT, 1_780_000_000_000_000_000


def make_frame(n: int) -> bytes:
    """A batch of ``n`` events, half trades half quotes (1.5 records per event)."""
    evs = []
    for i in range(n):
        t = 1_780_000_000_000_000_000 + i
        if i % 2:
            side = "buy" if i % 4 == 1 else "sell"
            evs.append({"e": "trade", "s": "BTC-USD", "p": 64000.12 + i, "q": 0.013,
                        "side": side, "seq": i, "T": t, "P": t + 9})  # fmt: skip
        else:
            evs.append({"e": "quote", "s": "ETH-USD", "bp": 3000.1, "bq": 1.5, "ap": 3000.25,
                        "aq": 2.5, "seq": i, "T": t, "P": t + 9})  # fmt: skip
    return orjson.dumps({"type": "batch", "events": evs})


_prod = FrameParser(SYMS, PROV, VENUE, DC)


def msgspec_pack(data: bytes, out: np.ndarray) -> int:
    return _prod.parse(data, out, 0, TS)


def orjson_pack(data: bytes, out: np.ndarray) -> int:
    buf = out.view(np.uint8)
    pack = REC.pack_into
    off = 0
    for e in orjson.loads(data)["events"]:
        inst = SYMS[e["s"]]
        if e["e"] == "trade":
            pack(buf, off, e["T"], e["P"], TS, e["p"], e["q"], e["seq"], inst, PROV, VENUE,
                 KIND_TRADE, DC, SIDES[e["side"]], 0, 0)  # fmt: skip
            off += 64
        else:
            t, p, s = e["T"], e["P"], e["seq"]
            pack(buf, off, t, p, TS, e["bp"], e["bq"], s, inst, PROV, VENUE, KIND_BID, DC, 0, 0, 0)
            pack(buf, off + 64, t, p, TS, e["ap"], e["aq"], s, inst, PROV, VENUE, KIND_ASK, DC,
                 0, 0, 0)  # fmt: skip
            off += 128
    return off >> 6


def msgspec_item(data: bytes, out: np.ndarray) -> int:
    i = 0
    for e in SERVER_FRAME_DECODER.decode(data).events:
        inst = SYMS[e.s]
        if type(e) is Trade:
            out[i] = (e.T, e.P, TS, e.p, e.q, e.seq, inst, PROV, VENUE, KIND_TRADE, DC,
                      SIDES[e.side], 0, 0)  # fmt: skip
            i += 1
        else:
            out[i] = (e.T, e.P, TS, e.bp, e.bq, e.seq, inst, PROV, VENUE, KIND_BID, DC, 0, 0, 0)
            out[i + 1] = (e.T, e.P, TS, e.ap, e.aq, e.seq, inst, PROV, VENUE, KIND_ASK, DC,
                          0, 0, 0)  # fmt: skip
            i += 2
    return i


def msgspec_tuples(data: bytes, out: np.ndarray) -> int:
    rows = []
    add = rows.append
    for e in SERVER_FRAME_DECODER.decode(data).events:
        inst = SYMS[e.s]
        if type(e) is Trade:
            add((e.T, e.P, TS, e.p, e.q, e.seq, inst, PROV, VENUE, KIND_TRADE, DC,
                 SIDES[e.side], 0, 0))  # fmt: skip
        else:
            add((e.T, e.P, TS, e.bp, e.bq, e.seq, inst, PROV, VENUE, KIND_BID, DC, 0, 0, 0))
            add((e.T, e.P, TS, e.ap, e.aq, e.seq, inst, PROV, VENUE, KIND_ASK, DC, 0, 0, 0))
    n = len(rows)
    out[:n] = np.array(rows, RECORD_DTYPE)
    return n


def msgspec_cols(data: bytes, out: np.ndarray) -> int:
    t, p, px, sz, sq, ins, kd, sd = [], [], [], [], [], [], [], []
    for e in SERVER_FRAME_DECODER.decode(data).events:
        inst = SYMS[e.s]
        if type(e) is Trade:
            t.append(e.T)
            p.append(e.P)
            px.append(e.p)
            sz.append(e.q)
            sq.append(e.seq)
            ins.append(inst)
            kd.append(KIND_TRADE)
            sd.append(SIDES[e.side])
        else:
            t += (e.T, e.T)
            p += (e.P, e.P)
            px += (e.bp, e.ap)
            sz += (e.bq, e.aq)
            sq += (e.seq, e.seq)
            ins += (inst, inst)
            kd += (KIND_BID, KIND_ASK)
            sd += (0, 0)
    n = len(t)
    o = out[:n]
    o["ts_exchange"], o["ts_provider"], o["ts_receive"] = t, p, TS
    o["price"], o["size"], o["sequence"], o["instrument"] = px, sz, sq, ins
    o["provider"], o["venue"], o["kind"], o["data_class"] = PROV, VENUE, kd, DC
    o["side"], o["flags"], o["reserved"] = sd, 0, 0
    return n


OPTIONS = [msgspec_pack, orjson_pack, msgspec_item, msgspec_cols, msgspec_tuples]


@pytest.mark.parametrize("events", [1, 10, 100])
@pytest.mark.parametrize("option", OPTIONS, ids=lambda f: f.__name__)
def test_decode_option(benchmark, option, events):
    data = make_frame(events)
    ref = np.zeros(4 * events, RECORD_DTYPE)
    n = msgspec_pack(data, ref)
    out = np.zeros(4 * events, RECORD_DTYPE)
    assert option(data, out) == n and (out[:n] == ref[:n]).all()
    benchmark(option, data, out)
    us = benchmark.stats.stats.median * 1e6 / events
    benchmark.extra_info["us_per_event"] = round(us, 3)
    print(f"\n{option.__name__} batch={events}: {us:.3f} µs/event")


# --- WebSocket client receive cost: picows vs websockets -------------------------------------

N_FRAMES = 200_000
SMALL = b'{"type":"heartbeat","ts":1780000000000000000}'


def _blaster(conn, n_frames: int) -> None:
    """Child process: a websockets server that writes n_frames small pre-built frames fast."""
    from websockets.asyncio.server import serve

    block = ws_text_frame(SMALL) * 1000

    async def handler(ws):
        await ws.recv()  # the client says go
        for _ in range(n_frames // 1000):
            ws.transport.write(block)
            await ws.drain()
        await ws.wait_closed()

    async def main():
        async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as s:
            conn.send(s.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


@pytest.fixture(scope="module")
def blaster():
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_blaster, args=(child, N_FRAMES), daemon=True)
    proc.start()
    assert parent.poll(10)
    yield f"ws://127.0.0.1:{parent.recv()}"
    proc.kill()
    proc.join()


async def _recv_picows(url: str) -> float:
    from picows import WSListener, WSMsgType, ws_connect

    done = asyncio.get_running_loop().create_future()

    class Listener(WSListener):
        n = 0

        def on_ws_frame(self, transport, frame):
            self.n += 1
            if self.n == N_FRAMES:
                done.set_result(None)

    transport, _ = await ws_connect(Listener, url)
    t0 = time.perf_counter()
    transport.send(WSMsgType.TEXT, b"go")
    await done
    dt = time.perf_counter() - t0
    transport.disconnect()
    return dt


async def _recv_websockets(url: str) -> float:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_queue=None) as ws:
        t0 = time.perf_counter()
        await ws.send("go")
        for _ in range(N_FRAMES):
            await ws.recv()
        return time.perf_counter() - t0


@pytest.mark.parametrize("client", [_recv_picows, _recv_websockets], ids=["picows", "websockets"])
def test_client_receive(benchmark, blaster, client):
    """Wall time per frame while the other core blasts frames: the client is the bottleneck."""
    dt = benchmark.pedantic(lambda: asyncio.run(client(blaster)), rounds=3, iterations=1)
    us = benchmark.stats.stats.median * 1e6 / N_FRAMES
    benchmark.extra_info["us_per_frame"] = round(us, 3)
    print(f"\n{client.__name__}: {us:.3f} µs/frame (last run {dt * 1e6 / N_FRAMES:.3f})")


# --- server generation rate and the whole adapter path ---------------------------------------

N_EVENTS = 300_000


def _sim_server(conn, batch: int) -> None:
    from fairfeed.local.simulator import SimulatorServer, serve_forever

    cfg = SimulatorConfig(prices={"BTC-USD": 64000.0, "ETH-USD": 3000.0}, rate=0, batch=batch)
    server = SimulatorServer("bench", cfg)
    asyncio.run(serve_forever([server], lambda s: conn.send(s[0].port), None, True))


def _with_server(batch: int, fn):
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_sim_server, args=(child, batch), daemon=True)
    proc.start()
    try:
        assert parent.poll(10)
        return fn(f"ws://127.0.0.1:{parent.recv()}")
    finally:
        proc.terminate()
        proc.join(5)


async def _count_events(url: str) -> float:
    """A picows client that only counts frames (cheap), subscribed to both instruments."""
    from picows import WSListener, WSMsgType, ws_connect

    done = asyncio.get_running_loop().create_future()
    state = {"events": 0, "t0": 0.0}

    class Listener(WSListener):
        def on_ws_frame(self, transport, frame):
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b'{"type":"batch"'):
                if not state["t0"]:
                    state["t0"] = time.perf_counter()
                state["events"] += payload.count(b'"e":')
                if state["events"] >= N_EVENTS and not done.done():
                    done.set_result(time.perf_counter() - state["t0"])

    transport, _ = await ws_connect(Listener, url)
    transport.send(WSMsgType.TEXT, b'{"op":"subscribe","id":1,"symbols":["BTC-USD","ETH-USD"]}')
    dt = await done
    transport.disconnect()
    return dt


async def _adapter_events(url: str) -> tuple[float, float]:
    """(wall s, this process's CPU s) for the adapter to ingest N_EVENTS events."""
    from fairfeed.core.config import ProviderConfig
    from fairfeed.core.counters import DictCounters, Slot
    from fairfeed.core.registry import Registry
    from fairfeed.providers.base import IngestContext
    from fairfeed.providers.simulator.adapter import SimulatorAdapter

    reg = Registry.build([("BTC-USD", CLASS_SPOT), ("ETH-USD", CLASS_SPOT)], [("bench", "v")])
    prov = ProviderConfig(name="bench", kind="simulator", venue="v", url=url)
    counters = DictCounters()
    ctx = IngestContext.for_instruments(
        prov, url, ("BTC-USD", "ETH-USD"), reg, lambda r: None, counters
    )
    adapter = SimulatorAdapter(ctx)
    task = asyncio.create_task(adapter.run())
    while counters[Slot.RECORDS_IN] == 0:
        await asyncio.sleep(0.001)
    t0, c0, r0 = time.perf_counter(), time.process_time(), counters[Slot.RECORDS_IN]
    target = r0 + int(N_EVENTS * 1.5)  # quote_ratio 0.5: 1.5 records per event
    while counters[Slot.RECORDS_IN] < target:
        await asyncio.sleep(0.001)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    events = (counters[Slot.RECORDS_IN] - r0) / 1.5
    await adapter.close()
    await task
    return dt * N_EVENTS / events, cpu * N_EVENTS / events


@pytest.mark.parametrize("batch", [1, 100])
def test_server_max_rate(benchmark, batch):
    dt = benchmark.pedantic(
        lambda: _with_server(batch, lambda url: asyncio.run(_count_events(url))),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info["events_per_s"] = round(N_EVENTS / dt)
    print(f"\nserver rate=0 batch={batch}: {N_EVENTS / dt:,.0f} events/s")


@pytest.mark.parametrize("batch", [1, 10, 100])
def test_adapter_end_to_end(benchmark, batch):
    """The whole adapter path (picows + parse + emit + counters), server in another process.

    Wall time is bounded by the server (one Python process generating JSON); the adapter's own
    cost is its CPU time per event (``cpu_us_per_event``).
    """
    dt, cpu = benchmark.pedantic(
        lambda: _with_server(batch, lambda url: asyncio.run(_adapter_events(url))),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info["wall_us_per_event"] = round(dt * 1e6 / N_EVENTS, 3)
    benchmark.extra_info["cpu_us_per_event"] = round(cpu * 1e6 / N_EVENTS, 3)
    print(
        f"\nadapter batch={batch}: {dt * 1e6 / N_EVENTS:.3f} µs/event wall, "
        f"{cpu * 1e6 / N_EVENTS:.3f} µs/event adapter CPU"
    )
