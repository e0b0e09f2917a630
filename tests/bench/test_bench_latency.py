"""The latency helpers of the benchmarks: histogram percentiles, send stamps, the plain producer's
floor and the broker-tail harness on a tiny load (figures positive, not what they are)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO))

from bench.broker_tail import Case, run_case  # noqa: E402
from bench.steady import hist_percentiles, sent_stamps  # noqa: E402
from fairfeed.hotpath.metrics import BOUNDS_S, N_BUCKETS  # noqa: E402
from fairfeed.local.market import PROVIDER_LAG_NS  # noqa: E402


def test_hist_percentiles_interpolate_within_a_bucket():
    counts = np.zeros(N_BUCKETS)
    counts[1] = 10  # (0.1 ms, 0.25 ms]
    got = hist_percentiles(counts)
    assert got["n"] == 10
    assert got["p50"] == pytest.approx(0.175)
    assert got["p99"] == pytest.approx(0.1 + 0.99 * 0.15)


def test_hist_percentiles_across_buckets_and_overflow():
    counts = np.zeros(N_BUCKETS)
    counts[0] = 98  # <= 0.1 ms
    counts[-1] = 2  # beyond the last bound: reported as that bound
    got = hist_percentiles(counts)
    assert got["p50"] < 0.1
    assert got["p99"] == pytest.approx(BOUNDS_S[-1] * 1e3)
    assert hist_percentiles(np.zeros(N_BUCKETS)) == {}


def test_sent_stamps_of_columnar_and_single_records():
    columnar = orjson.dumps({"ts_provider": [5_000_000, 6_000_000]})
    assert sent_stamps(columnar).tolist() == [
        5_000_000 + PROVIDER_LAG_NS,
        6_000_000 + PROVIDER_LAG_NS,
    ]
    single = orjson.dumps({"ts_provider": 7_000_000})
    assert sent_stamps(single).tolist() == [7_000_000 + PROVIDER_LAG_NS]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_broker_tail_case_on_a_tiny_load(kafka_broker):
    row = run_case(Case("tiny", partitions=2, size=64), kafka_broker, 500.0, 1.0, 0, 0)
    assert row.errors == 0
    assert 400 <= row.acked <= 600
    assert row.ack_ms["p99"] >= row.ack_ms["p50"] > 0
    assert row.visible_ms["p99"] >= row.visible_ms["p50"] > 0
    assert row.broker_cpu_s >= 0 and row.broker_wait_ms_per_s >= 0
