"""Plausibility of record values and venue times (hotpath/plausible.py)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from fairfeed.core.records import (
    KIND_ASK,
    KIND_FUNDING,
    KIND_HEARTBEAT,
    KIND_TRADE,
    empty_records,
)
from fairfeed.hotpath.plausible import (
    EARLIEST_NS,
    MAX_CLOCK_DISTANCE_NS,
    check_plausible,
)


def _records(rows: list[tuple[int, float, float]]) -> np.ndarray:
    r = empty_records(len(rows))
    for i, (kind, price, size) in enumerate(rows):
        r[i]["kind"], r[i]["price"], r[i]["size"], r[i]["sequence"] = kind, price, size, i
    return r


@pytest.mark.parametrize(
    ("kind", "price", "size", "kept"),
    [
        (KIND_TRADE, 64000.0, 0.25, True),
        (KIND_TRADE, 2.5e9, 1.0, True),  # BTC in VND
        (KIND_TRADE, 1.5e-9, 6e11, True),  # a meme token
        (KIND_TRADE, 64000.0, 9e18, False),  # the absurd size
        (KIND_TRADE, 1e300, 1.0, False),
        (KIND_TRADE, 64000.0, math.inf, False),
        (KIND_TRADE, math.nan, 1.0, False),
        (KIND_TRADE, 64000.0, -1.0, False),
        (KIND_TRADE, 1e9, 1e7, False),  # 1e16 quote units in one trade
        (KIND_ASK, 0.0, 0.0, True),  # an empty book side
        (KIND_FUNDING, -0.0003, math.nan, True),
        (KIND_FUNDING, 5.0, 0.0001, False),
        (KIND_HEARTBEAT, math.nan, math.inf, True),  # health records carry no values
    ],
)
def test_implausible_values_are_dropped(kind: int, price: float, size: float, kept: bool) -> None:
    r = _records([(KIND_TRADE, 1.0, 1.0), (kind, price, size), (KIND_TRADE, 2.0, 1.0)])
    n, times, dropped = check_plausible(r)
    assert (n, times, dropped) == ((3, 0, 0) if kept else (2, 0, 1))
    # the good ones stay, in order, compacted to the front
    assert r["sequence"][:n].tolist() == ([0, 1, 2] if kept else [0, 2])


def test_implausible_times_are_cleared_and_counted() -> None:
    now = time.time_ns()
    r = empty_records(4)
    r["ts_receive"] = now
    r["ts_exchange"] = [now - 10**9, now + 2 * MAX_CLOCK_DISTANCE_NS, 2024 * 10**6, 0]
    r["ts_provider"] = [now, now, now, EARLIEST_NS - 1]
    assert check_plausible(r) == (4, 3, 0)  # cleared, and kept
    assert r["ts_exchange"].tolist() == [now - 10**9, 0, 0, 0]
    assert r["ts_provider"].tolist() == [now, now, now, 0]
