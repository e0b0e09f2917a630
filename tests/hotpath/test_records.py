"""The record dtype: one aligned 64-byte cache line, naturally aligned fields, distinct codes."""

from __future__ import annotations

import numpy as np

from fairfeed.core import records as r


def test_record_is_one_aligned_cache_line():
    assert r.RECORD_DTYPE.itemsize == 64
    assert r.RECORD_SIZE == 64
    assert r.RECORD_DTYPE.isalignedstruct
    assert r.RECORD_DTYPE.alignment == 8


def test_fields_are_naturally_aligned_without_holes():
    end = 0
    for name in r.RECORD_DTYPE.names:
        dt, offset = r.RECORD_DTYPE.fields[name][:2]
        assert offset % dt.itemsize == 0, name
        assert offset == end, f"padding hole before {name}"
        end = offset + dt.itemsize
    assert end == 64


def test_required_fields_present():
    required = {
        "ts_exchange": np.int64,
        "ts_provider": np.int64,
        "ts_receive": np.int64,
        "price": np.float64,
        "size": np.float64,
        "sequence": np.int64,
        "instrument": np.uint32,
        "provider": np.uint16,
        "venue": np.uint16,
        "kind": np.uint8,
        "data_class": np.uint8,
        "side": np.uint8,
    }
    for name, dtype in required.items():
        assert r.RECORD_DTYPE.fields[name][0] == np.dtype(dtype), name


def test_codes_are_distinct_and_named():
    health = [r.KIND_GAP, r.KIND_HEARTBEAT, r.KIND_STATUS]
    kinds = [r.KIND_TRADE, r.KIND_BID, r.KIND_ASK, *r.DERIVATIVE_KINDS, *health]
    assert all(k <= r.MAX_MARKET_KIND for k in kinds[:3])
    # derivatives data: an instrument's data, but no market data (no ticks, no fair price)
    assert all(r.MAX_MARKET_KIND < k <= r.MAX_DATA_KIND for k in r.DERIVATIVE_KINDS)
    assert all(k > r.MAX_DATA_KIND for k in health)
    statuses = list(r.STATUS_NAMES)
    assert len(set(statuses)) == len(statuses) and 0 not in statuses
    classes = [r.CLASS_SPOT, r.CLASS_FUTURE, r.CLASS_PERPETUAL, r.CLASS_OPTION]
    sides = [r.SIDE_UNKNOWN, r.SIDE_BUY, r.SIDE_SELL]
    for codes, names in ((kinds, r.KIND_NAMES), (classes, r.CLASS_NAMES), (sides, r.SIDE_NAMES)):
        assert len(set(codes)) == len(codes)
        assert set(names) == set(codes)
        assert len(set(names.values())) == len(names)
        assert all(0 <= c <= 255 for c in codes)  # fit the uint8 fields
    assert 0 not in kinds  # a zeroed record is not a valid event
    assert {v: k for k, v in r.CLASS_CODES.items()} == r.CLASS_NAMES


def test_empty_records_are_zeroed():
    recs = r.empty_records(4)
    assert recs.dtype == r.RECORD_DTYPE
    assert recs.nbytes == 4 * 64
    assert not recs.view(np.uint8).any()
