"""Keeps the fixed-rate benchmark from rotting: a tiny load, then idle, on this tree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO))

from bench.steady import Options, run_steady  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_steady_tiny_load(tmp_path):
    opts = Options(rate=2000.0, seconds=2.0, warmup=0.5)
    # a flush delay of its own (the latency / CPU sweep's option), not the daemon's default
    report = run_steady(opts, out=tmp_path / "steady.json", echo=False, flush_delays=(5.0,))

    assert Path(report["path"]).is_file()
    by = {r["scenario"]: r for r in report["runs"]}
    assert set(by) == {"steady", "baseline", "idle"}
    s = by["steady"]
    assert s["tree"].endswith(" @5ms") and report["options"]["flush_delays"] == [5.0]
    assert s["expected"] > 0 and s["delivered"] == s["expected"], s["notes"]
    assert s["duplicates"] == 0, s["notes"]
    assert s["messages"] > 0 and s["seconds"] > 0
    assert s["cpu_us_per_message"]["total"] > 0
    assert {"supervisor", "ingest-0", "ingest-1", "compute"} <= set(s["cpu_s"])
    assert s["kafka_messages_per_s"] > 0 and s["records_per_message"] >= 1
    assert s["latency_ms"]["p99"] >= s["latency_ms"]["p50"]
    # the daemon's own histograms, the consumer outside it, and the plain producer's floor
    assert {"receive_ring", "ring_kernel", "kernel_kafka", "kafka_ack"} <= set(s["hops_ms"])
    for hop in s["hops_ms"].values():
        assert hop["n"] > 0 and hop["p99"] >= hop["p50"] > 0
    assert s["visible_ms"]["p99"] >= s["visible_ms"]["p50"] > 0
    assert s["kafka_delivered_per_s"] > 0 and s["message_bytes"] > 0
    d = s["plain_during"]  # the broker probe beside the daemon
    assert d["sent"] > 0 and d["acked"] == d["sent"] and d["errors"] == 0
    assert d["ack_ms"]["p99"] >= d["ack_ms"]["p50"] > 0
    p = s["plain"]
    assert p["sent"] > 0 and p["acked"] == p["sent"] and p["errors"] == 0
    assert p["ack_ms"]["p99"] >= p["ack_ms"]["p50"] > 0
    assert p["visible_ms"]["p99"] >= p["visible_ms"]["p50"] > 0
    b = by["baseline"]
    assert b["messages"] > 0 and b["cpu_us_per_message"]["baseline"] > 0
    assert b["visible_ms"]["p99"] >= b["visible_ms"]["p50"] > 0
    i = by["idle"]
    assert i["total_cores"] >= 0 and {"supervisor", "compute"} <= set(i["cpu_s"])
    for r in report["runs"]:
        assert r["notes"] == [], r["notes"]
