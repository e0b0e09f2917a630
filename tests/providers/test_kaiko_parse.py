"""KaikoParser and the symbol mapping: units, timestamps, trade ids, and a hypothesis fuzz."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kaikosdk.stream.market_update_v1.response_pb2 import StreamMarketUpdateResponseV1 as Update
from kaikosdk.stream.trades_v1.response_pb2 import StreamTradesResponseV1 as Trade

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_TRADE,
    RECORD_DTYPE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.providers.kaiko import symbols
from fairfeed.providers.kaiko.parse import KaikoParser, trade_sequence
from fairfeed.providers.kaiko.symbols import UNIT_BASE, UNIT_CONTRACTS, UNIT_QUOTE, KaikoSymbols
from fairfeed.providers.parsing import PARSE_ERROR

TABLE = {
    ("cbse", "spot", "btc-usd"): (5, 2, 1, UNIT_BASE, 1.0),
    ("bmex", "perpetual-future", "xbt-usd"): (6, 3, 3, UNIT_QUOTE, 1.0),
    ("okex", "perpetual-future", "btc-usd"): (7, 4, 3, UNIT_CONTRACTS, 0.01),
    ("okex", "future", "btcusd250328"): (8, 4, 2, UNIT_QUOTE, 100.0),
}
TS_EX = 1_700_000_000_123_456_789
TS_COL = 1_700_000_000_223_456_001
TS_EV = 1_700_000_000_323_456_999


def trade(**kw) -> Trade:
    m = Trade(
        exchange=kw.pop("exchange", "cbse"), code=kw.pop("code", "btc-usd"),
        price=kw.pop("price", 64000.5), amount=kw.pop("amount", 0.25),
        side=kw.pop("side", Trade.BUY), id=kw.pop("id", "123456789"), sequence_id="c9x",
    )  # fmt: skip
    setattr(m, "class", kw.pop("kclass", "spot"))
    if kw.pop("ts_ex", True):
        m.ts_exchange.value.FromNanoseconds(TS_EX)
    if kw.pop("ts_col", True):
        m.ts_collection.value.FromNanoseconds(TS_COL)
    m.ts_event.FromNanoseconds(TS_EV)
    assert not kw
    return m


def parse(data: bytes, update: bool = False) -> tuple[int, np.ndarray, KaikoParser]:
    p = KaikoParser(TABLE, provider=9)
    out = np.zeros(4, RECORD_DTYPE)
    r = (p.parse_update if update else p.parse_trade)(data, out, 1, 42)
    return r, out[1], p


def test_trade_fields_at_full_precision():
    r, rec, _ = parse(trade().SerializeToString())
    assert r == 1
    assert rec["kind"] == KIND_TRADE and rec["side"] == SIDE_BUY
    assert (rec["instrument"], rec["venue"], rec["data_class"], rec["provider"]) == (5, 2, 1, 9)
    assert (rec["price"], rec["size"], rec["sequence"]) == (64000.5, 0.25, 123456789)
    assert (rec["ts_exchange"], rec["ts_provider"], rec["ts_receive"]) == (TS_EX, TS_COL, 42)


def test_missing_timestamps_fall_back_or_are_unknown():
    r, rec, _ = parse(trade(ts_ex=False, ts_col=False).SerializeToString())
    assert r == 1 and rec["ts_exchange"] == 0 and rec["ts_provider"] == TS_EV


@pytest.mark.parametrize(
    ("trade_id", "seq"),
    [("42", 42), ("", SEQ_NONE), ("abc-1", SEQ_NONE), ("1" * 30, SEQ_NONE), ("²", SEQ_NONE)],
)
def test_trade_id_becomes_sequence_only_when_numeric(trade_id, seq):
    assert trade_sequence(trade_id) == seq
    r, rec, _ = parse(trade(id=trade_id).SerializeToString())
    assert r == 1 and rec["sequence"] == seq


def test_amount_units_give_base_currency_sizes():
    r, rec, _ = parse(trade(exchange="bmex", kclass="perpetual-future", code="xbt-usd",
                            price=50000.0, amount=1000.0).SerializeToString())  # fmt: skip
    assert r == 1 and rec["size"] == pytest.approx(0.02)  # 1000 USD at 50000
    r, rec, _ = parse(trade(exchange="okex", kclass="perpetual-future", code="btc-usd",
                            amount=30).SerializeToString())  # fmt: skip
    assert r == 1 and rec["size"] == pytest.approx(0.3)  # 30 contracts of 0.01 BTC
    r, rec, _ = parse(trade(exchange="okex", kclass="future", code="btcusd250328",
                            price=50000.0, amount=7).SerializeToString())  # fmt: skip
    assert r == 1 and rec["size"] == pytest.approx(0.014)  # 7 inverse contracts of 100 USD


def test_sell_and_unknown_sides():
    assert parse(trade(side=Trade.SELL).SerializeToString())[1]["side"] == SIDE_SELL
    assert parse(trade(side=Trade.UNKNOWN).SerializeToString())[1]["side"] == SIDE_UNKNOWN


def _update(update_type: int, price: float = 100.0, amount: float = 2.0) -> bytes:
    m = Update(exchange="cbse", code="btc-usd", price=price, amount=amount, update_type=update_type)
    setattr(m, "class", "spot")
    m.ts_exchange.value.FromNanoseconds(TS_EX)
    m.ts_collection.value.FromNanoseconds(TS_COL)
    return m.SerializeToString()


def test_market_updates():
    r, rec, _ = parse(_update(Update.BEST_BID), update=True)
    assert r == 1 and rec["kind"] == KIND_BID and (rec["price"], rec["size"]) == (100.0, 2.0)
    assert rec["sequence"] == SEQ_NONE and rec["ts_provider"] == TS_COL
    r, rec, _ = parse(_update(Update.BEST_ASK), update=True)
    assert r == 1 and rec["kind"] == KIND_ASK
    r, rec, _ = parse(_update(Update.TRADE_SELL), update=True)
    assert r == 1 and rec["kind"] == KIND_TRADE and rec["side"] == SIDE_SELL
    for skipped in (Update.UPDATED_BID, Update.SNAPSHOT, Update.FORCE_SNAPSHOT):
        assert parse(_update(skipped), update=True)[0] == 0
    r, _, p = parse(_update(Update.UNKNOWN), update=True)
    assert r == PARSE_ERROR and "update type" in p.error


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff", "DecodeError"),
        (trade(price=math.nan).SerializeToString(), "bad price"),
        (trade(price=0.0).SerializeToString(), "bad price"),
        (trade(price=-1.0).SerializeToString(), "bad price"),
        (trade(amount=-1.0).SerializeToString(), "bad amount"),
        (trade(amount=math.inf).SerializeToString(), "bad amount"),
        (trade(code="").SerializeToString(), "instrument"),
        (trade(exchange="krkn").SerializeToString(), "instrument"),
        (trade(side=7).SerializeToString(), "side"),
    ],
)
def test_malformed_messages_are_parse_errors(data, reason):
    r, _, p = parse(data)
    assert r == PARSE_ERROR and reason in p.error


def test_out_of_range_timestamp_is_a_parse_error():
    m = trade()
    m.ts_exchange.value.seconds = 10**12
    r, _, p = parse(m.SerializeToString())
    assert r == PARSE_ERROR and "timestamp" in p.error


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_any_bytes_give_records_or_a_counted_error(data, update):
    r, _, _ = parse(data, update)
    assert r in (0, 1, PARSE_ERROR)


_floats = st.floats(allow_nan=True, allow_infinity=True)
_strings = st.sampled_from(["cbse", "spot", "btc-usd", "", "x", "perpetual-future"]) | st.text(
    max_size=8
)


@settings(max_examples=400, deadline=None)
@given(
    exchange=_strings, kclass=_strings, code=_strings, price=_floats, amount=_floats,
    side=st.integers(-5, 12), trade_id=st.text(max_size=25) | st.integers(0, 2**70).map(str),
    secs=st.integers(-(2**40), 2**40), nanos=st.integers(0, 999_999_999), update=st.booleans(),
    utype=st.integers(0, 12),
)  # fmt: skip
def test_fuzz_structured_messages(
    exchange, kclass, code, price, amount, side, trade_id, secs, nanos, update, utype
):
    m = Update(update_type=utype) if update else Trade(side=side)
    m.exchange, m.code, m.price, m.amount, m.id = exchange, code, price, amount, trade_id
    setattr(m, "class", kclass)
    m.ts_exchange.value.seconds, m.ts_exchange.value.nanos = secs, nanos
    r, rec, _ = parse(m.SerializeToString(), update)
    assert r in (0, 1, PARSE_ERROR)
    if r == 1:
        assert (exchange, kclass, code) in TABLE
        assert math.isfinite(rec["price"]) and rec["price"] > 0 and rec["size"] >= 0
        assert rec["ts_exchange"] == secs * 10**9 + nanos >= 0
        assert rec["sequence"] == trade_sequence(trade_id)


def test_symbols_mapping_both_ways():
    s = KaikoSymbols()
    assert s.criteria("COINBASE", "spot", "BTC-USD") == ("cbse", "spot", "btc-usd")
    assert s.criteria("BINANCE", "perpetual", "BTC-USDT-PERP") == (
        "binc", "perpetual-future", "btc-usdt",
    )  # fmt: skip
    assert s.criteria("KRAKEN", "spot", "ETH-USD") == ("krkn", "spot", "eth-usd")
    assert symbols.venue_name("binc") == "BINANCE"
    assert symbols.data_class_of("perpetual-future") == "perpetual"
    assert symbols.canonical_instrument("btc-usdt", "perpetual-future") == "BTC-USDT-PERP"
    assert symbols.canonical_instrument("btc-usd", "spot") == "BTC-USD"
    o = KaikoSymbols(
        overrides={("OKX", "future", "BTC-USD-250328"): "btc-usd-250328-x"},
        amount_units={("OKX", "future", "BTC-USD-250328"): 0.01},
    )
    assert o.criteria("OKX", "future", "BTC-USD-250328") == ("okex", "future", "btc-usd-250328-x")
    assert o.amount_unit("OKX", "future", "BTC-USD-250328") == (UNIT_CONTRACTS, 0.01)
    assert o.amount_unit("OKX", "spot", "BTC-USD") == (UNIT_BASE, 1.0)
    with pytest.raises(KeyError, match="no Kaiko exchange code"):
        s.criteria("NOWHERE", "spot", "BTC-USD")


def test_dated_futures_by_rule_options_only_by_table():
    s = KaikoSymbols()
    # Kaiko's derivatives reference: base, quote and YYMMDD run together (okex btcusd220624)
    assert s.criteria("OKX", "future", "BTC-USD-250328") == ("okex", "future", "btcusd250328")
    assert s.criteria("BINANCE", "future", "ETH-USDT-250627") == (
        "binc", "future", "ethusdt250627",
    )  # fmt: skip
    for dclass, name in (("option", "BTC-USD-250328-60000-C"), ("future", "BTC-USD-THIS-WEEK")):
        with pytest.raises(ValueError, match="give it a code in the provider's `codes` option"):
            s.criteria("OKX", dclass, name)
    t = KaikoSymbols(overrides={("OKX", "future", "BTC-USD-THIS-WEEK"): "btc_usd__this_week"})
    assert t.criteria("OKX", "future", "BTC-USD-THIS-WEEK")[2] == "btc_usd__this_week"
    assert symbols.guess_data_class("BTC-USD-250328") == "future"
    assert symbols.guess_data_class("BTC-USDT-PERP") == "perpetual"
    assert symbols.guess_data_class("BTC-USD") == "spot"


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("base", (UNIT_BASE, 1.0)),
        ("quote", (UNIT_QUOTE, 1.0)),
        (0.01, (UNIT_CONTRACTS, 0.01)),
        ("0.01 base", (UNIT_CONTRACTS, 0.01)),
        ("100 quote", (UNIT_QUOTE, 100.0)),
        (1, (UNIT_BASE, 1.0)),
    ],
)
def test_amount_units_table(unit, expected):
    key = ("OKX", "future", "BTC-USD-250328")
    assert KaikoSymbols(amount_units={key: unit}).amount_unit(*key) == expected


@pytest.mark.parametrize("unit", ["coins", "100 coins", "x quote", 0, -1.0, "1 2 quote", True])
def test_bad_amount_units_are_refused(unit):
    key = ("OKX", "future", "BTC-USD-250328")
    with pytest.raises(ValueError, match="must be 'base', 'quote'"):
        KaikoSymbols(amount_units={key: unit}).amount_unit(*key)
