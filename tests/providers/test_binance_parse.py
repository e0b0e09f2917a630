"""BinanceParser: exact records, control answers, errors, and hypothesis fuzz."""

from __future__ import annotations

import json

import numpy as np
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
    KIND_TRADE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    empty_records,
)
from fairfeed.providers.binance.parse import BinanceParser
from fairfeed.providers.binance.symbols import (
    split_stream,
    stream_name,
    to_stream_symbol,
    to_symbol,
)
from fairfeed.providers.binance.wire import Ack, Error
from fairfeed.providers.parsing import CONTROL, NEED_SPACE, PARSE_ERROR, PER_MESSAGE

TS = 1_700_000_000_123_456_789
STREAMS = {"btcusdt@trade": 3, "btcusdt@bookTicker": 3, "ethusdt@trade": 4, "ethusdt@bookTicker": 4}
AGG = {"btcusdt@aggTrade": 3, "btcusdt@bookTicker": 3}


def parser(agg: bool = False) -> BinanceParser:
    return BinanceParser(AGG if agg else STREAMS, 1, 2, CLASS_SPOT, agg=agg)


def trade(t=12345, p="64000.12000000", q="0.00100000", m=True, T=1672515782136, E=1672515782140):
    return json.dumps({"stream": "btcusdt@trade", "data": {
        "e": "trade", "E": E, "s": "BTCUSDT", "t": t, "p": p, "q": q, "T": T, "m": m, "M": True,
    }}).encode()  # fmt: skip


def test_symbols():
    assert to_symbol("BTC-USDT") == "BTCUSDT" and to_stream_symbol("btc-usdt") == "btcusdt"
    assert stream_name("ETH-BTC", "aggTrade") == "ethbtc@aggTrade"
    assert split_stream("ethbtc@bookTicker") == ("ethbtc", "bookTicker")
    for bad in ("BTCUSDT", "BTC-", "-USD", "BTC-US-D", "BT C-USD"):
        try:
            to_symbol(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_usdm_futures_symbols():
    assert to_symbol("BTC-USDT-PERP", "usdm") == "BTCUSDT"
    assert to_symbol("ETH-USDT-250328", "usdm") == "ETHUSDT_250328"
    assert stream_name("ETH-USDT-250328", "aggTrade", "usdm") == "ethusdt_250328@aggTrade"
    for bad in ("BTC-USDT", "BTC-USDT-2503", "BTC-USDT-PERPX", "BTC-PERP", "BTC-USDT-25032X"):
        try:
            to_symbol(bad, "usdm")
        except ValueError:
            continue
        raise AssertionError(bad)


def test_usdm_frames_as_documented():
    """USD-M futures payloads exactly as Binance documents them: the book ticker has an event
    type and two times, which the records keep (the spot book ticker has none)."""
    streams = {"bnbusdt@bookTicker": 7, "btcusdt@aggTrade": 8}
    p = BinanceParser(streams, 1, 2, 3, agg=True)
    out = empty_records(4)
    book = {"stream": "bnbusdt@bookTicker", "data": {
        "e": "bookTicker", "u": 400900217, "E": 1568014460893, "T": 1568014460891,
        "s": "BNBUSDT", "b": "25.35190000", "B": "31.21000000", "a": "25.36520000",
        "A": "40.66000000"}}  # fmt: skip
    assert p.parse(json.dumps(book).encode(), out, 0, TS) == 2
    assert out["kind"][:2].tolist() == [KIND_BID, KIND_ASK]
    assert out["ts_exchange"][:2].tolist() == [1568014460891_000_000] * 2
    assert out["ts_provider"][:2].tolist() == [1568014460893_000_000] * 2
    assert out["price"][:2].tolist() == [25.3519, 25.3652]
    assert out["sequence"][:2].tolist() == [400900217] * 2
    agg = {"stream": "btcusdt@aggTrade", "data": {
        "e": "aggTrade", "E": 123456789, "s": "BTCUSDT", "a": 5933014, "p": "0.001",
        "q": "100", "f": 100, "l": 105, "T": 123456785, "m": True}}  # fmt: skip
    assert p.parse(json.dumps(agg).encode(), out, 2, TS) == 1
    r = out[2]
    assert (r["kind"], r["sequence"], r["side"], r["instrument"]) == (KIND_TRADE, 5933014,
                                                                     SIDE_SELL, 8)  # fmt: skip
    assert (r["ts_exchange"], r["ts_provider"]) == (123456785_000_000, 123456789_000_000)


def test_trade_exact_and_taker_side():
    p = parser()
    out = empty_records(4)
    assert p.parse(trade(), out, 1, TS) == 1
    r = out[1]
    assert r["price"] == 64000.12 and r["size"] == 0.001 and r["sequence"] == 12345
    assert r["ts_exchange"] == 1672515782136 * 10**6 and r["ts_provider"] == 1672515782140 * 10**6
    assert r["ts_receive"] == TS and r["kind"] == KIND_TRADE and r["side"] == SIDE_SELL
    assert (r["instrument"], r["provider"], r["venue"], r["data_class"]) == (3, 1, 2, CLASS_SPOT)
    assert p.parse(trade(m=False), out, 0, TS) == 1 and out[0]["side"] == SIDE_BUY


def test_agg_trade_and_book_ticker():
    p = parser(agg=True)
    out = empty_records(4)
    msg = {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 2, "s": "BTCUSDT",
           "a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1,
           "m": False, "M": True}}  # fmt: skip
    assert p.parse(json.dumps(msg).encode(), out, 0, TS) == 1
    assert out[0]["sequence"] == 26129 and out[0]["price"] == 0.01633102
    assert out[0]["side"] == SIDE_BUY and out[0]["ts_exchange"] == 10**6
    data = {"u": 400900217, "s": "BTCUSDT", "b": "25.35190000", "B": "31.21000000"}
    book = {"stream": "btcusdt@bookTicker", "data": {**data, "a": "25.36520000", "A": "40.66"}}
    for agg in (True, False):
        assert parser(agg).parse(json.dumps(book).encode(), out, 1, TS) == 2
        assert out[1]["kind"] == KIND_BID and out[2]["kind"] == KIND_ASK
        assert (out[1]["price"], out[1]["size"], out[2]["price"], out[2]["size"]) == (
            25.3519,
            31.21,
            25.3652,
            40.66,
        )
        assert out[1]["sequence"] == out[2]["sequence"] == 400900217
        assert out[1]["ts_exchange"] == out[1]["ts_provider"] == 0 and out[2]["ts_receive"] == TS


def test_answers_and_errors():
    p = parser()
    out = empty_records(2)
    assert p.parse(b'{"result":null,"id":7}', out, 0, TS) == CONTROL and p.control == Ack(7)
    assert p.parse(b'{"result":["btcusdt@trade"],"id":8}', out, 0, TS) == CONTROL
    nested = b'{"error":{"code":-1003,"msg":"Too many requests"},"id":9}'
    assert p.parse(nested, out, 0, TS) == CONTROL
    assert p.control == Error(9, -1003, "Too many requests")
    flat = b'{"code":2,"msg":"Invalid request: too many parameters","id":1}'
    assert p.parse(flat, out, 0, TS) == CONTROL and p.control.code == 2
    for bad in (
        b"{", b"[]", b"{}", b'{"stream":"btcusdt@trade"}',
        b'{"stream":"dogeusdt@trade","data":{"t":1,"p":"1","q":"1"}}',
        trade(p="nan"), trade(p="0"), trade(q="-1"), trade(p="abc"), trade(t=-5),
        trade(T=2**62),
        b'{"stream":"btcusdt@bookTicker","data":{"u":1,"b":"1","B":"1","a":"inf","A":"1"}}',
    ):  # fmt: skip
        assert p.parse(bad, out, 0, TS) == PARSE_ERROR, bad
        assert p.error
    agg_bad = b'{"stream":"btcusdt@bookTicker","data":{"u":1,"b":"1","B":"1","a":"x","A":"1"}}'
    assert parser(True).parse(agg_bad, out, 0, TS) == PARSE_ERROR
    assert p.parse(trade(), out, 1, TS) == NEED_SPACE and p.needed == 2


_dec = st.decimals(min_value="0.00000001", max_value="99999999", places=8, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    price=_dec, qty=_dec, t=st.integers(0, 2**62), T=st.integers(0, 2**43),
    E=st.integers(0, 2**43), m=st.booleans(), agg=st.booleans(),
)  # fmt: skip
def test_valid_trades_are_exact(price, qty, t, T, E, m, agg):
    p = parser(agg)
    out = empty_records(2)
    data = {"e": "trade", "E": E, "s": "BTCUSDT", "p": str(price), "q": str(qty), "T": T,
            "m": m, "M": True}  # fmt: skip
    data.update({"a": t, "f": 1, "l": 2} if agg else {"t": t})
    stream = "btcusdt@aggTrade" if agg else "btcusdt@trade"
    msg = json.dumps({"stream": stream, "data": data}).encode()
    assert p.parse(msg, out, 0, TS) == 1, p.error
    r = out[0]
    assert r["price"] == float(str(price)) and r["size"] == float(str(qty))
    assert r["sequence"] == t and r["ts_exchange"] == T * 10**6 and r["ts_provider"] == E * 10**6
    assert r["side"] == (SIDE_SELL if m else SIDE_BUY)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=4),
    max_leaves=12,
)
_field = st.one_of(
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.text(max_size=10),
    st.booleans(),
    st.none(),
    _dec.map(str),
)


@settings(max_examples=400, deadline=None)
@given(
    stream=st.sampled_from([*STREAMS, "x@trade", "", "btcusdt@aggTrade"]),
    data=st.dictionaries(st.sampled_from([*list("eEstpqTmMubBaAfl"), "id"]), _field, max_size=12),
    junk=_json, raw=st.binary(max_size=64), agg=st.booleans(),
)  # fmt: skip
def test_fuzz_never_raises(stream, data, junk, raw, agg):
    p = parser(agg)
    out = empty_records(4)
    for msg in (
        json.dumps({"stream": stream, "data": data}).encode(),
        json.dumps(junk).encode(),
        raw,
    ):
        r = p.parse(msg, out, 1, TS)
        assert r in (CONTROL, PARSE_ERROR, 1, 2), r
        if r > 0:
            got = out[1 : 1 + r]
            assert np.isfinite(got["price"]).all() and (got["price"] >= 0).all()
            assert np.isfinite(got["size"]).all() and (got["size"] >= 0).all()
            assert (got["ts_receive"] == TS).all() and (got["sequence"] >= 0).all()


def book(u=400900217, b="25.35190000", B="31.21000000", a="25.36520000", A="40.66000000"):
    return json.dumps({"stream": "ethusdt@bookTicker", "data": {
        "u": u, "s": "ETHUSDT", "b": b, "B": B, "a": a, "A": A,
    }}).encode()  # fmt: skip


def one_by_one(p: BinanceParser, messages: list[bytes]) -> tuple[list[int], np.ndarray]:
    out = empty_records(2 * len(messages) + 1)
    n, results = 1, []
    for m in messages:
        r = p.parse(m, out, n, TS)
        results.append(r)
        n += max(r, 0)
    return results, out[1:n]


def test_batch_equals_one_by_one():
    p = parser()
    messages = [trade(t=1), book(), trade(t=2, m=False), book(u=7, b="0"), trade(t=3)]
    out = empty_records(16)
    assert p.parse_batch(messages, out, 3, TS) == 7
    results, want = one_by_one(parser(), messages)
    assert results == [1, 2, 1, 2, 1]
    assert out[3:10].tobytes() == want.tobytes()
    assert p.parse_batch([], out, 0, TS) == 0


def test_batch_declines_what_is_not_plain_data():
    """Anything but data throughout is left to ``parse``, message by message: an answer, a
    malformed message, an unknown stream, and two objects in one message (valid once joined)."""
    out = empty_records(16)
    ack = b'{"result":null,"id":1}'
    for odd in (ack, trade(p="nan"), b"{", trade().replace(b"btcusdt@", b"x@"),
                trade(t=5) + b"," + trade(t=6), b"", b" "):  # fmt: skip
        assert parser().parse_batch([trade(t=1), odd, trade(t=2)], out, 0, TS) == PER_MESSAGE
    # brackets cannot balance across messages into the same count
    assert parser().parse_batch([trade(t=1) + b"]", b"[" + trade(t=2)], out, 0, TS) == PER_MESSAGE


_message = st.one_of(
    st.builds(trade, t=st.integers(0, 2**40), p=_dec.map(str), q=_dec.map(str), m=st.booleans()),
    st.builds(book, u=st.integers(0, 2**40), b=_dec.map(str), a=_dec.map(str)),
    st.just(b'{"result":null,"id":3}'),
    st.builds(lambda j: json.dumps(j).encode(), _json),
    st.binary(max_size=24),
    st.sampled_from([b",", b"]", b"[", b"},{", b'"', b"{}", b"null"]),
)


@settings(max_examples=400, deadline=None)
@given(messages=st.lists(_message, max_size=6), agg=st.booleans())
def test_batch_oracle(messages, agg):
    """parse_batch writes exactly what parse writes message by message, or declines (then, and
    only then, some message is not plain data)."""
    out = empty_records(2 * len(messages) + 2)
    r = parser(agg).parse_batch(messages, out, 1, TS)
    results, want = one_by_one(parser(agg), messages)
    if r == PER_MESSAGE:
        assert any(x <= 0 for x in results)
    else:
        assert all(x > 0 for x in results)
        assert r == len(want) and out[1 : 1 + r].tobytes() == want.tobytes()


# -- USD-M derivatives streams ----------------------------------------------------------------
DERIV = {"btcusdt@markPrice@1s": 8, "btcusdt@forceOrder": 8, "btcusdt_250328@markPrice@1s": 9}


def deriv_parser() -> BinanceParser:
    return BinanceParser({**DERIV, "btcusdt@aggTrade": 8}, 1, 2, CLASS_PERPETUAL, agg=True)


def test_mark_price_as_documented_is_mark_index_and_funding():
    """Binance's documented ``markPriceUpdate`` payload, exactly."""
    out = empty_records(4)
    msg = {"stream": "btcusdt@markPrice@1s", "data": {
        "e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000",
        "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167",
        "T": 1562306400000}}  # fmt: skip
    p = deriv_parser()
    assert p.parse(json.dumps(msg).encode(), out, 1, TS) == 3, p.error
    r = out[1:4]
    assert r["kind"].tolist() == [KIND_MARK, KIND_INDEX, KIND_FUNDING]
    assert r["price"].tolist() == [11794.15, 11784.62659091, 0.00038167]
    assert r["size"][:2].tolist() == [0.0, 0.0] and np.isnan(r["size"][2])
    assert r["reserved"].tolist() == [0, 0, 1562306400]
    assert (r["ts_exchange"] == 1562305380000 * 10**6).all()
    assert (r["ts_provider"] == 1562305380000 * 10**6).all()
    assert (r["sequence"] == SEQ_NONE).all() and (r["ts_receive"] == TS).all()
    assert (r["instrument"] == 8).all() and (r["data_class"] == CLASS_PERPETUAL).all()


def test_mark_price_of_a_dated_contract_has_no_funding():
    out = empty_records(3)
    msg = {"stream": "btcusdt_250328@markPrice@1s", "data": {
        "e": "markPriceUpdate", "E": 1596095725000, "s": "BTCUSDT_250328",
        "p": "10934.62615417", "P": "10962.17178236", "i": "10933.62615417", "r": "",
        "T": 0}}  # fmt: skip
    p = deriv_parser()
    assert p.parse(json.dumps(msg).encode(), out, 0, TS) == 2, p.error
    assert out["kind"][:2].tolist() == [KIND_MARK, KIND_INDEX]
    assert out["price"][:2].tolist() == [10934.62615417, 10933.62615417]
    assert (out["instrument"][:2] == 9).all()


def test_force_order_as_documented_is_one_liquidation():
    """Binance's documented USD-M ``forceOrder`` payload, exactly."""
    out = empty_records(2)
    msg = {"stream": "btcusdt@forceOrder", "data": {
        "e": "forceOrder", "E": 1568014460893, "o": {
            "s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.014", "p": "9910",
            "ap": "9910", "X": "FILLED", "l": "0.014", "z": "0.014",
            "T": 1568014460893}}}  # fmt: skip
    p = deriv_parser()
    assert p.parse(json.dumps(msg).encode(), out, 0, TS) == 1, p.error
    r = out[0]
    assert (r["kind"], r["price"], r["size"], r["side"]) == (KIND_LIQUIDATION, 9910.0, 0.014,
                                                             SIDE_SELL)  # fmt: skip
    assert r["ts_exchange"] == r["ts_provider"] == 1568014460893 * 10**6
    assert r["sequence"] == SEQ_NONE and r["instrument"] == 8
    msg["data"]["o"].update(S="BUY", z="0")  # nothing filled yet: no print, no error
    assert p.parse(json.dumps(msg).encode(), out, 1, TS) == 0
    msg["data"]["o"].update(S="SIDEWAYS", z="1")
    assert p.parse(json.dumps(msg).encode(), out, 1, TS) == PARSE_ERROR


def test_derivatives_frames_parse_alike_whatever_the_trade_feed():
    msg = json.dumps({"stream": "btcusdt@markPrice@1s", "data": {
        "e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000",
        "i": "11784.62659091", "P": "11784.25641265", "r": "-0.00038167",
        "T": 1562306400000}}).encode()  # fmt: skip
    got = []
    for agg in (False, True):
        out = empty_records(3)
        assert BinanceParser(DERIV, 1, 2, CLASS_PERPETUAL, agg=agg).parse(msg, out, 0, TS) == 3
        got.append(out)
    assert got[0].tobytes() == got[1].tobytes() and got[0]["price"][2] == -0.00038167


_order = st.dictionaries(st.sampled_from(["s", "S", "o", "q", "p", "ap", "X", "z", "T"]), _field,
                         max_size=9)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    stream=st.sampled_from([*DERIV, "btcusdt@aggTrade"]),
    data=st.dictionaries(st.sampled_from(["e", "E", "s", "p", "i", "P", "r", "T", "o"]),
                         _field | _order, max_size=9),
)  # fmt: skip
def test_fuzz_derivatives_never_raise(stream, data):
    p = deriv_parser()
    out = empty_records(4)
    r = p.parse(json.dumps({"stream": stream, "data": data}).encode(), out, 1, TS)
    assert r in (PARSE_ERROR, 0, 1, 2, 3), r
    if r > 0:
        got = out[1 : 1 + r]
        assert np.isfinite(got["price"]).all()
        marks = got[got["kind"] != KIND_FUNDING]
        assert (marks["price"] > 0).all() and (got["ts_receive"] == TS).all()


def test_derivatives_times_beyond_int64_nanoseconds_are_parse_errors():
    """E = 9223372036855 ms is valid JSON and an int64, but not in ns: refused, not raised."""
    p = deriv_parser()
    out = empty_records(4)
    mark = {"e": "markPriceUpdate", "E": 9223372036855, "s": "BTCUSDT", "p": "1.0", "i": "1.0",
            "P": "1.0", "r": "0.0001", "T": 1}  # fmt: skip
    msg = json.dumps({"stream": "btcusdt@markPrice@1s", "data": mark}).encode()
    assert p.parse(msg, out, 0, TS) == PARSE_ERROR and "out of range" in p.error


@settings(max_examples=200, deadline=None)
@given(mark=_dec, index=_dec, rate=st.decimals(-1, 1, places=8), E=st.integers(1, 2**43),
       T=st.integers(1000, 2**41))  # fmt: skip
def test_valid_mark_prices_are_exact(mark, index, rate, E, T):
    p = deriv_parser()
    out = empty_records(3)
    data = {"e": "markPriceUpdate", "E": E, "s": "BTCUSDT", "p": str(mark), "i": str(index),
            "P": str(mark), "r": str(rate), "T": T}  # fmt: skip
    msg = json.dumps({"stream": "btcusdt@markPrice@1s", "data": data}).encode()
    assert p.parse(msg, out, 0, TS) == 3, p.error
    assert out["price"].tolist() == [float(str(mark)), float(str(index)), float(str(rate))]
    assert out["reserved"][2] == T // 1000 and (out["ts_exchange"] == E * 10**6).all()


def test_a_read_holding_a_derivatives_message_goes_message_by_message():
    """The scanner and the batch decode know trades and book tickers only: a read with a mark
    price is declined, and message by message it gives the same records as ever."""
    p = deriv_parser()
    mark = json.dumps({"stream": "btcusdt@markPrice@1s", "data": {
        "e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000",
        "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167",
        "T": 1562306400000}}).encode()  # fmt: skip
    agg = json.dumps({"stream": "btcusdt@aggTrade", "data": {
        "e": "aggTrade", "E": 1562305380001, "s": "BTCUSDT", "a": 5, "p": "11794.1",
        "q": "0.5", "f": 1, "l": 2, "T": 1562305380000, "m": True}}).encode()  # fmt: skip
    out = empty_records(8)
    assert p.parse_batch([agg, mark], out, 0, TS) == PER_MESSAGE
    assert p.parse_batch([agg], out, 0, TS) == 1
    assert p.parse(mark, out, 1, TS) == 3
    assert out["kind"][:4].tolist() == [KIND_TRADE, KIND_MARK, KIND_INDEX, KIND_FUNDING]
