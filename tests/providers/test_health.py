"""The health rules the WebSocket base and Kaiko share (fairfeed/providers/health.py)."""

from __future__ import annotations

import numpy as np

from fairfeed.core.config import ProviderConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.records import (
    KIND_HEARTBEAT,
    KIND_STATUS,
    KIND_TRADE,
    RECORD_DTYPE,
    STATUS_CONNECTED,
)
from fairfeed.core.registry import Registry
from fairfeed.providers.base import IngestContext
from fairfeed.providers.health import HEARTBEAT_RECORD_INTERVAL, Health


def make() -> tuple[Health, list[np.ndarray], DictCounters, list[np.ndarray]]:
    emitted: list[np.ndarray] = []
    counters = DictCounters()
    buffered = [np.zeros(1, RECORD_DTYPE)]
    buffered[0]["kind"] = KIND_TRADE
    reg = Registry.build([], [("p", "V1"), ("p", "V2")])
    ctx = IngestContext(ProviderConfig("p", "kraken"), "", (), reg, emitted.append, counters)

    def flush() -> None:
        emitted.extend(buffered)
        buffered.clear()

    return Health(ctx, "p#0", 3, [1, 2], [1, 1], flush), emitted, counters, buffered


def test_status_follows_the_buffered_data_one_record_per_venue() -> None:
    h, emitted, _, buffered = make()
    h.status(STATUS_CONNECTED)
    assert not buffered and emitted[0]["kind"][0] == KIND_TRADE  # data first
    st = emitted[1]
    assert list(st["kind"]) == [KIND_STATUS] * 2 and list(st["flags"]) == [STATUS_CONNECTED] * 2
    assert list(st["venue"]) == [1, 2] and (st["provider"] == 3).all()


def test_heartbeats_all_counted_records_at_most_once_a_second() -> None:
    h, emitted, counters, _ = make()
    for now in (100.0, 100.2, 100.9, 100.0 + HEARTBEAT_RECORD_INTERVAL, 101.5):
        h.heartbeat(now)
    assert counters[Slot.HEARTBEATS] == 5
    beats = [e for e in emitted if e["kind"][0] == KIND_HEARTBEAT]
    assert len(beats) == 2  # at 100.0 and 101.0


def test_connected_counted_once_each_way() -> None:
    h, _, counters, _ = make()
    h.connected(True)
    h.connected(True)
    assert counters[Slot.CONNECTED] == 1
    h.connected(False)
    h.connected(False)
    assert counters[Slot.CONNECTED] == 0


def test_stale_only_beyond_the_limit() -> None:
    assert not Health.stale(now=110.0, last_alive=100.0, stale_after=10.0)
    assert Health.stale(now=110.01, last_alive=100.0, stale_after=10.0)
