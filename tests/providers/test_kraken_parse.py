"""KrakenParser: exact records, control messages, errors, and hypothesis fuzz."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_TRADE,
    SEQ_NONE,
    SIDE_BUY,
    SIDE_SELL,
    empty_records,
)
from fairfeed.local.kraken import rfc3339
from fairfeed.providers.kraken.parse import KrakenParser
from fairfeed.providers.kraken.symbols import from_symbol, to_symbol
from fairfeed.providers.kraken.wire import Answer, Other, Pong, Status
from fairfeed.providers.parsing import CONTROL, HEARTBEAT, NEED_SPACE, PARSE_ERROR

TS = 1_700_000_000_123_456_789
SYMBOLS = {"BTC/USD": 5, "MATIC/USD": 6}


def parser() -> KrakenParser:
    return KrakenParser(SYMBOLS, 1, 2, CLASS_SPOT)


def trades(*items: dict, kind: str = "update") -> bytes:
    return json.dumps({"channel": "trade", "type": kind, "data": list(items)}).encode()


def item(symbol="MATIC/USD", side="buy", price=0.5147, qty=6423.46326, trade_id=4665846,
         timestamp="2023-09-25T07:48:36.925533Z") -> dict:  # fmt: skip
    return {"symbol": symbol, "side": side, "price": price, "qty": qty, "ord_type": "limit",
            "trade_id": trade_id, "timestamp": timestamp}  # fmt: skip


def test_symbols():
    assert to_symbol("BTC-USD") == "BTC/USD" and from_symbol("BTC/USD") == "BTC-USD"
    assert from_symbol("XBT/USD") == "BTC-USD" and from_symbol("XDG/EUR") == "DOGE-EUR"
    assert rfc3339(1_695_628_116_925_533_999) == "2023-09-25T07:48:36.925533Z"


def test_trades_exact():
    p = parser()
    out = empty_records(5)
    msg = trades(item(), item(symbol="BTC/USD", side="sell", price=26000.5, qty=0.1,
                              trade_id=9, timestamp="2023-09-25T07:48:37Z"))  # fmt: skip
    assert p.parse(msg, out, 1, TS) == 2
    a, b = out[1], out[2]
    assert (a["price"], a["size"], a["sequence"], a["side"]) == (
        0.5147,
        6423.46326,
        4665846,
        SIDE_BUY,
    )
    assert a["ts_exchange"] == 1_695_628_116_925_533_000 and a["ts_provider"] == 0
    assert a["ts_receive"] == TS and a["kind"] == KIND_TRADE and a["instrument"] == 6
    assert (a["provider"], a["venue"], a["data_class"]) == (1, 2, CLASS_SPOT)
    assert (b["instrument"], b["side"], b["sequence"]) == (5, SIDE_SELL, 9)
    assert b["ts_exchange"] == 1_695_628_117_000_000_000
    assert p.parse(trades(item(), kind="snapshot"), out, 0, TS) == 1
    assert p.parse(msg, out, 4, TS) == NEED_SPACE and p.needed == 2


def test_ticker_exact():
    p = parser()
    out = empty_records(4)
    msg = {"channel": "ticker", "type": "update", "data": [{"symbol": "BTC/USD", "bid": 26000.1,
           "bid_qty": 1.5, "ask": 26000.2, "ask_qty": 0.25, "last": 26000.1, "volume": 10.0,
           "vwap": 1.0, "low": 1.0, "high": 2.0, "change": 0.0, "change_pct": 0.0}]}  # fmt: skip
    assert p.parse(json.dumps(msg).encode(), out, 0, TS) == 2
    assert out[0]["kind"] == KIND_BID and out[1]["kind"] == KIND_ASK
    assert (out[0]["price"], out[0]["size"], out[1]["price"], out[1]["size"]) == (
        26000.1, 1.5, 26000.2, 0.25,
    )  # fmt: skip
    assert out[0]["sequence"] == SEQ_NONE and out[0]["ts_exchange"] == 0 and out[1]["side"] == 0


def test_control_messages_and_errors():
    p = parser()
    out = empty_records(4)
    assert p.parse(b'{"channel":"heartbeat"}', out, 0, TS) == HEARTBEAT
    status = (b'{"channel":"status","type":"update","data":[{"version":"2.0.0","system":'
              b'"online","api_version":"v2","connection_id":1}]}')  # fmt: skip
    assert p.parse(status, out, 0, TS) == CONTROL and p.control == Status("online")
    ack = (b'{"method":"subscribe","result":{"channel":"ticker","snapshot":true,"symbol":'
           b'"BTC/USD"},"success":true,"time_in":"x","time_out":"y","req_id":4}')  # fmt: skip
    assert p.parse(ack, out, 0, TS) == CONTROL
    assert p.control == Answer("subscribe", 4, True, "ticker", "BTC/USD", "")
    err = (b'{"error":"Currency pair not supported X/Y","method":"subscribe","success":false,'
           b'"symbol":"X/Y","req_id":5}')  # fmt: skip
    assert p.parse(err, out, 0, TS) == CONTROL
    assert p.control == Answer("subscribe", 5, False, "", "X/Y", "Currency pair not supported X/Y")
    assert p.parse(b'{"method":"pong","req_id":3}', out, 0, TS) == CONTROL
    assert p.control == Pong(3)
    assert p.parse(b'{"channel":"book","data":[]}', out, 0, TS) == CONTROL
    assert type(p.control) is Other
    for bad in (
        b"{", b"{}", b"[1]", b'{"channel":"trade"}', b'{"method":"subscribe"}',
        trades(item(symbol="DOGE/USD")), trades(item(side="up")), trades(item(price=0)),
        trades(item(price="1.0")), trades(item(qty=-1.0)), trades(item(timestamp="")),
        trades(item(timestamp="2023-09-25 07:48:36Z")), trades(item(trade_id=-1)),
        trades(item(trade_id=2**64)),
        b'{"channel":"ticker","data":[{"symbol":"BTC/USD","bid":1.0,"bid_qty":1.0}]}',
    ):  # fmt: skip
        assert p.parse(bad, out, 0, TS) == PARSE_ERROR, bad
        assert p.error


_price = st.floats(min_value=1e-8, max_value=1e9, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(list(SYMBOLS)), st.booleans(), _price, _price,
            st.integers(0, 2**63 - 1),
            st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
        ),
        min_size=1, max_size=8,
    )
)  # fmt: skip
def test_valid_trades_are_exact(rows):
    p = parser()
    out = empty_records(8)
    items, want = [], []
    for sym, buy, price, qty, tid, dt in rows:
        ts = dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        items.append(item(sym, "buy" if buy else "sell", price, qty, tid, ts))
        ns = calendar.timegm(dt.replace(tzinfo=UTC).timetuple()) * 10**9 + dt.microsecond * 1000
        want.append((SYMBOLS[sym], SIDE_BUY if buy else SIDE_SELL, price, qty, tid, ns))
    assert p.parse(trades(*items), out, 0, TS) == len(rows), p.error
    cols = ("instrument", "side", "price", "size", "sequence", "ts_exchange")
    got = list(zip(*(out[c][: len(rows)].tolist() for c in cols), strict=True))
    assert got == want


_field = st.one_of(
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.text(max_size=10),
    st.booleans(),
    st.none(),
    st.sampled_from([*SYMBOLS, "buy", "sell", "2023-09-25T07:48:36.925533Z"]),
)
_item = st.dictionaries(
    st.sampled_from(
        [
            "symbol",
            "side",
            "price",
            "qty",
            "trade_id",
            "timestamp",
            "bid",
            "bid_qty",
            "ask",
            "ask_qty",
            "system",
        ]
    ),
    _field,
    max_size=11,
)


@settings(max_examples=400, deadline=None)
@given(
    channel=st.sampled_from(["trade", "ticker", "heartbeat", "status", "book", ""]),
    method=st.sampled_from(["", "subscribe", "pong", "ping"]),
    data=st.lists(_item, max_size=3) | st.none() | _field,
    extra=st.dictionaries(
        st.sampled_from(["success", "error", "req_id", "result", "symbol"]), _field, max_size=3
    ),
    raw=st.binary(max_size=64),
)
def test_fuzz_never_raises(channel, method, data, extra, raw):
    p = parser()
    out = empty_records(8)
    msg = {"channel": channel, "method": method, "data": data, **extra}
    for m in (json.dumps(msg).encode(), raw):
        r = p.parse(m, out, 1, TS)
        assert r in (HEARTBEAT, CONTROL, PARSE_ERROR) or 0 <= r <= 6, r
        if r > 0:
            got = out[1 : 1 + r]
            assert np.isfinite(got["price"]).all() and (got["price"] >= 0).all()
            assert np.isfinite(got["size"]).all() and (got["size"] >= 0).all()
            assert (got["ts_receive"] == TS).all()
