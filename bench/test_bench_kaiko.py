"""Kaiko Stream ingest costs: parse µs per message, and gRPC client set-ups side by side.

Run: ``.venv/bin/pytest bench/test_bench_kaiko.py --benchmark-only -s``. Figures land in
``extra_info`` and are printed.

* ``test_parse_trade`` / ``test_parse_update``: one serialized message → one record
  (:class:`KaikoParser`, protobuf decode included).
* ``test_client_setups``: one server process streams pre-serialized trade messages (made by
  :class:`KaikoServer`'s own generator) as fast as it can over loopback; each client set-up
  runs in its own process, one after the other in the same run, reading ``N`` messages:

  - ``plain``: the generated ``StreamTradesServiceV1Stub`` on a default channel, iterating
    deserialized responses (what the Kaiko examples do), no records;
  - ``st_raw``: a ``SingleThreadedUnaryStream`` channel, raw bytes (no deserializer), no
    records: the transport alone, for reference;
  - ``adapter``: :class:`KaikoAdapter` — synchronous call in a reader thread on a
    ``SingleThreadedUnaryStream`` channel, raw bytes, parse into records, batches handed to
    the asyncio loop and emitted (a counting sink instead of the ring).

  Reported: messages/s (wall) and client CPU µs per message (user + system of the client
  process, all its threads). On a 2-core machine the server process competes for the cores,
  so CPU per message is the sturdier figure; 1e6 / cpu_us is the per-core ceiling.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import time

import numpy as np
import pytest

N_MESSAGES = 60_000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _messages(n: int = 2000) -> list[bytes]:
    from fairfeed.core.config import SimulatorConfig
    from fairfeed.local.kaiko import KaikoServer

    srv = KaikoServer(SimulatorConfig(prices={"BTC-USD": 64000.0, "ETH-USD": 3000.0}))
    insts = srv.instruments[:2]
    return [m.SerializeToString() for m in srv._messages(0, insts, n, True, False)]


def _serve(port_q) -> None:
    import grpc
    from kaikosdk import sdk_pb2_grpc
    from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1

    msgs = _messages()

    class Replay(sdk_pb2_grpc.StreamTradesServiceV1Servicer):
        async def Subscribe(self, request, context):
            while True:
                for m in msgs:
                    yield m

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(
            Replay().Subscribe,
            request_deserializer=StreamTradesRequestV1.FromString,
            response_serializer=lambda b: b,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "kaikosdk.StreamTradesServiceV1", {"Subscribe": handler}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_q.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


def _plain_client(target: str, n: int, out) -> None:
    import grpc
    from kaikosdk import sdk_pb2_grpc
    from kaikosdk.core.instrument_criteria_pb2 import InstrumentCriteria
    from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1

    channel = grpc.insecure_channel(target)
    stub = sdk_pb2_grpc.StreamTradesServiceV1Stub(channel)
    req = StreamTradesRequestV1(
        instrument_criteria=InstrumentCriteria(exchange="cbse", instrument_class="spot", code="*")
    )
    it = stub.Subscribe(req, metadata=(("authorization", "Bearer k"),))
    next(it)
    t0, c0 = time.perf_counter(), _cpu()
    for _, _m in zip(range(n), it, strict=False):
        pass
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    it.cancel()
    out.put((n, wall, cpu))


def _st_raw_client(target: str, n: int, out) -> None:
    import grpc
    import grpc.experimental
    from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1

    from fairfeed.providers.kaiko.adapter import TRADES_METHOD

    opts = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
    channel = grpc.insecure_channel(target, options=opts)
    call = channel.unary_stream(
        TRADES_METHOD, request_serializer=StreamTradesRequestV1.SerializeToString
    )
    it = call(StreamTradesRequestV1(), metadata=(("authorization", "Bearer k"),))
    next(it)
    t0, c0 = time.perf_counter(), _cpu()
    for _, _m in zip(range(n), it, strict=False):
        pass
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    it.cancel()
    out.put((n, wall, cpu))


def _adapter_client(target: str, n: int, out) -> None:
    from fairfeed.core.config import ProviderConfig
    from fairfeed.core.counters import DictCounters, Slot
    from fairfeed.core.options import KaikoOptions
    from fairfeed.core.registry import Registry
    from fairfeed.core.subscriptions import Subscription
    from fairfeed.providers.base import IngestContext
    from fairfeed.providers.kaiko.adapter import KaikoAdapter

    reg = Registry.build([("BTC-USD", 1), ("ETH-USD", 1)], [("kaiko", "COINBASE")])
    subs = tuple(Subscription.resolve(reg, "kaiko", "COINBASE", i, "spot") for i in reg.instruments)
    counters = DictCounters()
    emitted = [0]

    def emit(records: np.ndarray) -> None:
        emitted[0] += len(records)

    os.environ["FAIRFEED_BENCH_KAIKO_KEY"] = "k"
    provider = ProviderConfig(
        name="kaiko", kind="kaiko", url=target, tls=False,
        api_key_env="FAIRFEED_BENCH_KAIKO_KEY", options=KaikoOptions(quotes=False),
    )  # fmt: skip
    ctx = IngestContext(provider, target, subs, reg, emit, counters)

    async def main() -> tuple[int, float, float]:
        a = KaikoAdapter(ctx)
        task = asyncio.create_task(a.run())
        while counters[Slot.RECORDS_IN] == 0:
            await asyncio.sleep(0.001)
        m0, t0, c0 = counters[Slot.FRAMES_IN], time.perf_counter(), _cpu()
        while counters[Slot.FRAMES_IN] - m0 < n:
            await asyncio.sleep(0.005)
        got = counters[Slot.FRAMES_IN] - m0
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        assert counters[Slot.PARSE_ERRORS] == 0
        await a.close()
        task.cancel()
        return got, wall, cpu

    out.put(asyncio.run(main()))


def _run(ctx, fn, target: str, n: int) -> tuple[int, float, float]:
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(target, n, q))
    p.start()
    res = q.get(timeout=120)
    p.join(10)
    return res


def test_client_setups(benchmark):
    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(port_q,), daemon=True)
    server.start()
    try:
        target = f"127.0.0.1:{port_q.get(timeout=60)}"
        results: dict[str, tuple[int, float, float]] = {}

        def once() -> None:
            results["plain"] = _run(ctx, _plain_client, target, N_MESSAGES)
            results["st_raw"] = _run(ctx, _st_raw_client, target, N_MESSAGES)
            results["adapter"] = _run(ctx, _adapter_client, target, N_MESSAGES)

        benchmark.pedantic(once, rounds=1, iterations=1)
    finally:
        server.kill()
        server.join(5)
    for name, (n, wall, cpu) in results.items():
        rate, us = n / wall, cpu / n * 1e6
        benchmark.extra_info[f"{name}_msgs_per_s"] = round(rate)
        benchmark.extra_info[f"{name}_cpu_us_per_msg"] = round(us, 2)
        benchmark.extra_info[f"{name}_msgs_per_s_per_core"] = round(1e6 / us)
        print(f"\n{name:8s} {rate:10,.0f} msg/s wall  {us:6.1f} µs CPU/msg  "
              f"(ceiling {1e6 / us:,.0f} msg/s per core)")  # fmt: skip
    assert results["adapter"][0] >= N_MESSAGES


@pytest.fixture(scope="module")
def parser_and_messages():
    from fairfeed.core.config import SimulatorConfig
    from fairfeed.local.kaiko import KaikoServer
    from fairfeed.providers.kaiko.parse import KaikoParser

    srv = KaikoServer(
        SimulatorConfig(prices={"BTC-USD": 64000.0, "ETH-USD": 3000.0}, quote_ratio=0.5)
    )
    insts = srv.instruments[:2]
    table = {(i.exchange, i.kclass, i.code): (k, 0, 1, 0, 1.0) for k, i in enumerate(insts)}
    trades = [m.SerializeToString() for m in srv._messages(0, insts, 400, True, False)]
    updates = [m.SerializeToString() for m in srv._messages(0, insts, 400, False, True)]
    return KaikoParser(table, 0), trades, updates


def _bench_parse(benchmark, parse, msgs) -> None:
    from fairfeed.core.records import RECORD_DTYPE

    out = np.zeros(len(msgs), RECORD_DTYPE)

    def run() -> int:
        n = 0
        for m in msgs:
            n += parse(m, out, n, 1)
        return n

    assert run() == len(msgs)
    benchmark(run)
    us = benchmark.stats.stats.mean / len(msgs) * 1e6
    benchmark.extra_info["us_per_msg"] = round(us, 3)
    print(f"\nparse {us:.2f} µs per message")


def test_parse_trade(benchmark, parser_and_messages):
    parser, trades, _ = parser_and_messages
    _bench_parse(benchmark, parser.parse_trade, trades)


def test_parse_update(benchmark, parser_and_messages):
    parser, _, updates = parser_and_messages
    _bench_parse(benchmark, parser.parse_update, updates)
