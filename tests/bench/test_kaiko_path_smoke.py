"""Keeps the Kaiko gRPC path benchmark from rotting: one tiny round of every client and mode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO))

from bench.kaiko_path import main  # noqa: E402


@pytest.mark.timeout(180)
def test_kaiko_path_tiny(tmp_path):
    out = tmp_path / "kaiko.json"
    # enough messages that the warm-up and the end never fall in one hand-off (up to 8192)
    args = ["--messages", "40000", "--rate", "5000", "--seconds", "0.4", "--rounds", "1"]
    assert main([*args, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    # every client read every message of each call (it fails the run otherwise)
    assert set(res["summary"]) == {
        "adapter / saturation", "grpc-raw / saturation", "adapter / 5k msg/s",
        "grpc-raw / 5k msg/s",
    }  # fmt: skip
    for s in res["summary"].values():
        assert s["runs"] == 1 and s["msgs_per_s"] > 0 and s["cpu_us_per_msg"] > 0
    paced = res["summary"]["adapter / 5k msg/s"]["msgs_per_s"]
    assert paced < 5000 * 1.2  # paced, not flat out
    # 2 calls per client: 40000 + 2000 messages each; many to a DATA frame
    assert res["server"]["calls_done"] == 4 and res["server"]["messages_sent"] == 2 * 42000
    assert res["server"]["frames"] < res["server"]["messages_sent"] / 5
