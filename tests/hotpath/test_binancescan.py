"""The Binance scanner against its reference, the msgspec parser: the same records, or it declines.

Every check compares ``scan_binance_nb`` (through ``BinanceParser.parse_batch``) with
``BinanceParser.parse`` message by message: on the wire text of the local server (which it must
take, or it is no fast path), on hypothesis-made valid messages (exact floats), on mutations of
them (a declined batch is fine, a different record is not), and on the shapes it must leave to
the reference.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import CLASS_SPOT, empty_records
from fairfeed.hotpath.binancescan import scan_binance_nb
from fairfeed.local.binance import BinanceServer
from fairfeed.providers.binance.parse import BinanceParser
from fairfeed.providers.binance.symbols import stream_name

TS = 1_786_309_548_000_000_000
PRICES = {"BTC-USDT": 64000.0, "ETH-USDT": 3000.0, "SOL-USDT": 150.0, "XRP-USDT": 0.5}
FEEDS = {"": "trade", "agg": "aggTrade"}


def parser(agg: bool) -> BinanceParser:
    kind = "aggTrade" if agg else "trade"
    ids = {stream_name(s, k): i + 1 for i, s in enumerate(PRICES) for k in (kind, "bookTicker")}
    return BinanceParser(ids, 1, 2, CLASS_SPOT, agg=agg)


def scan(agg: bool, messages: list[bytes]) -> tuple[int, np.ndarray]:
    """The scanner alone (no fallback): records written or -1, and the records."""
    p = parser(agg)
    t = p.stream_table()
    out = empty_records(2 * len(messages) + 2)
    data = np.frombuffer(b"".join(messages), np.uint8)
    ends = np.cumsum([len(m) for m in messages], dtype=np.int64)
    n = scan_binance_nb(data, ends, t.names, t.lengths, t.instrument, t.is_book, t.slots, out, 1,
                        TS, 1, 2, CLASS_SPOT, agg)  # fmt: skip
    return n, out[1 : 1 + max(n, 0)]


def reference(agg: bool, messages: list[bytes]) -> tuple[list[int], np.ndarray]:
    p = parser(agg)
    out = empty_records(2 * len(messages) + 2)
    n, results = 0, []
    for m in messages:
        r = p.parse(m, out, n, TS)
        results.append(r)
        n += max(r, 0)
    return results, out[:n]


def compact(stream: str, data: dict) -> bytes:
    return json.dumps({"stream": stream, "data": data}, separators=(",", ":")).encode()


@pytest.mark.parametrize("agg", [False, True])
def test_takes_the_local_servers_wire_text(agg):
    cfg = SimulatorConfig(prices=PRICES, quote_ratio=0.4, seed=3)
    server = BinanceServer("b", cfg)
    kind = FEEDS["agg" if agg else ""]
    streams = {stream_name(s, k) for s in PRICES for k in (kind, "bookTicker")}
    conn = SimpleNamespace(state={"streams": streams, "combined": True,
                                  "pushed": frozenset({kind, "bookTicker"})})  # fmt: skip
    texts = server.format_events(conn, server.market.events(list(range(len(PRICES))), 500))
    messages = [m.encode() for m in texts]
    n, got = scan(agg, messages)
    results, want = reference(agg, messages)
    assert all(r > 0 for r in results)
    assert n == len(want) > len(messages)  # book tickers among them
    assert got.tobytes() == want.tobytes()


# below 2**53 in units of 1e-8: the fast path (a longer mantissa declines, tested below)
_dec = st.decimals(min_value="0", max_value="90071992", places=8, allow_nan=False).map(
    lambda d: f"{d:.8f}"
)


@settings(max_examples=300, deadline=None)
@given(
    price=_dec, qty=_dec, bid=_dec, ask=_dec, tid=st.integers(0, 10**18 - 1),
    T=st.integers(0, 2**43), E=st.integers(0, 2**43), m=st.booleans(), agg=st.booleans(),
    book_first=st.booleans(),
)  # fmt: skip
def test_valid_messages_are_exact(price, qty, bid, ask, tid, T, E, m, agg, book_first):
    trade = {"e": "trade", "E": E, "s": "BTCUSDT", "p": price, "q": qty, "T": T, "m": m, "M": True}
    trade.update({"a": tid, "f": 1, "l": 2} if agg else {"t": tid})
    book = {"u": tid, "s": "ETHUSDT", "b": bid, "B": qty, "a": ask, "A": price}
    messages = [
        compact("btcusdt@" + FEEDS["agg" if agg else ""], trade),
        compact("ethusdt@bookTicker", book),
    ]
    if book_first:
        messages.reverse()
    n, got = scan(agg, messages)
    results, want = reference(agg, messages)
    if all(r > 0 for r in results):
        assert n == len(want) and got.tobytes() == want.tobytes()
    else:  # a zero price: the reference's error
        assert n == -1


def _mutations(draw_from: bytes) -> st.SearchStrategy[bytes]:
    def mutate(args: tuple[int, int, bytes]) -> bytes:
        at, cut, ins = args
        at %= len(draw_from) + 1
        return draw_from[:at] + ins + draw_from[at + cut :]

    return st.tuples(
        st.integers(0, 1000), st.integers(0, 3), st.binary(max_size=3) | st.sampled_from(
            [b"0", b"1", b".", b"-", b"e", b'"', b",", b"}", b" ", b"\\", b"\xc3\xa9", b"E"])
    ).map(mutate)  # fmt: skip


_TRADE = compact("btcusdt@trade", {"e": "trade", "E": 1786309548123, "s": "BTCUSDT",
                                   "t": 4242, "p": "64012.12000000", "q": "0.01230000",
                                   "T": 1786309548122, "m": True, "M": True})  # fmt: skip
_AGG = compact("btcusdt@aggTrade", {"e": "aggTrade", "E": 1786309548123, "s": "BTCUSDT",
                                    "a": 77, "p": "1.5", "q": "2", "f": 100, "l": 105,
                                    "T": 1786309548122, "m": False, "M": True})  # fmt: skip
_BOOK = compact("ethusdt@bookTicker", {"u": 400900217, "s": "ETHUSDT", "b": "25.35190000",
                                       "B": "31.21000000", "a": "25.36520000",
                                       "A": "40.66000000"})  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(
    first=_mutations(_TRADE) | _mutations(_BOOK) | _mutations(_AGG),
    second=_mutations(_BOOK) | _mutations(_TRADE), agg=st.booleans(),
)  # fmt: skip
def test_mutations_decline_or_match(first, second, agg):
    """Whatever a byte inserted, cut or changed does, the scanner declines or writes exactly
    the reference's records (and then the reference took every message)."""
    messages = [first, second]
    n, got = scan(agg, messages)
    results, want = reference(agg, messages)
    if n >= 0:
        assert all(r > 0 for r in results), results
        assert n == len(want) and got.tobytes() == want.tobytes()


def _with(base: bytes, old: bytes, new: bytes) -> bytes:
    assert old in base
    return base.replace(old, new, 1)


@pytest.mark.parametrize(
    "message",
    [
        _with(_TRADE, b'"p":"64012.12000000"', b'"p":"6.401212e4"'),  # exponent
        _with(_TRADE, b'"p":"64012.12000000"', b'"p":64012.12'),  # a JSON number
        _with(_TRADE, b'"p":"64012.12000000"', b'"p":"064012.12"'),  # leading zero
        _with(_TRADE, b'"p":"64012.12000000"', b'"p":"9007199254740993"'),  # over 2**53
        _with(_TRADE, b'"p":"64012.12000000"', b'"p":"1.00000000000000000000001"'),  # 23 decimals
        _with(_TRADE, b'"t":4242', b'"t":4242,"t":4243'),  # a key twice
        _with(_TRADE, b'"s":"BTCUSDT"', b'"s":"BTC\\u0055SDT"'),  # an escape
        _with(_TRADE, b'"s":"BTCUSDT"', b'"s":"BTC\xc3\xa9"'),  # non-ASCII
        _with(_TRADE, b',"m":true', b', "m":true'),  # whitespace
        _with(_TRADE, b'"t":4242', b'"t":1234567890123456789'),  # 19 digits
        _with(_TRADE, b'"T":1786309548122', b'"T":9223372036855'),  # ns overflow int64
        _with(_TRADE, b"btcusdt@trade", b"dogeusdt@trade"),  # unknown stream
        _with(_TRADE, b'"m":true', b'"m":null'),
        _with(_TRADE, b'"M":true', b'"M":{"x":1}'),  # a nested object
        _with(_TRADE, b'"t":4242,', b""),  # no trade id
        _TRADE[:-1] + b',"id":1}',  # something after data
        _with(_BOOK, b'"u":400900217', b'"u":-1'),
    ],
)
def test_declines_what_it_cannot_read_exactly(message):
    n, _ = scan(False, [_TRADE, message])
    assert n == -1
    # and parse_batch still gets the reference's answer message by message
    p = parser(False)
    out = empty_records(8)
    r = p.parse_batch([_TRADE, message], out, 0, TS)
    results, want = reference(False, [_TRADE, message])
    if all(x > 0 for x in results):
        assert r == len(want) and out[:r].tobytes() == want.tobytes()
    else:
        assert r < 0
