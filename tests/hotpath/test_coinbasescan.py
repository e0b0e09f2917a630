"""The Coinbase Advanced Trade scanner against its reference, the msgspec parser: the same
records and connection state, or it declines.

Every check runs the same messages through ``AdvancedTradeParser.parse`` (the scanner first) and
``AdvancedTradeParser.parse_msgspec`` (the reference alone), each with its own parser, and
compares results, records byte for byte and the connection's numbering (last ``sequence_num``,
the gap not yet written, the gap totals): on the local server's wire text and the real capture
(which the scanner must take, or it is no fast path), on hypothesis-made valid messages, on
broken ones (a declined message is fine, a different record is not), and on the shapes it must
leave to the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import CLASS_SPOT, KIND_GAP, KIND_TRADE, empty_records
from fairfeed.hotpath.coinbasescan import PREFIX, iso_ns
from fairfeed.local.capture import received
from fairfeed.local.coinbase import SEQ_MARK, CoinbaseServer
from fairfeed.providers.coinbase.parse import AdvancedTradeParser
from fairfeed.providers.timestamps import iso_to_ns

TS = 1_786_309_548_000_000_000
SYMS = {"BTC-USD": 3, "ETH-USD": 7, "BTC-USDC": 9}  # BTC-USDC: the -USD twin rule
CAPTURE = Path(__file__).resolve().parents[1] / "data" / "captures" / "COINBASE.jsonl.zst"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Counting(AdvancedTradeParser):
    """The parser, counting the messages its scanner took and declined."""

    __slots__ = ("declined", "taken")

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.taken = self.declined = 0

    def _scan(self, data, out, start, ts_receive):
        n = super()._scan(data, out, start, ts_receive)
        if n >= 0:
            self.taken += 1
        else:
            self.declined += 1
        return n


def state(p: AdvancedTradeParser) -> tuple:
    return p._last_seq, p._pending, p.gaps, p.missed, p.heartbeats


def both(messages: list[bytes], syms=SYMS, room: int = 600, start: int = 1, **kw) -> Counting:
    """Each message through the scanner-first parser and through the reference; every result,
    record and state equal. Returns the scanner-first parser (its counts)."""
    fast = Counting(syms, 2, 5, CLASS_SPOT, **kw)
    ref = AdvancedTradeParser(syms, 2, 5, CLASS_SPOT, **kw)
    out_f, out_r = empty_records(room), empty_records(room)
    for m in messages:
        taken = fast.taken
        guard = np.random.default_rng(len(m)).bytes(room * 64)
        out_f.view(np.uint8)[:] = np.frombuffer(guard, np.uint8)
        rf = fast.parse(m, out_f, start, TS)
        rr = ref.parse_msgspec(m, out_r, start, TS)
        assert rf == rr, (m, fast.error, ref.error)
        if rf > 0:
            assert out_f[start : start + rf].tobytes() == out_r[start : start + rr].tobytes()
        if fast.taken > taken:  # the scanner's records: nothing else of the buffer touched
            raw = out_f.view(np.uint8).tobytes()
            assert raw[: start * 64] == guard[: start * 64]
            assert raw[(start + rf) * 64 :] == guard[(start + rf) * 64 :]
        assert state(fast) == state(ref), m
    return fast


def message(events: list, seq: int = 5, ts: str = "2026-08-09T21:05:48.251397169Z") -> bytes:
    """A compact market_trades message, keys in the wire's order."""
    return json.dumps({"channel": "market_trades", "client_id": "", "timestamp": ts,
                       "sequence_num": seq, "events": events},
                      separators=(",", ":")).encode()  # fmt: skip


def trade(tid="1068572091", side="SELL", price="65083.67", size="0.01034361",
          time="2026-08-09T21:05:48.167634Z", product="BTC-USD") -> dict:  # fmt: skip
    return {"product_id": product, "trade_id": tid, "price": price, "size": size, "time": time,
            "side": side}  # fmt: skip


def update(*trades: dict, kind: str = "update") -> dict:
    return {"type": kind, "trades": list(trades)}


_UPDATE = message([update(trade("12", "BUY", "100.5", "2"), trade("11"))])


# --- what it must take ------------------------------------------------------------------------


def test_takes_a_plain_update_in_trade_order():
    p = both(
        [
            message(
                [update(trade("12", "BUY"), trade("11"), trade("10", time="2026-08-09T21:05:48Z"))]
            )
        ]
    )
    assert (p.taken, p.declined) == (1, 0)
    out = empty_records(8)
    assert p.parse(message([update(trade("12", "BUY"), trade("11"))], seq=6), out, 0, TS) == 4
    assert list(out["sequence"][:4]) == [11, 12, 11, 12]  # oldest first, then the -USDC twins
    assert list(out["instrument"][:4]) == [3, 3, 9, 9]
    assert list(out["kind"][:4]) == [KIND_TRADE] * 4


def test_takes_the_local_servers_wire_text():
    """The local Advanced Trade server's market_trades messages (runs of one product's trades,
    every number of fraction digits it writes) all go through the scanner."""
    prices = {"BTC-USD": 64000.0, "ETH-USD": 3000.0, "SOL-USD": 150.0}
    server = CoinbaseServer("c", SimulatorConfig(prices=prices, quote_ratio=0.3, seed=5),
                            feed="advanced")  # fmt: skip
    conn = SimpleNamespace(state={"channels": {"market_trades": {0, 1, 2}, "ticker": {0, 1}}})
    texts = server.format_events(conn, server.market.events([0, 1, 2], 2000))
    messages = [t.replace(SEQ_MARK, str(i), 1).encode() for i, t in enumerate(texts)]
    trades = [m for m in messages if m.startswith(b'{"channel":"market_trades"')]
    assert len(trades) > 50 and len(trades) < len(messages)  # tickers among them
    syms = {"BTC-USD": 1, "ETH-USD": 2, "SOL-USD": 3}
    p = both(messages, syms=syms, room=4096)
    assert (p.taken, p.declined) == (len(trades), 0)


def _capture() -> list[bytes]:
    return [t.encode() for _, t in received(CAPTURE)[1]]


@pytest.mark.parametrize("snapshot_trades", [False, True])
def test_takes_the_real_capture(snapshot_trades):
    """Every frame of the recorded Advanced Trade connection, in order (market_trades updates
    and snapshots, tickers, heartbeats, l2_data, candles, subscriptions): the same records and
    numbering both ways, and the scanner took every market_trades message."""
    frames = _capture()
    trades = [f for f in frames if f.startswith(b'{"channel":"market_trades"')]
    assert len(trades) > 50
    p = both(frames, syms={"BTC-USD": 1, "ETH-USD": 2}, room=4096,
             snapshot_trades=snapshot_trades)  # fmt: skip
    assert (p.taken, p.declined) == (len(trades), 0)


def test_real_capture_with_numbers_skipped_makes_the_same_gaps():
    """Every third frame dropped: gaps found on any channel, pending ones written by the next
    market_trades message, all as the reference writes them."""
    frames = _capture()
    kept = [f for i, f in enumerate(frames) if i % 3]
    p = both(kept, syms={"BTC-USD": 1, "ETH-USD": 2}, room=4096)
    assert p.gaps > 10 and p.taken > 30


def test_gap_pending_from_a_control_message_is_written_first():
    """A jump seen on a subscriptions answer is written by the next data message."""
    answer = (
        b'{"channel":"subscriptions","client_id":"","timestamp":"2026-08-09T21:05:48Z",'
        b'"sequence_num":9,"events":[{"subscriptions":{"market_trades":["BTC-USD"]}}]}'
    )
    msgs = [
        message([update(trade("1"))], seq=3),
        answer,
        message([update(trade("2"))], seq=10),
        message([update(trade("3"))], seq=14),
    ]
    p = both(msgs)
    assert p.taken == 3 and p.gaps == 2 and p.missed == 5 + 3
    out = empty_records(4)
    q = AdvancedTradeParser(SYMS, 2, 5, CLASS_SPOT)
    for m in msgs[:2]:
        q.parse(m, out, 0, TS)
    assert q._pending == (9, 5)
    assert q.parse(msgs[2], out, 0, TS) == 3  # the gap, the trade and its -USDC twin
    assert out["kind"][0] == KIND_GAP and out["size"][0] == 5.0 and out["sequence"][0] == 9


def test_snapshot_skipped_unless_asked_and_empty_events():
    snap = update(trade("5"), trade("4"), kind="snapshot")
    msgs = [message([snap, update(trade("6"))], seq=1), message([], seq=2),
            message([{"type": "update", "trades": []}], seq=3)]  # fmt: skip
    for flag in (False, True):
        assert both(msgs, snapshot_trades=flag).taken == 3
    assert both(msgs, side_is_maker=False).taken == 3


def test_room_too_small_declines_to_the_reference():
    """NEED_SPACE is the reference's answer, twins counted twice as it counts them."""
    m = message([update(trade("2"), trade("1"))])
    for room in (2, 3, 4, 5):
        both([m], room=room)
        both([m], room=room, syms={"BTC-USD": 3})


# --- hypothesis: valid messages are taken, exactly ----------------------------------------------


def _decimal_text(m: int, k: int) -> str:
    s = str(m).rjust(k + 1, "0")
    return f"{s[:-k]}.{s[-k:]}" if k else s


_exact = st.builds(_decimal_text, st.integers(1, 2**53 - 1), st.integers(0, 22))
_time = st.builds(
    lambda y, mo, d, h, mi, s, f, k: (f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
                                      + (f".{f % 10**k:0{k}d}" if k else "") + "Z"),
    st.integers(1970, 2261), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23),
    st.integers(0, 59), st.integers(0, 99), st.integers(0, 10**9), st.integers(0, 9),
)  # fmt: skip
_trade = st.builds(trade, st.integers(0, 10**18 - 1).map(str), st.sampled_from(["BUY", "SELL"]),
                   _exact, _exact | st.just("0"), _time,
                   st.sampled_from(["BTC-USD", "ETH-USD"]))  # fmt: skip
_event = st.builds(
    lambda k, ts: {"type": k, "trades": ts},
    st.sampled_from(["update", "snapshot", ""]),
    st.lists(_trade, max_size=6),
)
_message = st.builds(lambda ev, seq, ts: message(ev, seq, ts), st.lists(_event, max_size=3),
                     st.integers(0, 30), _time)  # fmt: skip


@FUZZ
@given(st.lists(_message, min_size=1, max_size=4), st.booleans(), st.booleans())
def test_valid_messages_are_taken_and_exact(messages, snapshot_trades, side_is_maker):
    p = both(messages, snapshot_trades=snapshot_trades, side_is_maker=side_is_maker)
    assert (p.taken, p.declined) == (len(messages), 0)


@FUZZ
@given(st.integers(1900, 2300), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
       st.integers(0, 60), st.integers(0, 99), st.integers(0, 10**10), st.integers(0, 10),
       st.sampled_from(["Z", "z", "+00:00", ""]), st.sampled_from(".,"))  # fmt: skip
def test_iso_ns_is_iso_to_ns_or_declines(y, mo, d, h, mi, s, f, k, zone, point):
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
    text += (f"{point}{f % 10**k:0{k}d}" if k else "") + zone
    data = np.frombuffer(text.encode(), np.uint8)
    got = iso_ns(data, 0, len(data))
    try:
        want = iso_to_ns(text)
    except ValueError:
        want = None
    if 1970 <= y <= 2261 and want is not None:
        assert got == want, text
    else:
        assert got == -1, text


# --- hypothesis: anything else, the same or declined ---------------------------------------------


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    def mutate(args: tuple[int, int, bytes]) -> bytes:
        at, cut, ins = args
        at %= len(base) + 1
        return base[:at] + ins + base[at + cut :]

    return st.tuples(
        st.integers(0, 10**4), st.integers(0, 3), st.binary(max_size=3) | st.sampled_from(
            [b"0", b"1", b"9", b".", b"-", b"e", b"E", b'"', b",", b":", b"{", b"}", b"[", b"]",
             b" ", b"\\", b"\\u0041", b"\xc3\xa9", b"Z", b"T", b"null", b"true", b'"x":1,'])
    ).map(mutate)  # fmt: skip


_BASES = [
    _UPDATE,
    message(
        [
            update(trade("7", time="2026-08-09T21:05:48.5Z")),
            update(trade("6", product="ETH-USD"), kind="snapshot"),
        ],
        seq=6,
    ),
    _capture()[0] if CAPTURE.exists() else _UPDATE,  # the recorded snapshot
]


@FUZZ
@given(st.sampled_from(_BASES).flatmap(_mutations), st.sampled_from(_BASES).flatmap(_mutations),
       st.booleans())  # fmt: skip
def test_mutations_decline_or_match(first, second, snapshot_trades):
    """Whatever a byte inserted, cut or changed does, the scanner declines or writes exactly the
    reference's records, with the same numbering after it."""
    both([first, second], snapshot_trades=snapshot_trades, room=300)


def _with(base: bytes, old: bytes, new: bytes) -> bytes:
    assert old in base, old
    return base.replace(old, new, 1)


_T = b'"trade_id":"12"'
_P = b'"price":"100.5"'


@pytest.mark.parametrize(
    "text",
    [
        _with(_UPDATE, _P, b'"price":"1.005e2"'),  # exponent
        _with(_UPDATE, _P, b'"price":100.5'),  # a JSON number
        _with(_UPDATE, _P, b'"price":"0100.5"'),  # leading zero
        _with(_UPDATE, _P, b'"price":"9007199254740993"'),  # over 2**53
        _with(_UPDATE, _P, b'"price":"1.00000000000000000000001"'),  # 23 decimals
        _with(_UPDATE, _P, b'"price":"0"'),  # not a price: the reference's error
        _with(_UPDATE, _P, b'"price":"nan"'),
        _with(_UPDATE, _P, b'"price":"1\\u0030"'),  # an escape
        _with(_UPDATE, _T, b'"trade_id":"1234567890123456789"'),  # 19 digits
        _with(_UPDATE, _T, b'"trade_id":"99999999999999999999"'),  # over int64
        _with(_UPDATE, _T, b'"trade_id":12'),  # a JSON number
        _with(_UPDATE, _T, b'"trade_id":"12","trade_id":"13"'),  # a key twice
        _with(_UPDATE, b'"sequence_num":5', b'"sequence_num":5,"sequence_num":6'),
        _with(_UPDATE, b'"sequence_num":5', b'"sequence_num":"5"'),
        _with(_UPDATE, b'"sequence_num":5', b'"sequence_num":5.0'),
        _with(_UPDATE, b'"sequence_num":5', b'"sequence_num":-5'),
        _with(_UPDATE, b'"events":[', b'"events":[],"events":['),  # the last one counts
        _with(_UPDATE, b'"trades":[', b'"trades":[],"trades":['),
        _with(_UPDATE, b'"client_id":""', b'"channel":"ticker"'),  # the channel twice
        _with(_UPDATE, b'"client_id":""', b'"type":5'),  # msgspec types it
        _with(_UPDATE, b'"client_id":""', b'"client_id":{"a":[1]}'),  # nested, skipped by it
        _with(_UPDATE, b'"type":"update",', b'"tickers":[],"type":"update",'),
        message([{"trades": [trade()], "type": "snapshot"}]),  # type after trades
        _with(_UPDATE, b'"product_id":"BTC-USD"', b'"product_id":"DOGE-USD"'),  # unknown
        _with(_UPDATE, b'"side":"BUY"', b'"side":"buy"'),
        _with(_UPDATE, b'"side":"BUY"', b'"side":"UNKNOWN_ORDER_SIDE"'),
        _with(_UPDATE, b',"side":"BUY"', b""),  # a field missing
        _with(_UPDATE, b"21:05:48.167634Z", b"21:05:48.1676340001Z"),  # 10 digits
        _with(_UPDATE, b"21:05:48.167634Z", b"21:05:48.Z"),
        _with(_UPDATE, b"21:05:48.167634Z", b"21:05:48.167634"),  # no Z
        _with(_UPDATE, b"21:05:48.167634Z", b"21:05:48.167634+00:00"),
        _with(_UPDATE, b"2026-08-09T21:05:48.167634Z", b"2026-02-30T21:05:48.167634Z"),
        _with(_UPDATE, b"2026-08-09T21:05:48.167634Z", b"1969-12-31T23:59:59.9Z"),
        _with(_UPDATE, b"2026-08-09T21:05:48.167634Z", b"2262-08-09T21:05:48Z"),
        _with(_UPDATE, b"2026-08-09T21:05:48.251397169Z", b"2026-08-09 21:05:48Z"),
        _with(_UPDATE, b'"size":"2"', b'"size": "2"'),  # whitespace
        _UPDATE + b" ",
        _UPDATE + b"{}",
        _with(_UPDATE, b'"size":"2"', b'"size":"2","extra":[1]'),
        _with(_UPDATE, b'"timestamp"', b'"time\\u0073tamp"'),  # an escaped key
        _with(_UPDATE, b'"client_id":"",', b'"events":[],"client_id":"",'),  # before the header
        json.dumps(
            {
                "channel": "market_trades",
                "sequence_num": 5,
                "events": [update(trade())],
                "timestamp": "2026-08-09T21:05:48Z",
            },
            separators=(",", ":"),
        ).encode(),  # the header after events
    ],
)
def test_declines_what_it_cannot_read_exactly(text):
    """Each is declined, with the reference's result; a message before it sets a numbering, so
    a gap is at stake too."""
    p = both([message([update(trade("1"))], seq=2), text])
    assert (p.taken, p.declined) == (1, 1), text


@pytest.mark.parametrize(
    "text",
    [
        _with(_UPDATE, b'"type":"update",', b""),  # no type: an update
        _with(_UPDATE, b'"product_id":"BTC-USD"', b'"product_id":"BTC-USDC"'),  # as named
        _with(_UPDATE, b"21:05:48.167634Z", b"21:05:61.167634Z"),  # iso_to_ns takes it
        _with(_UPDATE, b'"size":"2"', b'"size":"2","extra":null,"more":-1,"ok":false'),
        json.dumps(
            {
                "channel": "market_trades",
                "sequence_num": 5,
                "client_id": "",
                "timestamp": "2026-08-09T21:05:48Z",
                "events": [update(trade())],
                "more": 1,
            },
            separators=(",", ":"),
        ).encode(),
        _with(_UPDATE, b'"type":"update",', b'"type":"update","extra":"x",'),
    ],
)
def test_takes_the_variants_it_reads_exactly(text):
    p = both([message([update(trade("1"))], seq=2), text])
    assert (p.taken, p.declined) == (2, 0), text


def test_str_and_memoryview_input():
    """A str (tests, tools) goes to the reference; a memoryview (what the WebSocket base
    passes) through the scanner."""
    p = Counting(SYMS, 2, 5, CLASS_SPOT)
    out = empty_records(8)
    assert p.parse(_UPDATE.decode(), out, 0, TS) == 4
    assert p.taken == 0
    assert p.parse(memoryview(bytearray(_with(_UPDATE, b":5,", b":6,"))), out, 0, TS) == 4
    assert p.taken == 1


def test_what_is_not_market_trades_never_reaches_the_scanner():
    p = Counting(SYMS, 2, 5, CLASS_SPOT)
    out = empty_records(8)
    hb = (b'{"channel":"heartbeats","client_id":"","timestamp":"2026-08-09T21:05:48Z",'
          b'"sequence_num":1,"events":[{"current_time":"2026-08-09 21:05:48.8 +0000 UTC m=+1",'
          b'"heartbeat_counter":3}]}')  # fmt: skip
    assert p.parse(hb, out, 0, TS) == 1
    assert p.parse(_UPDATE.replace(b"market_trades", b"ticker"), out, 0, TS) == 1  # a gap
    assert (p.taken, p.declined) == (0, 0)


def test_warm_up_compiles_what_the_parser_calls():
    """The supervisor's warm-up compiles the scanner for the argument types the parser passes
    (a read-only frame view), so no ingest worker compiles it."""
    from fairfeed.hotpath.coinbasescan import scan_market_trades_nb
    from fairfeed.hotpath.warmup import warm_up

    warm_up()
    compiled = len(scan_market_trades_nb.signatures)
    p = Counting(SYMS, 2, 5, CLASS_SPOT)
    assert p.parse(memoryview(_UPDATE), empty_records(8), 0, TS) == 4
    assert p.taken == 1
    assert len(scan_market_trades_nb.signatures) == compiled


def test_a_byte_view_the_scanners_entry_cannot_take_is_declined():
    """The scanner is called through a typed machine-code entry: a strided byte view never
    reaches it (declined, nothing raised), a contiguous one of any writability does."""
    p = Counting(SYMS, 2, 5, CLASS_SPOT)
    want = empty_records(8)
    assert AdvancedTradeParser(SYMS, 2, 5, CLASS_SPOT).parse_msgspec(_UPDATE, want, 0, TS) == 4
    doubled = bytes(b for c in _UPDATE for b in (c, 32))
    out = empty_records(8)
    assert p._scan(memoryview(doubled)[::2], out, 0, TS) == -1
    for data in (_UPDATE, memoryview(bytearray(_UPDATE))):
        p.reset()
        assert p.parse(data, out, 0, TS) == 4
        assert out[:4].tobytes() == want[:4].tobytes()
    assert p.taken == 2


def test_every_truncation_declines():
    """Each prefix of a message is declined (the reference's error follows). Run with
    NUMBA_BOUNDSCHECK=1 (and a fresh NUMBA_CACHE_DIR) this also shows that no prefix makes the
    scanner read past the end of its bytes."""
    whole = message([update(trade("2"), trade("1")), update(trade("0"), kind="snapshot")])
    p = Counting(SYMS, 2, 5, CLASS_SPOT)
    out = empty_records(16)
    for cut in range(len(PREFIX), len(whole)):
        p.reset()
        assert p._scan(whole[:cut], out, 0, TS) == -1, whole[:cut]
    assert p._scan(whole, out, 0, TS) == 4  # two trades and their -USDC twins
