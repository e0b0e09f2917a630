"""The Kaiko flood server (h2 over asyncio) read by the real KaikoAdapter and a plain grpcio
client over loopback: exact records, many messages per DATA frame, HTTP/2 flow control pushing
back on the server, pacing, the gRPC statuses of refused calls."""

from __future__ import annotations

import asyncio
import os
import struct
import time

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kaikosdk.core.instrument_criteria_pb2 import InstrumentCriteria
from kaikosdk.stream.trades_v1.request_pb2 import StreamTradesRequestV1
from kaikosdk.stream.trades_v1.response_pb2 import StreamTradesResponseV1

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import KaikoOptions
from fairfeed.core.records import KIND_TRADE, SIDE_BUY, SIDE_SELL
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.kaikoflood import KaikoFlood, grpc_stream
from fairfeed.providers.base import IngestContext
from fairfeed.providers.kaiko.adapter import MARKET_UPDATE_METHOD, TRADES_METHOD, KaikoAdapter
from tests.providers.harness import Sink
from tests.waiting import wait_for_async as wait_for

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0}
REGISTRY = Registry.build([("BTC-USD", 1), ("ETH-USD", 1)], [("kaiko", "COINBASE")])
KEY = "flood-key"
KEY_ENV = "FAIRFEED_TEST_KAIKO_FLOOD_KEY"
pytestmark = pytest.mark.timeout(60)


def _flood(n: int, **kw) -> tuple[KaikoFlood, list[bytes]]:
    flood, _ = KaikoFlood.trades(SimulatorConfig(PRICES, quote_ratio=0.0, seed=3), n, api_key=KEY,
                                 **kw)  # fmt: skip
    blob, ends = flood.blob, flood.ends
    starts = np.concatenate(([0], ends[:-1]))
    msgs = [blob[s + 5 : e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    return flood, msgs


class Client:
    """The real adapter on ``flood`` (every instrument of PRICES, trades only)."""

    def __init__(self, flood: KaikoFlood, api_key: str = KEY, instruments=tuple(PRICES), **kw):
        os.environ[KEY_ENV] = api_key
        kw.setdefault("backoff_base", 5.0)  # an ended call is not restarted within a test
        kw.setdefault("backoff_cap", 5.0)
        provider = ProviderConfig(
            name="kaiko", kind="kaiko", url=flood.target, tls=False, api_key_env=KEY_ENV,
            options=KaikoOptions(quotes=False, **kw),
        )  # fmt: skip
        subs = tuple(
            Subscription.resolve(REGISTRY, "kaiko", "COINBASE", i, "spot") for i in instruments
        )
        self.sink = Sink()
        self.counters = DictCounters()
        ctx = IngestContext(provider, flood.target, subs, REGISTRY, self.sink, self.counters)
        self.adapter = KaikoAdapter(ctx)

    async def __aenter__(self) -> Client:
        self.task = asyncio.create_task(self.adapter.run())
        return self

    async def __aexit__(self, *exc) -> None:
        os.environ.pop(KEY_ENV, None)
        await self.adapter.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _expected(msgs: list[bytes]) -> np.ndarray:
    """What each message says, decoded independently of the adapter's parser."""
    rows = []
    for raw in msgs:
        m = StreamTradesResponseV1.FromString(raw)
        inst = REGISTRY.instrument_id(m.code.upper())
        side = SIDE_BUY if m.side == StreamTradesResponseV1.BUY else SIDE_SELL
        rows.append((inst, m.price, m.amount, side, int(m.id), m.ts_exchange.value.ToNanoseconds(),
                     m.ts_collection.value.ToNanoseconds()))  # fmt: skip
    return np.array(rows, dtype=object)


def test_adapter_reads_exactly_the_generated_trades_many_per_frame():
    n = 5000

    async def main():
        flood, msgs = _flood(n)
        await flood.start()
        try:
            async with Client(flood) as c:
                await wait_for(lambda: flood.calls_done == 1, 20, what="the call streamed")
                await wait_for(lambda: c.sink.n == n, 20, what="every record")
                recs = c.sink.records
                assert c.counters[Slot.FRAMES_IN] == n
                assert c.counters[Slot.PARSE_ERRORS] == 0
        finally:
            await flood.stop()
        exp = _expected(msgs)
        assert (recs["kind"] == KIND_TRADE).all()
        assert recs["instrument"].tolist() == exp[:, 0].tolist()
        assert recs["price"].tolist() == exp[:, 1].tolist()
        assert recs["size"].tolist() == exp[:, 2].tolist()
        assert recs["side"].tolist() == exp[:, 3].tolist()
        assert recs["sequence"].tolist() == exp[:, 4].tolist()
        assert recs["ts_exchange"].tolist() == exp[:, 5].tolist()
        assert recs["ts_provider"].tolist() == exp[:, 6].tolist()
        assert flood.messages_sent == n and flood.calls == 1
        # many messages to a DATA frame, as a loaded server writes (16 KiB / ~120 B each)
        assert flood.frames <= n / 50

    asyncio.run(main())


def test_the_source_servers_stats_count_what_was_generated():
    flood, source = KaikoFlood.trades(SimulatorConfig(PRICES, quote_ratio=0.5, seed=3), 1000)
    assert len(flood.ends) == 1000  # trades only, whatever the share of quotes
    assert sum(s.trades for s in source.stats.values()) == 1000
    last = StreamTradesResponseV1.FromString(flood.blob[int(flood.ends[-2]) + 5 :])
    st_ = source.stats[f"cbse:spot:{last.code}"]
    assert st_.last_trade[0] == last.price and st_.last_trade[3] == int(last.id)


def test_a_client_that_stops_reading_stops_the_server_and_loses_nothing():
    """The adapter's ring is full: its reader threads wait, grpc stops granting window once
    its buffers are full (~20 MB here), the server stops on the flow-control window; on resume
    every message arrives, once, in order."""
    flood0, msgs = _flood(20_000)
    reps = 12  # ~29 MB: more than grpc's windows let through unread
    flood = KaikoFlood(msgs * reps, flood0.instruments, api_key=KEY)
    n = len(msgs) * reps
    ids = np.array([int(StreamTradesResponseV1.FromString(m).id) for m in msgs] * reps)

    async def main():
        await flood.start()
        try:
            c = Client(flood, buffer_records=64)
            c.adapter.pause_reading()  # from the start: grpc's windows grow while it reads
            async with c:
                await wait_for(lambda: flood.window_waits > 0, 20, what="the server blocked")
                last = -1
                while flood.bytes_sent != last:  # until the server has stopped for 0.3 s
                    last = flood.bytes_sent
                    await asyncio.sleep(0.3)
                sent = flood.messages_sent
                assert sent < n, f"{sent} of {n} messages sent to a client that reads none"
                assert c.sink.n <= 64, c.sink.n  # what a status record's flush let through
                c.adapter.resume_reading()
                await wait_for(lambda: c.sink.n == n, 30, what="every record after resume")
                assert flood.calls_done == 1
                seq = c.sink.records["sequence"]
                assert np.array_equal(seq, ids), f"first difference at {np.argmax(seq != ids)}"
        finally:
            await flood.stop()

    asyncio.run(main())


def test_pacing_spreads_a_call_over_time():
    rate, n = 5000, 1500  # 0.3 s at 5 msgs per 1 ms tick

    async def main():
        flood, _ = _flood(n, rate=rate)
        await flood.start()
        try:
            async with Client(flood) as c:
                await wait_for(lambda: c.sink.n > 0, 20, what="first records")
                t0 = time.monotonic()
                await wait_for(lambda: c.sink.n == n, 20, what="every record")
                took = time.monotonic() - t0
        finally:
            await flood.stop()
        assert took >= 0.8 * n / rate  # the server cannot send faster than paced
        assert flood.frames >= n / rate / 0.004  # small writes, one per tick or so

    asyncio.run(main())


def test_refused_calls_get_grpc_statuses():
    async def main():
        flood, _ = _flood(10)
        await flood.start()
        req = StreamTradesRequestV1(
            instrument_criteria=InstrumentCriteria(
                exchange="cbse", instrument_class="spot", code="btc-usd,eth-usd"
            )
        )
        half = StreamTradesRequestV1(
            instrument_criteria=InstrumentCriteria(
                exchange="cbse", instrument_class="spot", code="btc-usd"
            )
        )
        ser = StreamTradesRequestV1.SerializeToString
        try:
            async with grpc.aio.insecure_channel(flood.target) as ch:

                async def status(method: str, request, key: str = KEY):
                    call = ch.unary_stream(method, request_serializer=ser)(
                        request, metadata=(("authorization", f"Bearer {key}"),)
                    )
                    got = []
                    try:
                        got = [m async for m in call]
                    except grpc.RpcError as exc:
                        return exc.code(), len(got)
                    return await call.code(), len(got)

                assert await status(TRADES_METHOD, req) == (grpc.StatusCode.OK, 10)
                assert (await status(TRADES_METHOD, req, "wrong"))[0] == (
                    grpc.StatusCode.UNAUTHENTICATED
                )
                assert (await status(TRADES_METHOD, half))[0] == grpc.StatusCode.INVALID_ARGUMENT
                assert (await status(MARKET_UPDATE_METHOD, req))[0] == (
                    grpc.StatusCode.UNIMPLEMENTED
                )
        finally:
            await flood.stop()
        assert flood.rejected == 3 and flood.calls_done == 1

    asyncio.run(main())


def test_wrong_key_is_a_subscribe_error_for_the_adapter():
    async def main():
        flood, _ = _flood(10)
        await flood.start()
        try:
            async with Client(flood, api_key="wrong", backoff_base=0.05, backoff_cap=0.1) as c:
                await wait_for(lambda: c.counters[Slot.SUBSCRIBE_ERRORS] >= 2, 10,
                               what="refusals")  # fmt: skip
                assert c.sink.n == 0
        finally:
            await flood.stop()
        assert flood.rejected >= 2 and flood.calls == 0

    asyncio.run(main())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_grpc_stream_frames_every_message(msgs):
    blob, ends = grpc_stream(msgs)
    out, off = [], 0
    while off < len(blob):  # a plain reader of gRPC's length-prefixed messages
        flag, size = struct.unpack_from(">BI", blob, off)
        assert flag == 0
        out.append(blob[off + 5 : off + 5 + size])
        off += 5 + size
        assert off == ends[len(out) - 1]
    assert out == msgs and len(ends) == len(msgs)
