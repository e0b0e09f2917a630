"""KaikoParser and the symbol mapping: units, timestamps, trade ids, and a hypothesis fuzz."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kaikosdk.stream.derivatives_instrument_metrics_v1.response_pb2 import (
    StreamDerivativesInstrumentMetricsResponseV1 as Metric,
)
from kaikosdk.stream.market_update_v1.response_pb2 import StreamMarketUpdateResponseV1 as Update
from kaikosdk.stream.trades_v1.response_pb2 import StreamTradesResponseV1 as Trade

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_TRADE,
    RECORD_DTYPE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.providers.kaiko import symbols
from fairfeed.providers.kaiko.parse import (
    METRIC_COMMODITIES,
    KaikoParser,
    metric_value,
    trade_sequence,
)
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


# --- derivatives instrument metrics ----------------------------------------------------------

PERP = ("binc", "perpetual-future", "btc-usdt")  # linear, base units: TABLE has no such row
METRICS_TABLE = {
    **TABLE,
    PERP: (10, 3, 3, UNIT_BASE, 1.0),
}


def metric(commodity: str, value: str, **kw) -> bytes:
    m = Metric(value=value, commodity=commodity, exchange=kw.pop("exchange", PERP[0]),
               legacy_symbol="BTCUSDT")  # fmt: skip
    if kw.pop("ts_col", True):
        m.ts_collection.FromNanoseconds(TS_COL)
    if kw.pop("ts_ev", True):
        m.ts_event.FromNanoseconds(TS_EV)
    assert not kw
    return m.SerializeToString()


class Metrics:
    """One instrument's metrics parser (the adapter's call) over a 4-record buffer."""

    def __init__(self, key=PERP) -> None:
        self.p = KaikoParser(METRICS_TABLE, provider=9)
        self.parse = self.p.metrics_parser(key)
        self.out = np.zeros(4, RECORD_DTYPE)

    def __call__(self, data: bytes) -> tuple[int, np.ndarray]:
        self.out[:] = 0
        r = self.parse(data, self.out, 1, 42)
        return r, self.out[1 : 1 + max(r, 0)].copy()

    def count(self, data: bytes) -> int:
        """How many records ``data`` gives (or PARSE_ERROR)."""
        return self(data)[0]


def test_metrics_mark_index_and_open_interest_records():
    m = Metrics()
    r, recs = m(metric("mark_price", "64032.5"))
    assert r == 1
    rec = recs[0]
    assert (rec["kind"], rec["price"], rec["size"]) == (KIND_MARK, 64032.5, 0.0)
    assert rec["sequence"] == SEQ_NONE
    assert (rec["instrument"], rec["venue"], rec["data_class"], rec["provider"]) == (10, 3, 3, 9)
    # no venue time in this stream; Kaiko's collection time is the provider's
    assert (rec["ts_exchange"], rec["ts_provider"], rec["ts_receive"]) == (0, TS_COL, 42)
    assert (rec["side"], rec["flags"], rec["reserved"]) == (0, 0, 0)
    r, recs = m(metric("index_price", "64001.25"))
    assert r == 1 and (recs[0]["kind"], recs[0]["price"]) == (KIND_INDEX, 64001.25)
    r, recs = m(metric("open_interest", "1127623"))
    assert r == 1 and (recs[0]["kind"], recs[0]["price"]) == (KIND_OPEN_INTEREST, 0.0)
    assert recs[0]["size"] == 1127623.0 and recs[0]["ts_provider"] == TS_COL


def test_metrics_funding_carries_the_latest_rate_and_predicted_rate():
    m = Metrics()
    # a predicted rate before any rate: kept, it comes with the first rate
    assert m.count(metric("predicted_funding_rate", "-0.0000845044644161")) == 0
    r, recs = m(metric("funding_rate", "-0.0000756735759807"))
    assert r == 1 and recs[0]["kind"] == KIND_FUNDING
    assert (recs[0]["price"], recs[0]["size"]) == (-0.0000756735759807, -0.0000845044644161)
    assert recs[0]["reserved"] == 0  # Kaiko publishes no next funding time
    r, recs = m(metric("predicted_funding_rate", "0.0001"))
    assert r == 1 and (recs[0]["price"], recs[0]["size"]) == (-0.0000756735759807, 0.0001)
    # a rate with no predicted rate published yet: size NaN
    m2 = Metrics()
    r, recs = m2(metric("funding_rate", "1e-05"))
    assert r == 1 and recs[0]["price"] == 1e-05 and math.isnan(recs[0]["size"])


def test_metrics_open_interest_in_contracts_and_quote_units():
    # 30 contracts of 0.01 BTC
    m = Metrics(("okex", "perpetual-future", "btc-usd"))
    r, recs = m(metric("open_interest", "30", exchange="okex"))
    assert r == 1 and recs[0]["size"] == pytest.approx(0.3)
    # inverse contracts of 100 USD: converted at the mark price; before the first mark the
    # open interest waits and is published right after it, with its own time
    m = Metrics(("okex", "future", "btcusd250328"))
    assert m.count(metric("open_interest", "7", exchange="okex", ts_col=False)) == 0
    assert m.count(metric("open_interest", "9", exchange="okex", ts_col=False)) == 0  # newer
    r, recs = m(metric("mark_price", "50000", exchange="okex"))
    assert r == 2 and recs["kind"].tolist() == [KIND_MARK, KIND_OPEN_INTEREST]
    assert recs[1]["size"] == pytest.approx(9 * 100 / 50000) and recs[1]["ts_provider"] == TS_EV
    assert recs[1]["data_class"] == 2 and recs[1]["instrument"] == 8
    r, recs = m(metric("open_interest", "8", exchange="okex"))
    assert r == 1 and recs[0]["size"] == pytest.approx(8 * 100 / 50000)
    assert m.count(metric("mark_price", "40000", exchange="okex")) == 1  # nothing held now


@pytest.mark.parametrize(
    ("commodity", "value"),
    [
        ("price", "64000.5"),  # last traded price: trades come from the trades service
        ("24h_volume", "5270648"),
        ("time_to_expiry", "41504"),
        ("nearby", "true"),
        ("delta", "0.5"),
        ("", "1"),
        ("mark_price", ""),  # not published
        ("mark_price", "NaN"),
        ("funding_rate", "nan"),
        ("open_interest", ""),
    ],
)
def test_metrics_other_commodities_and_missing_values_give_no_record(commodity, value):
    m = Metrics()
    assert m.count(metric(commodity, value)) == 0
    assert m.p.error == ""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff", "DecodeError"),
        (metric("mark_price", "abc"), "not a decimal number"),
        (metric("mark_price", "inf"), "not a decimal number"),
        (metric("mark_price", "1_000"), "not a decimal number"),
        (metric("mark_price", "0x10"), "not a decimal number"),
        (metric("mark_price", " 1"), "not a decimal number"),
        (metric("index_price", "1e999"), "out of range"),
        (metric("mark_price", "0"), "bad mark_price"),
        (metric("index_price", "-5"), "bad index_price"),
        (metric("open_interest", "-1"), "bad open_interest"),
        (metric("mark_price", "1", exchange="okex"), "exchange 'okex' on the call of 'binc'"),
    ],
)
def test_malformed_metrics_are_parse_errors(data, reason):
    m = Metrics()
    r, _ = m(data)
    assert r == PARSE_ERROR and reason in m.p.error


def test_metrics_timestamps_fall_back_and_out_of_range_is_an_error():
    m = Metrics()
    assert m(metric("mark_price", "1", ts_col=False))[1][0]["ts_provider"] == TS_EV
    assert m(metric("mark_price", "1", ts_col=False, ts_ev=False))[1][0]["ts_provider"] == 0
    assert m.count(metric("mark_price", "1", exchange="")) == 1  # none named: the call's
    bad = Metric.FromString(metric("mark_price", "1"))
    bad.ts_collection.seconds = 10**12
    r, _ = m(bad.SerializeToString())
    assert r == PARSE_ERROR and "timestamp" in m.p.error


_values = (
    st.sampled_from(["", "nan", "NaN", "0", "-0", "1e999", "abc", "inf", "1_0", "+.5e-3"])
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.text(max_size=12)
)
_commodities = st.sampled_from([*METRIC_COMMODITIES, "price"]) | st.text(max_size=6)
_message = st.tuples(
    _commodities, _values, st.sampled_from(["binc", "", "okex"]),
    st.integers(-(2**40), 2**40), st.integers(0, 999_999_999),
    st.binary(max_size=40) | st.none(),
)  # fmt: skip
_FUNDING = ("funding_rate", "predicted_funding_rate")


@settings(max_examples=300, deadline=None)
@given(st.lists(_message, max_size=12), st.sampled_from([PERP, ("okex", "future", "btcusd250328")]))
def test_fuzz_metrics_sequences_give_records_or_a_counted_error(messages, key):
    """Any sequence of metrics messages (or bytes) on one call: 0-2 records or PARSE_ERROR per
    message, never an exception; every record is a plausible derivatives record and a funding
    record carries the last rate and predicted rate accepted."""
    m = Metrics(key)
    rate, predicted = None, math.nan
    times = set()  # ts_collection of the messages so far (a held open interest keeps its own)
    for commodity, value, exchange, secs, nanos, raw in messages:
        if raw is not None:
            data = raw
        else:
            msg = Metric(value=value, commodity=commodity, exchange=exchange)
            msg.ts_collection.seconds, msg.ts_collection.nanos = secs, nanos
            data = msg.SerializeToString()
            times.add(secs * 10**9 + nanos)
        r, recs = m(data)
        assert r in (0, 1, 2, PARSE_ERROR)
        if raw is None and r != PARSE_ERROR and commodity in _FUNDING:
            v = metric_value(value)
            if v is not None:
                rate, predicted = (v, predicted) if commodity == _FUNDING[0] else (rate, v)
        for rec in recs:
            assert rec["instrument"] == METRICS_TABLE[key][0] and rec["sequence"] == SEQ_NONE
            assert rec["ts_exchange"] == 0 and rec["ts_receive"] == 42
            assert rec["ts_provider"] in times and rec["ts_provider"] >= 0
            kind = rec["kind"]
            if kind in (KIND_MARK, KIND_INDEX):
                assert math.isfinite(rec["price"]) and rec["price"] > 0 and rec["size"] == 0
            elif kind == KIND_OPEN_INTEREST:
                assert rec["price"] == 0 and math.isfinite(rec["size"]) and rec["size"] >= 0
            else:
                assert kind == KIND_FUNDING and rec["price"] == rate
                assert rec["size"] == predicted or math.isnan(predicted) == math.isnan(rec["size"])
