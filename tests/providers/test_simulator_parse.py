"""FrameParser: simulator frames → records, and no exception for any input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    CLASS_PERPETUAL,
    KIND_ASK,
    KIND_BID,
    KIND_TRADE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
    empty_records,
)
from fairfeed.providers.simulator.parse import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    FrameParser,
)
from fairfeed.providers.simulator.wire import Error, Subscribed

SYMS = {"BTC-USD": 3, "ETH-USD": 7}
TS = 1_700_000_000_123_456_789


def _dumps(value) -> bytes:
    """JSON bytes; the stdlib encoder, unlike orjson, writes integers beyond 64 bits."""
    return json.dumps(value).encode()


def parser() -> FrameParser:
    return FrameParser(SYMS, provider=2, venue=5, data_class=CLASS_PERPETUAL)


def trade(s="BTC-USD", p=64000.12, q=0.013, side="buy", seq=17, T=10, P=20):
    return {"e": "trade", "s": s, "p": p, "q": q, "side": side, "seq": seq, "T": T, "P": P}


def quote(s="ETH-USD", bp=3000.1, bq=1.5, ap=3000.2, aq=2.5, seq=4, T=30, P=40):
    return {"e": "quote", "s": s, "bp": bp, "bq": bq, "ap": ap, "aq": aq, "seq": seq, "T": T,
            "P": P}  # fmt: skip


def batch(*events) -> bytes:
    return _dumps({"type": "batch", "events": list(events)})


def test_trade_and_quote_records():
    out = empty_records(16)
    p = parser()
    n = p.parse(batch(trade(), quote(), trade(side="sell", p=64001, seq=18)), out, 2, TS)
    assert n == 4
    r = out[2:6]
    assert list(r["kind"]) == [KIND_TRADE, KIND_BID, KIND_ASK, KIND_TRADE]
    assert list(r["side"]) == [SIDE_BUY, SIDE_UNKNOWN, SIDE_UNKNOWN, SIDE_SELL]
    assert list(r["price"]) == [64000.12, 3000.1, 3000.2, 64001.0]
    assert list(r["size"]) == [0.013, 1.5, 2.5, 0.013]
    assert list(r["sequence"]) == [17, 4, 4, 18]
    assert list(r["instrument"]) == [3, 7, 7, 3]
    assert list(r["ts_exchange"]) == [10, 30, 30, 10]
    assert list(r["ts_provider"]) == [20, 40, 40, 20]
    assert (r["ts_receive"] == TS).all()
    assert (r["provider"] == 2).all() and (r["venue"] == 5).all()
    assert (r["data_class"] == CLASS_PERPETUAL).all()
    assert (r["flags"] == 0).all() and (r["reserved"] == 0).all()
    assert (out[:2] == empty_records(2)).all() and (out[6:] == empty_records(10)).all()


def test_batch_of_one_and_empty_batch():
    out = empty_records(4)
    assert parser().parse(batch(trade()), out, 0, TS) == 1
    assert parser().parse(batch(), out, 0, TS) == 0


def test_memoryview_input():
    out = empty_records(4)
    assert parser().parse(memoryview(batch(quote())), out, 0, TS) == 2


def test_control_frames():
    p = parser()
    out = empty_records(4)
    assert p.parse(b'{"type":"heartbeat","ts":5}', out, 0, TS) == HEARTBEAT
    assert p.parse(b'{"type":"subscribed","id":1,"symbols":["BTC-USD"]}', out, 0, TS) == CONTROL
    assert p.control == Subscribed(id=1, symbols=["BTC-USD"])
    assert p.parse(b'{"type":"error","id":2,"message":"unknown symbol X"}', out, 0, TS) == CONTROL
    assert p.control == Error(id=2, message="unknown symbol X")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "truncated"),
        (b"not json", "malformed"),
        (b"\xff\xfe\x00", "malformed"),
        (b"[]", "Expected `object`"),
        (b'{"type":"nope"}', "Invalid value 'nope'"),
        (b'{"type":"batch"}', "missing required field `events`"),
        (_dumps({"type": "batch", "events": [{"e": "trade"}]}), "missing required field"),
        (batch(trade(p="1.0")), "Expected `float`, got `str`"),
        (batch(trade(side="up")), "Invalid enum value 'up'"),
        (batch(trade(seq=1.5)), "Expected `int`"),
        (batch(trade(T=True)), "Expected `int`"),
        (batch(trade(), trade(s="XRP-USD")), "unknown symbol 'XRP-USD'"),
        (batch(quote(T=2**63)), "out of range"),
        (batch(trade(q=1.5)).replace(b"1.5", b"1e400"), "out of range"),
    ],
)
def test_malformed_frames_are_errors(frame, reason):
    p = parser()
    assert p.parse(frame, empty_records(8), 0, TS) == PARSE_ERROR
    assert reason in p.error


def test_need_space():
    p = parser()
    out = empty_records(4)
    frame = batch(trade(), quote(), quote())  # 5 records
    assert p.parse(frame, out, 0, TS) == NEED_SPACE
    assert p.needed == 5
    assert p.parse(batch(trade(), quote()), out, 1, TS) == 3  # fits exactly
    assert p.parse(batch(trade(), quote()), out, 2, TS) == NEED_SPACE


def _check_result(p: FrameParser, data: bytes) -> None:
    out = empty_records(64)
    r = p.parse(data, out, 0, TS)
    assert isinstance(r, int)
    assert r >= 0 or r in (HEARTBEAT, CONTROL, PARSE_ERROR, NEED_SPACE)
    if r == PARSE_ERROR:
        assert p.error
    if r > 0:
        assert set(out[:r]["instrument"]) <= set(SYMS.values())
        assert (out[:r]["ts_receive"] == TS).all()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_any_bytes(data):
    _check_result(parser(), data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)
_field = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["buy", "sell", "BTC-USD", "ETH-USD", "XRP-USD", ""]),
    st.none(),
    st.booleans(),
)
_event = st.fixed_dictionaries(
    {"e": st.sampled_from(["trade", "quote", "x"])},
    optional={k: _field for k in ("s", "p", "q", "side", "seq", "T", "P", "bp", "bq", "ap", "aq")},
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_fuzz_any_json(value):
    _check_result(parser(), _dumps(value))
    _check_result(parser(), _dumps({"type": "batch", "events": [value]}))


@settings(max_examples=500, deadline=None)
@given(st.lists(_event, max_size=20))
def test_fuzz_near_valid_batches(events):
    _check_result(parser(), batch(*events))
