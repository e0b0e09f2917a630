"""Coinbase Advanced Trade ``market_trades`` messages → records without a Python object per trade.

A ``market_trades`` frame carries many trades (50 at saturation in bench/e2e.py). Decoding it
into msgspec Structs, converting each trade's ISO-8601 time in Python and packing each record
cost ~1.2–2 µs per trade, most of an ingest worker's time (~0.25 µs here).
:func:`scan_market_trades_nb` reads one message straight into records, for the shape Advanced
Trade sends::

    {"channel":"market_trades","client_id":"","timestamp":"…","sequence_num":N,
     "events":[{"type":"update","trades":[{"product_id":"BTC-USD","trade_id":"…",
     "price":"…","size":"…","time":"…","side":"BUY"},…]}]}

``channel`` first (the caller checks that prefix before calling), then the other header keys in
any order before ``events``, an event's ``type`` before its ``trades``, a trade's keys in any
order; no whitespace, no escapes, ASCII only; prices and sizes plain decimal strings,
``trade_id`` a digit string, times ``YYYY-MM-DDTHH:MM:SS[.f…]Z`` with 0 to 9 fraction digits
(exact ns, years 1970–2261).

It is a fast path, never a second parser: anything it is not sure to read exactly as the msgspec
parser (:class:`~fairfeed.providers.coinbase.parse.AdvancedTradeParser`, its reference) would —
a key twice, an escape, an exponent, a number too long to convert exactly, a nested value where
it expects a plain one, a field msgspec would type-check that it does not read (``tickers``,
``type`` at the top), a missing or invalid field, an unknown product, a bad time, too little room
in ``out`` — makes it decline the message, which the caller then parses with the reference.
On success it writes nothing past the records it returns; a declined message may leave records
there (the caller's free space, which the reference then writes as it does).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import (
    KIND_GAP,
    KIND_TRADE,
    NO_INSTRUMENT,
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
)
from fairfeed.hotpath.jsonscan import decimal, int_end, int_value, lookup, string_end

__all__ = ["PREFIX", "iso_ns", "scan_market_trades_nb"]

# What the caller checks before calling (bytes) and the scanner again (array).
PREFIX = b'{"channel":"market_trades",'
_PREFIX = np.frombuffer(PREFIX, np.uint8)


def _word(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8)


# top-level keys
_TIMESTAMP, _SEQUENCE_NUM, _EVENTS = _word("timestamp"), _word("sequence_num"), _word("events")
_CHANNEL, _TYPE, _MESSAGE = _word("channel"), _word("type"), _word("message")
# event keys (``type`` as above)
_TRADES, _TICKERS = _word("trades"), _word("tickers")
_CURRENT_TIME, _HEARTBEAT_COUNTER = _word("current_time"), _word("heartbeat_counter")
_SNAPSHOT = _word("snapshot")
# trade keys, quoted, with their colon
_K_PRODUCT_ID, _K_TRADE_ID = _word('"product_id":'), _word('"trade_id":')
_K_PRICE, _K_SIZE = _word('"price":'), _word('"size":')
_K_TIME, _K_SIDE = _word('"time":'), _word('"side":')
_BUY, _SELL = _word("BUY"), _word("SELL")

# field bits (``seen``): a known key twice declines
_F_PRODUCT, _F_ID, _F_PRICE, _F_SIZE, _F_TIME, _F_SIDE = (1 << k for k in range(6))
_F_TRADE = (1 << 6) - 1  # every trade field
_F_TS, _F_SEQ, _F_EVENTS = 1, 2, 4
_F_TYPE, _F_TRADES = 1, 2

_SECOND = 1_000_000_000
_DAY = 86_400 * _SECOND
_FRACTION_SCALE = np.array([10 ** (9 - k) for k in range(10)], np.int64)  # k fraction digits
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
_FIRST_YEAR, _LAST_YEAR = 1970, 2261  # ns of 2262-04-12 overflow int64


@njit(cache=True)
def _is(data, i, j, word):  # pragma: no cover
    """Whether ``data[i:j]`` is ``word``."""
    if j - i != word.shape[0]:
        return False
    for k in range(word.shape[0]):  # noqa: SIM110 - a loop Numba compiles, not a generator
        if data[i + k] != word[k]:
            return False
    return True


@njit(cache=True)
def _at(data, i, e, word):  # pragma: no cover
    """Whether ``word`` is at ``data[i:]`` with something after it before ``e``."""
    n = word.shape[0]
    if i + n >= e:
        return False
    for k in range(n):  # noqa: SIM110 - a loop Numba compiles, not a generator
        if data[i + k] != word[k]:
            return False
    return True


@njit(cache=True)
def _digits(data, i, n):  # pragma: no cover
    """The value of the ``n`` ASCII digits at ``i``, or -1."""
    v = np.int64(0)
    for k in range(i, i + n):
        c = data[k]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


@njit(cache=True)
def _days_from_civil(y, m, d):  # pragma: no cover
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit(cache=True)
def iso_ns(data, i, j):  # pragma: no cover
    """``data[i:j]`` as ``YYYY-MM-DDTHH:MM:SS[.f…]Z`` (0 to 9 fraction digits) → ns since the
    epoch, exactly as :func:`fairfeed.providers.timestamps.iso_to_ns` (seconds 00–99 included,
    as it takes them); -1 for anything else and for years outside 1970–2261."""
    n = j - i
    if n < 20 or n == 21 or n > 30:
        return -1
    if (data[i + 4] != 45 or data[i + 7] != 45 or data[i + 10] != 84 or data[i + 13] != 58
            or data[i + 16] != 58 or data[j - 1] != 90):  # fmt: skip  # - - T : : Z
        return -1
    y = _digits(data, i, 4)
    mo = _digits(data, i + 5, 2)
    d = _digits(data, i + 8, 2)
    h = _digits(data, i + 11, 2)
    mi = _digits(data, i + 14, 2)
    s = _digits(data, i + 17, 2)
    if y < _FIRST_YEAR or y > _LAST_YEAR or mo < 1 or mo > 12 or d < 1 or h < 0 or h > 23:
        return -1
    if mi < 0 or mi > 59 or s < 0:
        return -1
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if d > _MONTH_DAYS[mo] + (1 if mo == 2 and leap else 0):
        return -1
    ns = _days_from_civil(y, mo, d) * _DAY + (h * 3600 + mi * 60 + s) * _SECOND
    if n > 20:
        if data[i + 19] != 46:  # .
            return -1
        k = n - 21
        f = _digits(data, i + 20, k)
        if f < 0:
            return -1
        ns += f * _FRACTION_SCALE[k]
    return ns


@njit(cache=True)
def _skip_value(data, i, e):  # pragma: no cover
    """End of the plain value at ``i`` (a string, an integer, true, false, null) of a key not
    read; -1 for anything else (an object, an array, a float: declined, not parsed)."""
    c = data[i]
    if c == 34:
        j = string_end(data, i + 1, e)
        return j + 1 if j >= 0 else -1
    if c == 116 and i + 4 <= e and data[i + 1] == 114 and data[i + 2] == 117 \
            and data[i + 3] == 101:  # fmt: skip  # true
        return i + 4
    if c == 102 and i + 5 <= e and data[i + 1] == 97 and data[i + 2] == 108 \
            and data[i + 3] == 115 and data[i + 4] == 101:  # fmt: skip  # false
        return i + 5
    if c == 110 and i + 4 <= e and data[i + 1] == 117 and data[i + 2] == 108 \
            and data[i + 3] == 108:  # fmt: skip  # null
        return i + 4
    if c == 45:  # -
        i += 1
    return int_end(data, i, e)


@njit(cache=True)
def _key(data, i, e):  # pragma: no cover
    """Bounds of the key at ``i`` (``"key":``) and where its value starts, or (-1, -1, -1)."""
    if i >= e or data[i] != 34:
        return -1, -1, -1
    j = string_end(data, i + 1, e)
    if j < 0 or j + 2 >= e or data[j + 1] != 58:  # : and a value after it
        return -1, -1, -1
    return i + 1, j, j + 2


@njit(cache=True)
def _string(data, i, e):  # pragma: no cover
    """End (closing quote) of the string value at ``i``, or -1."""
    if data[i] != 34:
        return -1
    return string_end(data, i + 1, e)


@njit(cache=True)
def _trade(data, i, e, names, lengths, slots, instrument, out, w, keep, ts_prov, ts_receive,
           provider, venue, data_class, side_is_maker):  # fmt: skip  # pragma: no cover
    """Read the trade object at ``i`` into ``out[w]`` (only checked unless ``keep``); the index
    after it, or -1."""
    if i >= e or data[i] != 123:  # {
        return -1
    i += 1
    seen = 0
    row = -1
    tid = np.int64(-1)
    t_ex = np.int64(-1)
    price = size = -1.0
    side = SIDE_UNKNOWN
    while True:
        # The keys as a whole ("key": included) compared in place: no scan for the key's end.
        bit = 0
        if _at(data, i, e, _K_PRODUCT_ID):
            bit = _F_PRODUCT
            i += _K_PRODUCT_ID.shape[0]
            j = _string(data, i, e)
            if j < 0:
                return -1
            row = lookup(data, i + 1, j, names, lengths, slots)
            if row < 0:
                return -1
            i = j + 1
        elif _at(data, i, e, _K_TRADE_ID):
            bit = _F_ID
            i += _K_TRADE_ID.shape[0]
            j = _string(data, i, e)
            if j < 0 or int_end(data, i + 1, j) != j:
                return -1
            tid = int_value(data, i + 1, j)
            i = j + 1
        elif _at(data, i, e, _K_PRICE) or _at(data, i, e, _K_SIZE):
            bit = _F_PRICE if data[i + 1] == 112 else _F_SIZE  # p
            i += _K_PRICE.shape[0] if bit == _F_PRICE else _K_SIZE.shape[0]
            j = _string(data, i, e)
            if j < 0:
                return -1
            x = decimal(data, i + 1, j)
            if x < 0.0:
                return -1
            if bit == _F_PRICE:
                price = x
            else:
                size = x
            i = j + 1
        elif _at(data, i, e, _K_TIME):
            bit = _F_TIME
            i += _K_TIME.shape[0]
            j = _string(data, i, e)
            if j < 0:
                return -1
            t_ex = iso_ns(data, i + 1, j)
            if t_ex < 0:
                return -1
            i = j + 1
        elif _at(data, i, e, _K_SIDE):
            bit = _F_SIDE
            i += _K_SIDE.shape[0]
            j = _string(data, i, e)
            if j < 0:
                return -1
            if _is(data, i + 1, j, _BUY):
                side = SIDE_SELL if side_is_maker else SIDE_BUY  # the maker bought
            elif _is(data, i + 1, j, _SELL):
                side = SIDE_BUY if side_is_maker else SIDE_SELL
            else:
                return -1
            i = j + 1
        else:  # another key (none of the above, or it would have matched): skipped
            k, _, i = _key(data, i, e)
            if k < 0:
                return -1
            i = _skip_value(data, i, e)
            if i < 0:
                return -1
        if bit:
            if seen & bit:
                return -1
            seen |= bit
        if i >= e:
            return -1
        if data[i] == 44:  # ,
            i += 1
            continue
        if data[i] == 125:  # }
            break
        return -1
    if seen != _F_TRADE or not price > 0.0:
        return -1
    if not keep:
        return i + 1
    if w >= out.shape[0]:
        return -1
    r = out[w]
    r.ts_exchange = t_ex
    r.ts_provider = ts_prov
    r.ts_receive = ts_receive
    r.price = price
    r.size = size
    r.sequence = tid
    r.instrument = instrument[row]
    r.provider = provider
    r.venue = venue
    r.kind = KIND_TRADE
    r.data_class = data_class
    r.side = side
    r.flags = 0
    r.reserved = 0
    return i + 1


@njit(cache=True)
def _reverse(words, a, b):  # pragma: no cover
    """Reverse the order of the records ``a`` to ``b - 1`` (``words``: the buffer as int64)."""
    b -= 1
    while a < b:
        for k in range(8):
            x = words[8 * a + k]
            words[8 * a + k] = words[8 * b + k]
            words[8 * b + k] = x
        a += 1
        b -= 1


@njit(cache=True)
def scan_market_trades_nb(data, names, lengths, instrument, slots, out, u8, start, ts_receive,
                          provider, venue, data_class, snapshot, side_is_maker, last_seq,
                          gap_seq, gap_missed):  # fmt: skip  # pragma: no cover
    """Write the records of the ``market_trades`` message ``data`` at ``out[start:]``; returns
    (records written, the message's ``sequence_num``, numbers missed by the gap record written
    or -1 if none), or (-1, 0, -1): declined, parse it with the reference. ``u8`` is ``out`` as
    bytes.

    The connection's numbering: ``last_seq`` (-1: none yet) and the gap not yet written
    (``gap_seq`` -1: none); a gap record is written ahead of the trades as the reference does.
    Trades are written in trade order (the wire lists the newest first); ``snapshot`` events are
    skipped unless ``snapshot``.
    Reference: :meth:`fairfeed.providers.coinbase.parse.AdvancedTradeParser.parse`."""
    declined = (np.int64(-1), np.int64(0), np.int64(-1))
    e = data.shape[0]
    p = _PREFIX.shape[0]
    if e < p + 2:
        return declined
    for k in range(p):
        if data[k] != _PREFIX[k]:
            return declined
    words = u8.view(np.int64)
    i = p
    w = start
    seen = 0
    ts_prov = np.int64(-1)
    seq = np.int64(-1)
    written_gap = np.int64(-1)
    while True:  # "key":value, … }
        k, kj, i = _key(data, i, e)
        if k < 0:
            return declined
        if _is(data, k, kj, _TIMESTAMP):
            if seen & _F_TS:
                return declined
            seen |= _F_TS
            j = _string(data, i, e)
            if j < 0:
                return declined
            ts_prov = iso_ns(data, i + 1, j)
            if ts_prov < 0:
                return declined
            i = j + 1
        elif _is(data, k, kj, _SEQUENCE_NUM):
            if seen & _F_SEQ:
                return declined
            seen |= _F_SEQ
            j = int_end(data, i, e)
            if j < 0:
                return declined
            seq = int_value(data, i, j)
            i = j
        elif _is(data, k, kj, _EVENTS):
            if seen != _F_TS | _F_SEQ:  # the header first (the gap record goes first), once
                return declined
            seen |= _F_EVENTS
            if last_seq >= 0 and seq > last_seq + 1:  # numbers skipped since the last message
                gap_missed = seq - last_seq - 1 + (gap_missed if gap_seq >= 0 else 0)
                gap_seq = seq
            if gap_seq >= 0:
                if w >= out.shape[0]:
                    return declined
                r = out[w]
                r.ts_exchange = 0
                r.ts_provider = ts_prov
                r.ts_receive = ts_receive
                r.price = 0.0
                r.size = float(gap_missed)
                r.sequence = gap_seq
                r.instrument = NO_INSTRUMENT
                r.provider = provider
                r.venue = venue
                r.kind = KIND_GAP
                r.data_class = data_class
                r.side = SIDE_UNKNOWN
                r.flags = 0
                r.reserved = 0
                w += 1
                written_gap = gap_missed
            if data[i] != 91:  # [
                return declined
            i += 1
            if i < e and data[i] == 93:  # ]
                i += 1
            else:
                while True:  # {event}, … ]
                    if i >= e or data[i] != 123:
                        return declined
                    i += 1
                    first = w
                    ev_seen = 0
                    skip = False
                    while True:  # the event's "key":value, … }
                        k, kj, i = _key(data, i, e)
                        if k < 0:
                            return declined
                        if _is(data, k, kj, _TYPE):
                            if ev_seen:  # twice, or after the trades it says whether to keep
                                return declined
                            ev_seen |= _F_TYPE
                            j = _string(data, i, e)
                            if j < 0:
                                return declined
                            # history sent on subscribe: read (so it is valid), not kept
                            skip = not snapshot and _is(data, i + 1, j, _SNAPSHOT)
                            i = j + 1
                        elif _is(data, k, kj, _TRADES):
                            if ev_seen & _F_TRADES:
                                return declined
                            ev_seen |= _F_TRADES
                            if data[i] != 91:  # [
                                return declined
                            i += 1
                            if i < e and data[i] == 93:  # ]
                                i += 1
                            else:
                                while True:  # {trade}, … ]
                                    i = _trade(data, i, e, names, lengths, slots, instrument,
                                               out, w, not skip, ts_prov, ts_receive, provider,
                                               venue, data_class, side_is_maker)  # fmt: skip
                                    if i < 0 or i >= e:
                                        return declined
                                    if not skip:
                                        w += 1
                                    if data[i] == 44:  # ,
                                        i += 1
                                        continue
                                    if data[i] == 93:  # ]
                                        i += 1
                                        break
                                    return declined
                        elif (_is(data, k, kj, _TICKERS) or _is(data, k, kj, _CURRENT_TIME)
                              or _is(data, k, kj, _HEARTBEAT_COUNTER)):  # fmt: skip
                            return declined  # typed by the reference: not ours to judge
                        else:
                            i = _skip_value(data, i, e)
                            if i < 0:
                                return declined
                        if i >= e:
                            return declined
                        if data[i] == 44:  # ,
                            i += 1
                            continue
                        if data[i] == 125:  # }
                            i += 1
                            break
                        return declined
                    _reverse(words, first, w)
                    if i >= e:
                        return declined
                    if data[i] == 44:  # ,
                        i += 1
                        continue
                    if data[i] == 93:  # ]
                        i += 1
                        break
                    return declined
        elif _is(data, k, kj, _CHANNEL) or _is(data, k, kj, _TYPE) or _is(data, k, kj, _MESSAGE):
            return declined  # the channel twice, or typed fields of other messages
        else:
            i = _skip_value(data, i, e)
            if i < 0:
                return declined
        if i >= e:
            return declined
        if data[i] == 44:  # ,
            i += 1
            continue
        if data[i] == 125 and i + 1 == e:  # } and the message ends there
            break
        return declined
    if not seen & _F_EVENTS:
        return declined
    return w - start, seq, written_gap
