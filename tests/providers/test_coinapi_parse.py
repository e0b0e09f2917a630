"""CoinAPI symbol mapping and parser: exact records, clocks, sides, control messages, fuzz."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    CLASS_CODES,
    CLASS_PERPETUAL,
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_TRADE,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
    empty_records,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.coinapi import iso7, iso_to_ns_reference
from fairfeed.providers.coinapi.parse import CoinApiParser, uuid_key
from fairfeed.providers.coinapi.symbols import from_symbol_id, to_symbol_id
from fairfeed.providers.coinapi.wire import Error, Reconnect
from fairfeed.providers.parsing import CONTROL, HEARTBEAT, NEED_SPACE, PARSE_ERROR

SYMBOLS = {
    "COINBASE_SPOT_BTC_USD": (0, 1, CLASS_SPOT),
    "KRAKEN_SPOT_BTC_USD": (0, 2, CLASS_SPOT),
    "BINANCE_PERP_BTC_USDT": (1, 3, CLASS_PERPETUAL),
}


def trade(sym="COINBASE_SPOT_BTC_USD", seq=1, side="BUY", tx="2022-03-26T04:08:37.7090941Z",
          tp="2022-03-26T04:08:37.7770919Z", price=44491.07, size=0.00215094) -> bytes:  # fmt: skip
    return json.dumps({
        "type": "trade", "symbol_id": sym, "sequence": seq, "time_exchange": tx,
        "time_coinapi": tp, "uuid": "770C7A3B-7258-4441-8182-83740F3E2457", "price": price,
        "size": size, "taker_side": side,
    }).encode()  # fmt: skip


def quote(sym="BINANCE_PERP_BTC_USDT", seq=1) -> bytes:
    return json.dumps({
        "type": "quote", "symbol_id": sym, "sequence": seq,
        "time_exchange": "2013-09-28T22:40:50.0000001Z",
        "time_coinapi": "2017-03-18T22:42:21.3763342Z",
        "ask_price": 770.000000000, "ask_size": 3252, "bid_price": 760, "bid_size": 124,
    }).encode()  # fmt: skip


# -- symbols ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sid", "expected"),
    [
        ("COINBASE_SPOT_BTC_USD", ("COINBASE", "BTC-USD", "spot")),
        ("BINANCE_PERP_BTC_USDT", ("BINANCE", "BTC-USDT-PERP", "perpetual")),
        ("BINANCEFTS_PERP_ETH_USDT", ("BINANCEFTS", "ETH-USDT-PERP", "perpetual")),
        ("DERIBIT_FTS_BTC_USD_240628", ("DERIBIT", "BTC-USD-240628", "future")),
        ("DERIBIT_OPT_BTC_USD_240628_60000_C", ("DERIBIT", "BTC-USD-240628-60000-C", "option")),
    ],
)
def test_symbol_ids_map_both_ways(sid, expected) -> None:
    assert from_symbol_id(sid) == expected
    assert to_symbol_id(*expected) == sid


def test_symbol_mapping_rejects_what_coinapi_cannot_name() -> None:
    assert to_symbol_id("BINANCE", "BTC-USDT", "perpetual") == "BINANCE_PERP_BTC_USDT"
    for bad in ("COINBASE_IDX_BTC", "COINBASE_SPOT_BTC", "COINBASE", "SPOT_BTC_USD", "X_FTS_A_B"):
        with pytest.raises(ValueError):
            from_symbol_id(bad)
    with pytest.raises(ValueError):
        to_symbol_id("COINBASE", "BTC-USD-240628", "spot")
    with pytest.raises(ValueError):
        to_symbol_id("COIN_BASE", "BTC-USD", "spot")
    with pytest.raises(ValueError):
        to_symbol_id("COINBASE", "BTC-USD", "swap")


def test_parser_from_subscriptions_carries_each_venue_and_class() -> None:
    reg = Registry.build(
        [("BTC-USD", CLASS_CODES["spot"]), ("BTC-USDT-PERP", CLASS_CODES["perpetual"])],
        [("coinapi", "COINBASE"), ("coinapi", "KRAKEN"), ("coinapi", "BINANCE")],
    )
    subs = [
        Subscription.resolve(reg, "coinapi", "COINBASE", "BTC-USD", "spot"),
        Subscription.resolve(reg, "coinapi", "KRAKEN", "BTC-USD", "spot"),
        Subscription.resolve(reg, "coinapi", "BINANCE", "BTC-USDT-PERP", "perpetual"),
    ]
    p = CoinApiParser.for_subscriptions(subs)
    assert p.symbol_ids == ["COINBASE_SPOT_BTC_USD", "KRAKEN_SPOT_BTC_USD", "BINANCE_PERP_BTC_USDT"]
    out = empty_records(4)
    assert p.parse(trade("KRAKEN_SPOT_BTC_USD"), out, 0, 1) == 1
    assert (out[0]["instrument"], out[0]["venue"], out[0]["data_class"]) == (0, 1, CLASS_SPOT)
    assert p.parse(quote(), out, 0, 1) == 2
    assert (out[0]["instrument"], out[0]["venue"], out[0]["data_class"]) == (1, 2, CLASS_PERPETUAL)


# -- messages -----------------------------------------------------------------------------------


def test_trade_is_one_record_with_exact_clocks() -> None:
    p = CoinApiParser(SYMBOLS, provider=7)
    out = empty_records(4)
    assert p.parse(trade(seq=41), out, 1, 1_700_000_000_123_456_789) == 1
    r = out[1]
    assert r["ts_exchange"] == 1648267717709094100  # 7 digits: .7090941 s, no float rounding
    assert r["ts_provider"] == 1648267717777091900
    assert r["ts_receive"] == 1_700_000_000_123_456_789
    assert (r["price"], r["size"]) == (44491.07, 0.00215094)
    assert (r["kind"], r["side"], r["sequence"]) == (KIND_TRADE, SIDE_BUY, 41)
    assert (r["instrument"], r["provider"], r["venue"], r["data_class"]) == (0, 7, 1, CLASS_SPOT)
    assert out[0]["kind"] == 0 and out[2]["kind"] == 0  # nothing written around it


def test_trade_uuid_hash_goes_to_reserved() -> None:
    """The key that deduplicates a trade both sessions of a planned switch deliver."""
    p = CoinApiParser(SYMBOLS, provider=7)
    out = empty_records(8)
    assert p.parse(trade(), out, 0, 1) == 1
    assert int(out[0]["reserved"]) == zlib.crc32(b"770C7A3B-7258-4441-8182-83740F3E2457")
    assert int(out[0]["reserved"]) == uuid_key("770C7A3B-7258-4441-8182-83740F3E2457") != 0
    no_uuid = json.loads(trade())
    del no_uuid["uuid"]
    assert p.parse(json.dumps(no_uuid).encode(), out, 1, 1) == 1
    assert p.parse(quote(), out, 2, 1) == 2
    assert out["reserved"][1:4].tolist() == [0, 0, 0]  # no key: never deduplicated


@pytest.mark.parametrize(
    ("side", "code"),
    [("BUY", SIDE_BUY), ("SELL", SIDE_SELL), ("BUY_ESTIMATED", SIDE_BUY),
     ("SELL_ESTIMATED", SIDE_SELL), ("UNKNOWN", SIDE_UNKNOWN), ("SOMETHING_NEW", SIDE_UNKNOWN)],
)  # fmt: skip
def test_taker_sides(side, code) -> None:
    out = empty_records(3)
    assert CoinApiParser(SYMBOLS, 0).parse(trade(side=side), out, 0, 1) == 1
    assert out[0]["side"] == code


def test_quote_is_a_bid_and_an_ask_record() -> None:
    out = empty_records(3)
    assert CoinApiParser(SYMBOLS, 2).parse(quote(seq=9), out, 0, 5) == 2
    bid, ask = out[0], out[1]
    assert (bid["kind"], bid["price"], bid["size"]) == (KIND_BID, 760.0, 124.0)
    assert (ask["kind"], ask["price"], ask["size"]) == (KIND_ASK, 770.0, 3252.0)
    for r in (bid, ask):
        assert r["ts_exchange"] == 1380408050000000100
        assert r["ts_provider"] == 1489876941376334200
        assert (r["sequence"], r["side"], r["data_class"]) == (9, SIDE_UNKNOWN, CLASS_PERPETUAL)


def test_clock_conversion_matches_a_reference_at_every_precision() -> None:
    p = CoinApiParser(SYMBOLS, 0)
    out = empty_records(3)
    for tx in ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59.5Z", "1999-12-31T00:00:00.1234567Z",
               "2030-01-01T12:34:56.123456789Z"):  # fmt: skip
        assert p.parse(trade(tx=tx, tp=tx), out, 0, 1) == 1
        assert out[0]["ts_exchange"] == out[0]["ts_provider"] == iso_to_ns_reference(tx)
    assert iso7(1648267717709094199) == "2022-03-26T04:08:37.7090941Z"


def test_heartbeats_both_spellings_and_control_messages() -> None:
    p = CoinApiParser(SYMBOLS, 0)
    out = empty_records(3)
    assert p.parse(b'{"type":"hearbeat"}', out, 0, 1) == HEARTBEAT
    assert p.parse(b'{"type":"heartbeat"}', out, 0, 1) == HEARTBEAT
    msg = b'{"type":"reconnect","within_seconds":10,"before_time":"2020-08-06T19:19:09.7035429Z"}'
    assert p.parse(msg, out, 0, 1) == CONTROL
    assert p.control == Reconnect(10.0, "2020-08-06T19:19:09.7035429Z")
    assert p.parse(b'{"type":"error","message":"Invalid API key"}', out, 0, 1) == CONTROL
    assert p.control == Error("Invalid API key")


@pytest.mark.parametrize(
    "frame",
    [b"", b"{", b"[]", b'{"type":"book"}', b'{"type":"trade"}', trade(sym="BITSTAMP_SPOT_BTC_USD"),
     trade(tx="2022-03-26 04:08:37Z"), trade(tx="2022-03-26T04:08"), trade(tp="2022-03-26T04:08:3"),
     trade(tx="2022-13-26T04:08:37.1Z"), trade(tp="2022-03-26T04:08:37.70909x1Z"),
     trade(price="abc"), trade(seq=2**63)],
)  # fmt: skip
def test_malformed_messages_are_parse_errors(frame) -> None:
    p = CoinApiParser(SYMBOLS, 0)
    assert p.parse(frame, empty_records(4), 0, 1) == PARSE_ERROR
    assert p.error


def test_need_space_when_the_buffer_is_nearly_full() -> None:
    p = CoinApiParser(SYMBOLS, 0)
    assert p.parse(quote(), empty_records(4), 2, 1) == NEED_SPACE and p.needed == 3


def test_sequence_gaps_per_type_and_symbol_and_reset() -> None:
    missed: list[int] = []
    p = CoinApiParser(SYMBOLS, 0, on_gap=missed.append)
    out = empty_records(8)
    # Trades and quotes, and two venues of one instrument, are numbered independently.
    for frame in (trade(seq=1), trade("KRAKEN_SPOT_BTC_USD", seq=100), quote(seq=5), trade(seq=2),
                  quote(seq=6), trade(seq=2)):  # fmt: skip
        assert p.parse(frame, out, 0, 1) in (1, 2)
    assert missed == []
    assert p.parse(trade(seq=6), out, 0, 1) == 2
    assert (out[0]["kind"], out[0]["sequence"], out[0]["size"]) == (KIND_GAP, 6, 3.0)
    assert (out[0]["instrument"], out[0]["venue"]) == (0, 1)
    assert out[1]["kind"] == KIND_TRADE and missed == [3]
    p.reset()  # a new connection numbers afresh: not a gap
    assert p.parse(trade(seq=1), out, 0, 1) == 1 and missed == [3]
    assert CoinApiParser(SYMBOLS, 0, check_gaps=False).parse(trade(seq=9), out, 0, 1) == 1


# -- fuzz ---------------------------------------------------------------------------------------

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from([*SYMBOLS, "BUY", "SELL_ESTIMATED", "2022-03-26T04:08:37.7090941Z",
                     "2022-03-26T04:08:37.Z", "9999-99-99T99:99:99Z"]),
)  # fmt: skip
_KEYS = st.sampled_from(["type", "symbol_id", "sequence", "time_exchange", "time_coinapi",
                         "price", "size", "taker_side", "ask_price", "ask_size", "bid_price",
                         "bid_size", "message", "within_seconds", "before_time", "x"])  # fmt: skip
_TYPES = st.sampled_from(["trade", "quote", "hearbeat", "heartbeat", "reconnect", "error", "book"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda t, d: json.dumps({"type": t, **d}).encode(), _TYPES,
              st.dictionaries(_KEYS, _VALUES, max_size=12)),
))  # fmt: skip
def test_fuzz_never_raises(data: bytes) -> None:
    p = CoinApiParser(SYMBOLS, 0)
    out = empty_records(6)
    r = p.parse(data, out, 1, 5)
    assert r in (HEARTBEAT, CONTROL, PARSE_ERROR) or 1 <= r <= 3
    if r > 0:
        kinds = set(out["kind"][1 : 1 + r].tolist())
        assert kinds <= {KIND_TRADE, KIND_BID, KIND_ASK, KIND_GAP}
        assert np.all(out["ts_receive"][1 : 1 + r] == 5)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4_102_444_799_999_999_999))
def test_fuzz_clocks_round_trip_at_100ns(ns: int) -> None:
    text = iso7(ns)
    out = empty_records(3)
    assert CoinApiParser(SYMBOLS, 0).parse(trade(tx=text, tp=text), out, 0, 1) == 1
    assert out[0]["ts_exchange"] == ns - ns % 100 == iso_to_ns_reference(text)
