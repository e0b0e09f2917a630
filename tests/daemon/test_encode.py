"""Ticks and fair-price encoding: grouping, stable order, exact round trip."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    CLASS_PERPETUAL,
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    RECORD_DTYPE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
    empty_records,
)
from fairfeed.core.registry import Registry
from fairfeed.kafka.encode import (
    SCHEMA_VERSION,
    TICK_COLUMNS,
    TickEncoder,
    decode_derivatives,
    decode_fair,
    decode_ticks,
    decode_ticks_records,
    encode_dead_letter,
    encode_ticks,
)

INSTRUMENTS = [("BTC-USD", CLASS_SPOT), ("ETH-USD", CLASS_SPOT), ("BTC-PERP", CLASS_PERPETUAL)]
SOURCES = [("sim-a", "ALPHAX"), ("sim-b", "BETAX"), ("sim-c", "ALPHAX")]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.build(INSTRUMENTS, SOURCES)


def random_batch(registry: Registry, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rec = empty_records(n)
    inst = rng.integers(0, len(registry.instruments), n)
    src = rng.integers(0, len(registry.sources), n)
    rec["instrument"] = inst
    rec["provider"] = [registry.sources[s][0] for s in src]
    rec["venue"] = [registry.sources[s][1] for s in src]
    rec["data_class"] = np.array(registry.instrument_classes)[inst]
    rec["kind"] = rng.choice([KIND_TRADE, KIND_BID, KIND_ASK], n)
    rec["side"] = np.where(rec["kind"] == KIND_TRADE, rng.choice([SIDE_BUY, SIDE_SELL], n), 0)
    rec["price"] = rng.uniform(100, 70_000, n)  # full-precision floats
    rec["size"] = rng.exponential(0.5, n)
    rec["sequence"] = np.where(rng.random(n) < 0.2, SEQ_NONE, np.arange(n) + 2**40)
    base = 1_780_000_000_000_000_000
    rec["ts_exchange"] = base + np.arange(n) * 1000
    rec["ts_provider"] = np.where(rng.random(n) < 0.3, 0, base + np.arange(n) * 1000 + 7)
    rec["ts_receive"] = base + np.arange(n) * 1000 + 123_456
    return rec


def group_key(rec: np.ndarray) -> tuple[int, int, int]:
    return int(rec["instrument"]), int(rec["provider"]), int(rec["venue"])


def test_empty_batch(registry: Registry) -> None:
    assert encode_ticks(empty_records(0), registry) == []


def test_wrong_dtype_rejected(registry: Registry) -> None:
    with pytest.raises(TypeError):
        encode_ticks(np.zeros(3, dtype=np.float64), registry)


def test_value_shape(registry: Registry) -> None:
    rec = empty_records(2)
    rec["instrument"] = registry.instrument_id("BTC-USD")
    rec["provider"] = registry.provider_id("sim-a")
    rec["venue"] = registry.venue_id("ALPHAX")
    rec["data_class"] = CLASS_SPOT
    rec["kind"] = [KIND_TRADE, KIND_BID]
    rec["side"] = [SIDE_BUY, SIDE_UNKNOWN]
    rec["price"] = [65000.5, 64999.25]
    rec["size"] = [0.01, 1.5]
    rec["sequence"] = [7, SEQ_NONE]
    rec["ts_exchange"] = [1, 2]
    rec["ts_provider"] = [3, 4]
    rec["ts_receive"] = [5, 6]
    [(key, value)] = encode_ticks(rec, registry)
    assert key == b"BTC-USD"
    assert orjson.loads(value) == {
        "schema": 1,
        "type": "ticks",
        "instrument": "BTC-USD",
        "provider": "sim-a",
        "venue": "ALPHAX",
        "data_class": "spot",
        "count": 2,
        "kind": [1, 2],
        "price": [65000.5, 64999.25],
        "size": [0.01, 1.5],
        "side": [1, 0],
        "sequence": [7, -1],
        "ts_exchange": [1, 2],
        "ts_provider": [3, 4],
        "ts_receive": [5, 6],
    }
    assert list(orjson.loads(value)) [:7] == [
        "schema", "type", "instrument", "provider", "venue", "data_class", "count"
    ]  # fmt: skip


def test_grouping_and_stable_order(registry: Registry) -> None:
    rec = random_batch(registry, 3000, seed=1)
    msgs = encode_ticks(rec, registry)
    keys = {group_key(r) for r in rec}
    assert len(msgs) == len(keys)  # one message per (instrument, provider, venue)
    seen = set()
    total = 0
    for key, value in msgs:
        msg = decode_ticks(value)
        assert msg["schema"] == SCHEMA_VERSION
        assert key == msg["instrument"].encode()
        gid = (
            registry.instrument_id(msg["instrument"]),
            registry.provider_id(msg["provider"]),
            registry.venue_id(msg["venue"]),
        )
        assert gid not in seen
        seen.add(gid)
        mask = (
            (rec["instrument"] == gid[0]) & (rec["provider"] == gid[1]) & (rec["venue"] == gid[2])
        )
        expected = rec[mask]  # batch order
        assert msg["count"] == len(expected)
        for name in TICK_COLUMNS:
            np.testing.assert_array_equal(msg[name], expected[name], err_msg=name)
        total += msg["count"]
    assert total == len(rec)


def test_round_trip_exact(registry: Registry) -> None:
    rec = random_batch(registry, 1000, seed=2)
    out = np.concatenate(
        [decode_ticks_records(v, registry) for _, v in encode_ticks(rec, registry)]
    )
    order = np.argsort(
        rec["instrument"].astype(np.int64) << 32 | rec["provider"].astype(np.int64) << 16
        | rec["venue"], kind="stable"
    )  # fmt: skip
    expected = rec[order]
    assert out.dtype == RECORD_DTYPE
    assert out.tobytes() == expected.tobytes()  # bit-exact, flags/reserved are zero here


def test_single_group_fast_path(registry: Registry) -> None:
    rec = random_batch(registry, 100, seed=3)
    rec["instrument"], rec["provider"], rec["venue"] = 1, 2, 0
    rec["data_class"] = CLASS_SPOT
    [(key, value)] = encode_ticks(rec, registry)
    assert key == b"ETH-USD"
    np.testing.assert_array_equal(decode_ticks(value)["price"], rec["price"])
    # a non-contiguous view of a batch is fine too
    [(_, value2)] = encode_ticks(rec[::2], registry)
    np.testing.assert_array_equal(decode_ticks(value2)["sequence"], rec["sequence"][::2])


def test_large_group_split_in_order(registry: Registry) -> None:
    rec = random_batch(registry, 50, seed=4)
    rec["instrument"], rec["provider"], rec["venue"] = 0, 0, 0
    rec["data_class"] = CLASS_SPOT
    msgs = TickEncoder(registry, max_records=16).ticks(rec)
    assert [decode_ticks(v)["count"] for _, v in msgs] == [16, 16, 16, 2]
    seq = np.concatenate([decode_ticks(v)["sequence"] for _, v in msgs])
    np.testing.assert_array_equal(seq, rec["sequence"])


def test_derivatives_group_split_and_round_trip_like_ticks(registry: Registry) -> None:
    rec = random_batch(registry, 40, seed=5)
    rec["kind"] = np.resize([KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_OPEN_INTEREST,
                             KIND_LIQUIDATION], 40)  # fmt: skip
    rec["reserved"] = 1_800_000_000
    enc = TickEncoder(registry, max_records=4)
    msgs = enc.derivatives(rec)
    assert enc.counts == [decode_derivatives(v)["count"] for _, v in msgs]
    decoded = [decode_derivatives(v) for _, v in msgs]
    assert all(d["type"] == "derivatives" and "sequence" not in d for d in decoded)
    with pytest.raises(ValueError, match="not a derivatives message"):
        decode_derivatives(enc.ticks(rec[:1])[0][1])
    # per group, in batch order; every record once; prices exact
    for inst, prov, venue in {group_key(r) for r in rec}:
        mine = rec[(rec["instrument"] == inst) & (rec["provider"] == prov)
                   & (rec["venue"] == venue)]  # fmt: skip
        name = registry.instruments[inst]
        got = [d for d in decoded if d["instrument"] == name
               and d["provider"] == registry.providers[prov]]  # fmt: skip
        np.testing.assert_array_equal(np.concatenate([d["price"] for d in got]), mine["price"])
        funding = np.concatenate([d["next_funding_time"] for d in got])
        want = np.where(mine["kind"] == KIND_FUNDING, 1_800_000_000 * 10**9, 0)
        np.testing.assert_array_equal(funding, want)


def test_mixed_data_class_in_group_is_split_not_lost(registry: Registry) -> None:
    rec = random_batch(registry, 6, seed=5)
    rec["instrument"], rec["provider"], rec["venue"] = 0, 0, 0
    rec["data_class"] = [CLASS_SPOT, CLASS_SPOT, CLASS_PERPETUAL, CLASS_PERPETUAL, 1, 1]
    msgs = encode_ticks(rec, registry)
    assert [decode_ticks(v)["data_class"] for _, v in msgs] == ["spot", "perpetual", "spot"]
    out = np.concatenate([decode_ticks_records(v, registry) for _, v in msgs])
    assert out.tobytes() == rec.tobytes()


def test_non_finite_prices_become_null_and_nan(registry: Registry) -> None:
    rec = random_batch(registry, 3, seed=6)
    rec["instrument"], rec["provider"], rec["venue"] = 0, 0, 0
    rec["data_class"] = CLASS_SPOT
    rec["size"][1] = np.nan
    [(_, value)] = encode_ticks(rec, registry)
    assert orjson.loads(value)["size"][1] is None
    assert np.isnan(decode_ticks(value)["size"][1])


def test_fair_messages(registry: Registry) -> None:
    msgs = TickEncoder(registry).fair(
        instruments=np.array([0, 2], np.int32),
        prices=np.array([65000.125, np.nan]),
        sources=np.array([3, 0], np.int32),
        oldest_age_ns=np.array([1_500_000, 0], np.int64),
        ts=1_780_000_000_000_000_000,
    )
    assert [k for k, _ in msgs] == [b"BTC-USD", b"BTC-PERP"]
    first = decode_fair(msgs[0][1])
    assert first == {
        "schema": 1,
        "type": "fair",
        "instrument": "BTC-USD",
        "price": 65000.125,
        "method": "median",
        "sources": 3,
        "oldest_age_ns": 1_500_000,
        "ts": 1_780_000_000_000_000_000,
    }
    assert orjson.loads(msgs[1][1])["price"] is None
    assert np.isnan(decode_fair(msgs[1][1])["price"])
    assert TickEncoder(registry).fair([], [], [], [], 0) == []
    with pytest.raises(ValueError):
        TickEncoder(registry).fair([0, 1], [1.0], [1, 1], [0, 0], 0)


def test_decode_rejects_other_types(registry: Registry) -> None:
    [(_, fair)] = TickEncoder(registry).fair([0], [1.0], [1], [0], 5)
    with pytest.raises(ValueError):
        decode_ticks(fair)
    rec = random_batch(registry, 1)
    [(_, ticks)] = encode_ticks(rec, registry)
    with pytest.raises(ValueError):
        decode_fair(ticks)


def test_fair_methodology_fields(registry: Registry) -> None:
    from fairfeed.hotpath import fairmethods as fm

    n_src = len(registry.sources)
    reasons = np.zeros((2, n_src + 2), np.uint8)  # wider than the registry: capacity
    reasons[0, 0] = fm.REASON_OUTLIER
    reasons[0, 1] = fm.REASON_NO_DATA  # never published
    reasons[0, n_src - 1] = fm.REASON_STALE
    reasons[0, n_src] = fm.REASON_STALE  # beyond the registered sources: ignored
    msgs = TickEncoder(registry).fair(
        [0, 1],
        [65000.5, 3000.0],
        [2, 0],
        [1_000, 9_000],
        7,
        "two_level",
        venues=[2, 0],
        dispersion=[0.0015, np.nan],
        status=[fm.FAIR_OK, fm.FAIR_STALE],
        reasons=reasons,
    )
    first, second = (decode_fair(v) for _, v in msgs)
    assert first["method"] == "two_level" and first["venues"] == 2
    assert first["status"] == "ok" and first["dispersion"] == 0.0015
    assert first["excluded"] == [
        {"source": registry.source_name(0), "reason": "outlier"},
        {"source": registry.source_name(n_src - 1), "reason": "stale"},
    ]
    assert second["status"] == "stale" and second["excluded"] == []
    assert orjson.loads(msgs[1][1])["dispersion"] is None
    assert second["schema"] == 1


def test_dead_letter_of_an_oversized_message_records_its_real_size() -> None:
    """An oversized message is never held whole: its dead letter carries the head the adapter
    kept (or nothing) and the real size it was told."""
    whole = orjson.loads(encode_dead_letter("p", "bad", b"abc", 7))
    assert (whole["size"], whole["truncated"], whole["frame"]) == (3, False, "abc")
    head = orjson.loads(encode_dead_letter("p", "too big", b'{"pad":"xx', 7, size=50 << 20))
    assert (head["size"], head["truncated"], head["frame"]) == (50 << 20, True, '{"pad":"xx')
    none = orjson.loads(encode_dead_letter("p", "too big", b"", 7, size=11 << 20))
    assert (none["size"], none["truncated"], none["frame"]) == (11 << 20, True, "")


def test_fair_marks_and_excluded_marks(registry: Registry) -> None:
    """With mark inputs: the marks used, and each excluded mark after its source's own entry."""
    from fairfeed.hotpath import fairmethods as fm

    n_src = len(registry.sources)
    reasons = np.zeros((2, n_src), np.uint8)
    marks = np.full((2, n_src), fm.REASON_NO_DATA, np.uint8)  # never published
    reasons[0, 1] = fm.REASON_STALE
    marks[0, 0] = fm.REASON_OUTLIER
    marks[0, 1] = fm.REASON_STALE
    marks[1, n_src - 1] = fm.REASON_INCLUDED
    enc = TickEncoder(registry)
    msgs = enc.fair([0, 1], [65000.5, 3000.0], [2, 1], [1, 1], 7, "median", venues=[1, 1],
                    reasons=reasons, marks=[0, 1], mark_reasons=marks)  # fmt: skip
    first, second = (decode_fair(v) for _, v in msgs)
    name = registry.source_name
    assert first["marks"] == 0 and second["marks"] == 1
    assert first["excluded"] == [
        {"source": name(0), "reason": "outlier", "input": "mark"},
        {"source": name(1), "reason": "stale"},
        {"source": name(1), "reason": "stale", "input": "mark"},
    ]
    assert second["excluded"] == []
    # Without mark inputs: no `marks` field, and no mark entries (no columns)
    [(_, plain)] = enc.fair([0], [1.0], [1], [1], 7, reasons=reasons[:1],
                            mark_reasons=marks[:1, :0])  # fmt: skip
    assert "marks" not in decode_fair(plain)
    assert decode_fair(plain)["excluded"] == [{"source": name(1), "reason": "stale"}]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(0, 2**32 - 1),
    st.integers(1, 64),
    st.lists(st.sampled_from([0.0, -0.0, 1e-310, 1e300, float("nan"), float("inf")]), max_size=5),
)
def test_messages_equal_one_json_object_per_group(registry, n, seed, max_records, odd) -> None:
    """Each message is its head and the JSON object of its group's columns, byte for byte as
    orjson writes it (the encoder slices each column's JSON of the whole batch instead)."""
    batch = random_batch(registry, n, seed)
    batch["price"][: len(odd)] = odd[:n]
    enc = TickEncoder(registry, max_records)
    msgs = enc.ticks(batch)
    packed = [(int(r["instrument"]) << 32) | (int(r["provider"]) << 16) | int(r["venue"])
              for r in batch]  # fmt: skip
    order = np.argsort(np.array(packed), kind="stable")
    want = []
    ordered = batch[order]
    keys = [group_key(r) for r in ordered]
    a = 0
    while a < n:
        end = a
        while end < n and keys[end] == keys[a]:
            end += 1
        for lo in range(a, end, max_records):
            part = ordered[lo : min(end, lo + max_records)]
            cols = {c: np.ascontiguousarray(part[c]) for c in TICK_COLUMNS}
            want.append(orjson.dumps(cols, option=orjson.OPT_SERIALIZE_NUMPY)[1:])
        a = end
    assert len(msgs) == len(want) == len(enc.counts)
    for (_key, value), body, count in zip(msgs, want, enc.counts, strict=True):
        _head, _, rest = value.partition(b'"count":')
        assert rest == str(count).encode() + b"," + body
        assert orjson.loads(value)["count"] == count
