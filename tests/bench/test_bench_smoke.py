"""Keeps the end-to-end benchmark from rotting: both pipelines on a tiny workload."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO))

from bench.e2e import Workload, run_e2e  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_e2e_tiny_workload(tmp_path):
    wl = Workload(events=30_000, seconds=30.0)
    report = run_e2e(wl, repeat=1, out_dir=tmp_path, echo=False)

    assert Path(report["path"]).is_file()
    by_kind = {r["pipeline"]: r for r in report["results"]}
    assert set(by_kind) == {"daemon", "baseline"}
    for kind, r in by_kind.items():
        assert r["completed"], (kind, r["notes"])
        assert r["connections"] == wl.connections(), (kind, r["notes"])
        assert r["events"] == wl.connections() * wl.per_connection(), (kind, r["notes"])
        assert r["expected_records"] >= r["events"], (kind, r["notes"])
        assert r["missing"] == 0, (kind, r["notes"])
        assert r["duplicates"] == 0, (kind, r["notes"])
        assert r["records"] == r["expected_records"], (kind, r["notes"])
        assert r["exit_code"] == 0, (kind, r["notes"])
        assert r["fair_messages"] > 0, kind
        assert r["records_per_s"] > 0 and r["wall_s"] > 0, kind
        assert r["cpu_us_per_record"] > 0, kind
    ratio = report["summary"]["sim"]["ratio"]
    assert ratio["records_per_s"] > 0 and ratio["cpu_us_per_record"] > 0
    assert report["leftovers"] == []


@pytest.mark.timeout(60)
def test_backpressure_bench_runs_both_policies():
    from bench.backpressure import run

    for policy in ("old", "new"):
        r = run(policy, seconds=0.5, rate=500, capacity=64)
        assert r["policy"] == policy and r["emitted"] > 0
        assert 0 <= r["drop_pct"] <= 100 and r["worst_loop_lag_ms"] >= 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_e2e_venue_shapes_tiny_workload(tmp_path):
    wl = Workload(events=20_000, seconds=30.0)
    report = run_e2e(wl, repeat=1, out_dir=tmp_path, echo=False, shapes=("binance", "coinbase"))

    runs = {(r["shape"], r["pipeline"]): r for r in report["results"]}
    # the naive baseline reads no Coinbase: that shape runs the daemon alone
    assert set(runs) == {("binance", "daemon"), ("binance", "baseline"), ("coinbase", "daemon")}
    for key, r in runs.items():
        shaped = replace(wl, shape=key[0])
        assert r["completed"], (key, r["notes"])
        assert r["connections"] == shaped.connections(), (key, r["notes"])
        assert r["events"] == shaped.connections() * shaped.per_connection(), (key, r["notes"])
        assert r["missing"] == 0 and r["duplicates"] == 0, (key, r["notes"])
        assert r["records"] == r["expected_records"] == r["events"], (key, r["notes"])
        assert r["exit_code"] == 0, (key, r["notes"])
        assert r["records_per_s"] > 0 and r["cpu_us_per_record"] > 0, key
    summary = report["summary"]
    assert summary["binance"]["target_records_per_s"] == 650_000
    assert summary["coinbase"]["target_records_per_s"] == 950_000
    assert summary["binance"]["ratio"]["cpu_us_per_record"] > 0
    assert report["leftovers"] == []
