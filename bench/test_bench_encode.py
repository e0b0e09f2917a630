"""Ticks encoding cost: µs per record for one compute batch (3 instruments × 3 providers).

Run: ``.venv/bin/pytest bench/test_bench_encode.py``; ``us_per_record`` lands in ``extra_info``
(``--benchmark-json`` keeps it).
"""

from __future__ import annotations

import numpy as np
import pytest

from fairfeed.core.records import CLASS_SPOT, KIND_BID, KIND_TRADE, empty_records
from fairfeed.core.registry import Registry
from fairfeed.kafka.encode import TickEncoder

REGISTRY = Registry.build(
    [("BTC-USD", CLASS_SPOT), ("ETH-USD", CLASS_SPOT), ("SOL-USD", CLASS_SPOT)],
    [("sim-a", "ALPHAX"), ("sim-b", "BETAX"), ("sim-c", "GAMMAX")],
)


def make_batch(n: int, seed: int = 0) -> np.ndarray:
    """Interleaved records of 9 (instrument, source) groups, as the compute stage sees them."""
    rng = np.random.default_rng(seed)
    rec = empty_records(n)
    rec["instrument"] = rng.integers(0, 3, n)
    src = rng.integers(0, 3, n)
    rec["provider"] = src
    rec["venue"] = src
    rec["data_class"] = CLASS_SPOT
    rec["kind"] = rng.choice([KIND_TRADE, KIND_BID], n)
    rec["price"] = rng.uniform(100, 70_000, n)
    rec["size"] = rng.exponential(0.5, n)
    rec["sequence"] = np.arange(n) + 10**9
    t = 1_780_000_000_000_000_000 + np.arange(n) * 1000
    rec["ts_exchange"] = t
    rec["ts_provider"] = t + 5_000
    rec["ts_receive"] = t + 250_000
    return rec


@pytest.mark.parametrize("n", [256, 4096])
def test_encode_ticks(benchmark, n: int) -> None:
    enc = TickEncoder(REGISTRY)
    batch = make_batch(n)
    msgs = benchmark(enc.ticks, batch)
    assert len(msgs) == 9
    assert sum(m[1].count(b'"count"') for m in msgs) == 9
    benchmark.extra_info["records"] = n
    benchmark.extra_info["messages"] = len(msgs)
    benchmark.extra_info["bytes_per_record"] = round(sum(len(v) for _, v in msgs) / n, 1)
    benchmark.extra_info["us_per_record"] = round(benchmark.stats.stats.median / n * 1e6, 4)


def test_encode_fair(benchmark) -> None:
    enc = TickEncoder(REGISTRY)
    n = 3
    args = (
        np.arange(n, dtype=np.int32),
        np.array([65000.5, 3000.25, 150.125]),
        np.full(n, 3, np.int32),
        np.full(n, 1_000_000, np.int64),
        1_780_000_000_000_000_000,
    )
    msgs = benchmark(enc.fair, *args)
    assert len(msgs) == n
    benchmark.extra_info["us_per_message"] = round(benchmark.stats.stats.median / n * 1e6, 4)


@pytest.fixture(scope="module")
def broker():
    from fairfeed.kafka.broker import LocalBroker

    with LocalBroker() as b:
        yield b


def test_encode_and_produce(benchmark, broker) -> None:
    """Encode + hand to the producer (CPU on the compute thread), 4096-record batches; the
    flush at the end of each round includes broker acks, so this is end-to-end throughput."""
    from fairfeed.core.config import KafkaConfig
    from fairfeed.core.counters import DictCounters, Slot
    from fairfeed.kafka.sink import KafkaSink

    counters = DictCounters()
    sink = KafkaSink(KafkaConfig(bootstrap=broker.bootstrap, create_topics=True), counters)
    enc = TickEncoder(REGISTRY)
    batches = [make_batch(4096, seed) for seed in range(25)]

    def run() -> None:
        for batch in batches:
            for key, value in enc.ticks(batch):
                sink.produce("bench.ticks", key, value)
            sink.poll()
        assert sink.flush(30) == 0

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    n = sum(len(b) for b in batches)
    sink.close()
    assert counters[Slot.KAFKA_ERRORS] == 0 and counters[Slot.KAFKA_DROPPED] == 0
    benchmark.extra_info["records_per_round"] = n
    benchmark.extra_info["us_per_record"] = round(benchmark.stats.stats.median / n * 1e6, 4)
    benchmark.extra_info["records_per_s"] = round(n / benchmark.stats.stats.median)
