"""Anomaly kernel cost per record at 10,000 instruments x 5 providers (50,000 subscriptions).

Run: ``.venv/bin/pytest bench/test_bench_anomaly.py --benchmark-only -s``. ``update`` is the
per-batch state update; ``evaluate`` is one full evaluation pass over every subscription (roll-up
included), reported per record as its cost spread over the records of one evaluation interval
at the reference load (28k msg/s, evaluate every 0.25 s: 7,000 records).
"""

from __future__ import annotations

import numpy as np
import pytest

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_HEARTBEAT, KIND_TRADE, empty_records
from fairfeed.hotpath import anomaly as an
from fairfeed.hotpath.warmup import warm_up

N_INSTRUMENTS = 10_000
N_PROVIDERS = 5  # one venue each
S = 1_000_000_000
NOW = 1_700_000_000 * S
RECORDS_PER_EVAL = 7_000  # 28k msg/s x 0.25 s


def new_state() -> an.AnomalyState:
    warm_up()
    subs = [(i, s) for i in range(N_INSTRUMENTS) for s in range(N_PROVIDERS)]
    thr = an.threshold_rows(len(subs))
    sources = [(p, p) for p in range(N_PROVIDERS)]
    classes = [1 + (i % 3) for i in range(N_INSTRUMENTS)]
    return an.AnomalyState(
        classes, sources, N_PROVIDERS, N_PROVIDERS, subs, thr, an.default_globals(), 2, NOW
    )


def random_batch(n: int, t: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    recs = empty_records(n)
    recs["instrument"] = rng.integers(0, N_INSTRUMENTS, n)
    recs["provider"] = rng.integers(0, N_PROVIDERS, n)
    recs["venue"] = recs["provider"]
    recs["kind"] = rng.choice([KIND_TRADE, KIND_BID, KIND_ASK], n)
    recs["kind"][::500] = KIND_HEARTBEAT
    recs["price"] = 100.0 + rng.standard_normal(n)
    recs["ts_receive"] = t - rng.integers(0, 1_000_000, n)
    recs["ts_exchange"] = recs["ts_receive"] - 3_000_000
    recs["ts_provider"] = recs["ts_receive"] - 1_000_000
    return recs


def report(benchmark, per: str, count: int) -> None:
    mean_us = benchmark.stats.stats.mean * 1e6
    benchmark.extra_info[f"us_per_{per}"] = mean_us / count
    benchmark.extra_info["us_per_call"] = mean_us
    print(f"\n{benchmark.name}: {mean_us:.2f} µs/call, {mean_us / count:.4f} µs/{per}")


@pytest.mark.parametrize("batch", [256, 4096])
def test_update(benchmark, batch):
    state = new_state()
    recs = random_batch(batch, NOW + S)
    benchmark(state.update, recs)
    report(benchmark, "record", batch)


def _stamp(recs: np.ndarray, t: int) -> None:
    recs["ts_receive"] = t - 1000
    recs["ts_exchange"] = t - 3_000_000
    recs["ts_provider"] = t - 1_000_000


def test_evaluate(benchmark):
    """Steady state: each pass follows the 7,000 records of its interval (not timed)."""
    state = new_state()
    fair = np.full(N_INSTRUMENTS, 100.0)
    t = NOW
    state.update(random_batch(200_000, t))  # every subscription has data
    batches = [random_batch(RECORDS_PER_EVAL, t, seed=100 + i) for i in range(8)]
    for i in range(40):  # rates and baselines at the steady load
        t += S // 4
        _stamp(batches[i % 8], t)
        state.update(batches[i % 8])
        state.evaluate(t, fair)
    assert not state.onset.any() and not state.active.any()
    clock = [t]

    def setup():
        clock[0] += S // 4
        recs = batches[(clock[0] // (S // 4)) % len(batches)]
        _stamp(recs, clock[0])
        state.update(recs)
        return (clock[0], fair), {}

    benchmark.pedantic(state.evaluate, setup=setup, rounds=60, warmup_rounds=2)
    report(benchmark, "record", RECORDS_PER_EVAL)
    per_1s = benchmark.stats.stats.mean * 1e6 / (4 * RECORDS_PER_EVAL)
    benchmark.extra_info["us_per_record_evaluate_1s"] = per_1s
    print(f"  with evaluate_interval = 1 s: {per_1s:.4f} µs/record")
