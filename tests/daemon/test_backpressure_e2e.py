"""Back-pressure under load: a small shared-memory ring, the local Binance server over loopback,
the real adapter and the worker's RingWriter, and a consumer thread draining the ring.

A consumer that keeps up on average, with stalls, loses nothing and every ping is answered; a
consumer that stops makes the worker drop (counted exactly) only after block_timeout, while the
event loop keeps running and the connection stays up.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import uuid

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import BinanceOptions
from fairfeed.core.records import CLASS_SPOT, KIND_TRADE, RECORD_DTYPE
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.daemon.backpressure import RingWriter
from fairfeed.ipc.ring import OverflowPolicy, Ring
from fairfeed.local.binance import BinanceServer
from fairfeed.providers.base import IngestContext
from fairfeed.providers.binance.adapter import BinanceAdapter
from tests.waiting import wait_for_async as wait_for

PRICES = {"BTC-USDT": 64000.0, "ETH-USDT": 3000.0, "SOL-USDT": 150.0}
REGISTRY = Registry.build([(s, CLASS_SPOT) for s in PRICES], [("binance", "binance")])
pytestmark = pytest.mark.timeout(60)


class Consumer(threading.Thread):
    """Compute's stand-in on the consumer side of the ring (its own thread, so it runs while the
    loop is busy): up to ``batch`` records a pass, 1 ms apart, and a stall of about ``stall``
    seconds every ``stall_every`` passes (seeded)."""

    def __init__(self, ring: Ring, batch: int = 64, stall: float = 0.0, stall_every: int = 0):
        super().__init__(daemon=True)
        self.ring = ring
        self.batch, self.stall, self.stall_every = batch, stall, stall_every
        self.reading = threading.Event()
        self.reading.set()
        self.idle = threading.Event()  # set while stopped by stop_reading()
        self.done = threading.Event()
        self.parts: list[np.ndarray] = []
        self.count = 0
        self.stalls = 0

    def run(self) -> None:
        out = np.empty(self.batch, RECORD_DTYPE)
        rng = random.Random(7)
        passes = 0
        while not self.done.is_set():
            if not self.reading.is_set():
                self.idle.set()
                self.reading.wait(0.05)
                continue
            self.idle.clear()
            k = self.ring.read_into(out)
            if k:
                self.parts.append(out[:k].copy())
                self.count += k
            passes += 1
            if self.stall_every and passes % self.stall_every == 0:
                self.stalls += 1
                self.done.wait(self.stall * rng.uniform(0.5, 1.5))
            else:
                self.done.wait(0.001)

    def stop_reading(self) -> None:
        self.reading.clear()
        self.idle.wait(5)

    def records(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.empty(0, RECORD_DTYPE)

    def close(self) -> None:
        self.done.set()
        self.reading.set()
        self.join(5)


class Worker:
    """The ingest worker's emit path around one Binance adapter (as ``IngestWorker`` wires it),
    counting what the adapter emitted."""

    def __init__(self, url: str, ring: Ring, block_timeout: float) -> None:
        self.counters = DictCounters()
        self.emitted = 0
        provider = ProviderConfig(
            name="binance", kind="binance", venue="binance", url=url, stale_after=5.0,
            options=BinanceOptions(backoff_base=0.05, backoff_cap=0.2),
        )  # fmt: skip
        subs = tuple(
            Subscription.resolve(REGISTRY, "binance", "binance", i, "spot") for i in PRICES
        )
        self.writer = RingWriter(
            ring,
            self.counters,
            OverflowPolicy(block_timeout=block_timeout),
            lambda: self.adapter.pause_reading(),
            lambda: self.adapter.resume_reading(),
        )
        ctx = IngestContext(provider, url, subs, REGISTRY, self.emit, self.counters)
        self.adapter = BinanceAdapter(ctx)

    def emit(self, records: np.ndarray) -> None:
        self.emitted += len(records)
        self.writer.emit(records)

    def accounted(self) -> bool:
        """Every emitted record is in the ring, dropped (counted) or held back."""
        c = self.counters
        return self.emitted == (
            c[Slot.RECORDS_OUT] + c[Slot.RING_DROPPED] + len(self.writer.pending)
        )


class LoopLag:
    """A periodic task: the longest delay between two of its ticks beyond the period."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0
        self.ticks = 0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.period)
            now = loop.time()
            self.worst = max(self.worst, now - last - self.period)
            self.ticks += 1
            last = now

    def reset(self) -> None:
        self.worst = 0.0

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _trade_ids_contiguous(records: np.ndarray) -> bool:
    """Per instrument, trade ids without a hole or a step back: nothing lost or reordered."""
    trades = records[records["kind"] == KIND_TRADE]
    for inst in np.unique(trades["instrument"]):
        seq = trades["sequence"][trades["instrument"] == inst]
        if len(seq) > 1 and not np.all(np.diff(seq) == 1):
            return False
    return True


@pytest.fixture
def ring():
    r = Ring.create(f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}", 64)
    yield r
    r.close()
    r.unlink()


def test_small_ring_with_a_consumer_that_keeps_up_on_average_loses_nothing(ring: Ring) -> None:
    """64 records of ring, ~3000 records/s, a consumer that stalls ~30 ms every 50 passes (the
    ring overflows on every stall): held back and paused, never dropped; pings answered."""
    cfg = SimulatorConfig(prices=PRICES, rate=2000, quote_ratio=0.5, seed=3)
    consumer = Consumer(ring, stall=0.03, stall_every=50)
    consumer.start()

    async def main() -> None:
        async with BinanceServer("binance", cfg, ping_interval=0.1, ping_timeout=1.0) as server:
            w = Worker(server.url, ring, block_timeout=0.5)
            task = asyncio.create_task(w.adapter.run())
            await wait_for(
                lambda: w.writer.pauses >= 10 and server.pongs >= 10 and consumer.stalls >= 10,
                timeout=40,
                what="10 pauses for a full ring, 10 pongs, 10 consumer stalls",
            )
            await w.adapter.close()
            await task
            await w.writer.drain()
            await wait_for(
                lambda: consumer.count == w.counters[Slot.RECORDS_OUT] and w.accounted(),
                what="the consumer read everything written",
            )
            c = w.counters
            assert c[Slot.RING_DROPPED] == ring.dropped == 0
            assert w.writer.timeouts == 0
            assert w.emitted == c[Slot.RECORDS_OUT] == consumer.count
            assert c[Slot.RECORDS_IN] > 1000
            assert server.pong_timeouts == 0  # no pong missed while paused
            assert c[Slot.DISCONNECTS] == c[Slot.RECONNECTS] == 0
            assert c[Slot.GAPS] == 0
            assert _trade_ids_contiguous(consumer.records())

    try:
        asyncio.run(main())
    finally:
        consumer.close()


def test_a_stopped_consumer_drops_after_block_timeout_and_the_loop_keeps_running(
    ring: Ring,
) -> None:
    """The consumer stops: the worker holds back for block_timeout (500 ms) without blocking its
    loop, drops and counts exactly, reads on (pings answered) and recovers when it is back."""
    cfg = SimulatorConfig(prices=PRICES, rate=1000, quote_ratio=0.5, seed=4)
    consumer = Consumer(ring)
    consumer.start()

    async def main() -> None:
        async with BinanceServer("binance", cfg, ping_interval=0.1, ping_timeout=2.0) as server:
            w = Worker(server.url, ring, block_timeout=0.5)
            c = w.counters
            task = asyncio.create_task(w.adapter.run())
            lag = LoopLag()
            await wait_for(lambda: c[Slot.RECORDS_OUT] > 300, what="data flowing")
            consumer.stop_reading()
            lag.reset()
            await wait_for(lambda: w.writer.timeouts >= 1, timeout=10, what="a bounded pause")
            dropped = c[Slot.RING_DROPPED]
            assert dropped > 0 and ring.dropped == dropped
            assert w.accounted()
            # reading resumed: frames keep coming, and what does not fit is dropped at once
            frames, pongs = c[Slot.FRAMES_IN], server.pongs
            await wait_for(
                lambda: c[Slot.FRAMES_IN] > frames + 100 and server.pongs > pongs + 3,
                timeout=10,
                what="frames and pongs after the pause",
            )
            assert c[Slot.RING_DROPPED] > dropped and not w.writer.paused
            assert w.writer.pauses == 1  # a stopped consumer does not keep the sockets paused
            assert lag.ticks > 50
            assert lag.worst < 0.25, f"event loop blocked {lag.worst * 1000:.0f} ms"
            assert ring.dropped == c[Slot.RING_DROPPED]
            assert c[Slot.RECORDS_OUT] == ring.written
            assert w.accounted()
            # the consumer is back: writes go on, shedding ends, nothing else is lost
            consumer.reading.set()
            out = c[Slot.RECORDS_OUT]
            await wait_for(
                lambda: c[Slot.RECORDS_OUT] > out + 300 and not w.writer.shedding_since,
                timeout=10,
                what="writes after the consumer came back",
            )
            assert not task.done()
            assert server.pong_timeouts == 0
            assert c[Slot.DISCONNECTS] == c[Slot.RECONNECTS] == 0
            await lag.stop()
            await w.adapter.close()
            await task
            await w.writer.drain()
            await wait_for(
                lambda: consumer.count == c[Slot.RECORDS_OUT] and w.accounted(),
                what="the consumer read everything written",
            )
            assert ring.dropped == c[Slot.RING_DROPPED]
            assert w.emitted == ring.written + ring.dropped

    try:
        asyncio.run(main())
    finally:
        consumer.close()
