"""Binance combined-stream messages → records without a Python object per message.

At a steady load of one trade per WebSocket frame, decoding each frame into Python objects (a
msgspec Struct, its floats and ints) and packing the record costs more than everything else the
ingest worker does per frame. :func:`scan_binance_nb` reads the messages of one socket read,
joined into one byte array, straight into records, for the exact shape Binance sends:
``{"stream":"<name>","data":{"<key>":<value>,…}}``, no whitespace, no escapes, ASCII only, numbers
as plain decimal strings (``"64012.12000000"``) and ids and times as plain integers.

It is a fast path, never a second parser: anything it is not sure to read exactly as the msgspec
parser (:class:`~fairfeed.providers.binance.parse.BinanceParser`, its reference) would — another
shape, a key twice, an escape, an exponent, a number too long to convert exactly, a missing or
invalid field, an unknown stream — makes it decline the whole batch (-1), which the caller then
parses with the reference. Decimal strings convert exactly (:func:`.jsonscan.decimal`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE, SIDE_BUY, SIDE_SELL
from fairfeed.hotpath.jsonscan import StreamTable, decimal, int_end, int_value, lookup, string_end

__all__ = ["StreamTable", "scan_binance_nb"]

_MS = 1_000_000
_MAX_MS = (2**63 - 1) // _MS  # a time in ms beyond this overflows ns in int64

_PREFIX = np.frombuffer(b'{"stream":"', np.uint8)
_MIDDLE = np.frombuffer(b'","data":{', np.uint8)

# field bits (``seen``): a known key twice declines
_E, _T, _ID, _P, _Q, _M, _U, _B, _BQ, _A, _AQ, _F, _L = (1 << k for k in range(13))


@njit(cache=True)
def scan_binance_nb(data, ends, names, lengths, instrument, is_book, slots, out, start,
                    ts_receive, provider, venue, data_class, agg):  # fmt: skip  # pragma: no cover
    """Write the records of the messages ``data[ends[k-1]:ends[k]]`` at ``out[start:]``; returns
    how many, or -1 (declined: parse them with the reference). ``agg``: the ``aggTrade`` feed
    (``a`` is then the trade id, or a book ticker's ask price).
    Reference: :meth:`fairfeed.providers.binance.parse.BinanceParser.parse`."""
    w = start
    s = 0
    for mi in range(ends.shape[0]):
        e = ends[mi]
        i = s
        s = e
        if e - i < 24 or w + 2 > out.shape[0]:
            return -1
        for k in range(_PREFIX.shape[0]):
            if data[i + k] != _PREFIX[k]:
                return -1
        i += _PREFIX.shape[0]
        j = string_end(data, i, e)
        if j < 0:
            return -1
        row = lookup(data, i, j, names, lengths, slots)
        if row < 0:
            return -1
        book = is_book[row] != 0
        i = j
        if i + _MIDDLE.shape[0] > e:
            return -1
        for k in range(_MIDDLE.shape[0]):
            if data[i + k] != _MIDDLE[k]:
                return -1
        i += _MIDDLE.shape[0]
        seen = 0
        ev = np.int64(0)
        tv = np.int64(0)
        seq = np.int64(-1)
        upd = np.int64(-1)
        p = q = b = bq = a = aq = -1.0
        maker = False
        v_bool = False
        while True:  # "key":value, … }
            if i >= e or data[i] != 34:
                return -1
            j = string_end(data, i + 1, e)
            if j < 0 or j + 1 >= e or data[j + 1] != 58:  # :
                return -1
            key = data[i + 1] if j == i + 2 else 0  # every field we read has a 1-letter key
            i = j + 2
            if i >= e:
                return -1
            c = data[i]
            bit = 0
            kind = 0  # 1 int, 2 decimal text, 3 bool, 0 skipped
            if key == 69:  # E
                bit, kind = _E, 1
            elif key == 84:  # T
                bit, kind = _T, 1
            elif key == 117:  # u
                bit, kind = _U, 1
            elif key == 112:  # p
                bit, kind = _P, 2
            elif key == 113:  # q
                bit, kind = _Q, 2
            elif key == 98:  # b
                bit, kind = _B, 2
            elif key == 66:  # B
                bit, kind = _BQ, 2
            elif key == 65:  # A
                bit, kind = _AQ, 2
            elif key == 109:  # m
                bit, kind = _M, 3
            elif key == 116 and not agg:  # t
                bit, kind = _ID, 1
            elif key == 97:  # a: the trade id on aggTrade trades, else the ask price
                bit, kind = _A, (1 if agg and not book else 2)
            elif key == 102 and agg:  # f
                bit, kind = _F, 1
            elif key == 108 and agg:  # l
                bit, kind = _L, 1
            if bit:
                if seen & bit:
                    return -1
                seen |= bit
            if kind == 1:
                j = int_end(data, i, e)
                if j < 0:
                    return -1
                v = int_value(data, i, j)
                if key == 69:
                    ev = v
                elif key == 84:
                    tv = v
                elif key == 117:
                    upd = v
                elif key == 116 or key == 97:
                    seq = v
                i = j
            elif kind == 2:
                if c != 34:
                    return -1
                j = string_end(data, i + 1, e)
                if j < 0:
                    return -1
                x = decimal(data, i + 1, j)
                if x < 0.0:
                    return -1
                if key == 112:
                    p = x
                elif key == 113:
                    q = x
                elif key == 98:
                    b = x
                elif key == 66:
                    bq = x
                elif key == 97:
                    a = x
                else:
                    aq = x
                i = j + 1
            elif kind == 3 or c == 116 or c == 102 or c == 110:  # true / false / null
                if c == 116 and i + 4 <= e and data[i + 1] == 114 and data[i + 2] == 117 \
                        and data[i + 3] == 101:  # fmt: skip
                    v_bool = True
                    i += 4
                elif c == 102 and i + 5 <= e and data[i + 1] == 97 and data[i + 2] == 108 \
                        and data[i + 3] == 115 and data[i + 4] == 101:  # fmt: skip
                    v_bool = False
                    i += 5
                elif c == 110 and kind == 0 and i + 4 <= e and data[i + 1] == 117 \
                        and data[i + 2] == 108 and data[i + 3] == 108:  # fmt: skip
                    v_bool = False
                    i += 4
                else:
                    return -1
                if kind == 3:
                    maker = v_bool
            elif c == 34:  # a string we do not read
                j = string_end(data, i + 1, e)
                if j < 0:
                    return -1
                i = j + 1
            else:  # an integer we do not read; anything else declines
                if c == 45:  # -
                    i += 1
                j = int_end(data, i, e)
                if j < 0:
                    return -1
                i = j
            if i >= e:
                return -1
            if data[i] == 44:  # ,
                i += 1
                continue
            if data[i] == 125:  # }
                break
            return -1
        if i + 2 != e or data[i + 1] != 125:  # the data object, then the message, end here
            return -1
        if ev > _MAX_MS or tv > _MAX_MS:
            return -1
        inst = instrument[row]
        if book:
            if b < 0.0 or bq < 0.0 or a < 0.0 or aq < 0.0 or upd < 0:
                return -1
            for side in range(2):
                r = out[w + side]
                r.ts_exchange = tv * _MS
                r.ts_provider = ev * _MS
                r.ts_receive = ts_receive
                r.price = b if side == 0 else a
                r.size = bq if side == 0 else aq
                r.sequence = upd
                r.instrument = inst
                r.provider = provider
                r.venue = venue
                r.kind = KIND_BID if side == 0 else KIND_ASK
                r.data_class = data_class
                r.side = 0
                r.flags = 0
                r.reserved = 0
            w += 2
        else:
            if not p > 0.0 or q < 0.0 or seq < 0:
                return -1
            r = out[w]
            r.ts_exchange = tv * _MS
            r.ts_provider = ev * _MS
            r.ts_receive = ts_receive
            r.price = p
            r.size = q
            r.sequence = seq
            r.instrument = inst
            r.provider = provider
            r.venue = venue
            r.kind = KIND_TRADE
            r.data_class = data_class
            r.side = SIDE_SELL if maker else SIDE_BUY
            r.flags = 0
            r.reserved = 0
            w += 1
    return w - start
