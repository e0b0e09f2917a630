"""Binance spot market streams: the wire messages (combined streams, SUBSCRIBE requests).

Server → client, on ``/stream`` (combined streams) every market message is wrapped as
``{"stream": "<symbol>@<kind>", "data": {...}}``:

* ``trade``: ``{"e":"trade","E":event ms,"s":"BTCUSDT","t":trade id,"p":"price","q":"qty",
  "T":trade ms,"m":buyer is maker,"M":true}``;
* ``aggTrade``: ``{"e":"aggTrade","E":…,"s":…,"a":agg id,"p":…,"q":…,"f":first trade id,
  "l":last trade id,"T":…,"m":…,"M":true}``;
* ``bookTicker`` (spot: no event type, no timestamps): ``{"u":update id,"s":…,"b":"bid",
  "B":"bid qty","a":"ask","A":"ask qty"}``; on USD-M futures with ``"e":"bookTicker"``,
  ``"E"`` (event ms) and ``"T"`` (transaction ms);
* USD-M ``markPrice@1s``: ``{"e":"markPriceUpdate","E":event ms,"s":…,"p":"mark","i":"index",
  "P":"estimated settle price","r":"funding rate","T":next funding ms}`` (a dated contract:
  ``"r":""`` and ``"T":0``);
* USD-M ``forceOrder``: ``{"e":"forceOrder","E":…,"o":{"s":…,"S":"SELL","o":"LIMIT","f":"IOC",
  "q":"original qty","p":"price","ap":"average price","X":"FILLED","l":"last filled qty",
  "z":"filled accumulated qty","T":trade ms}}``.

Answers to requests: ``{"result":null,"id":n}`` (SUBSCRIBE / UNSUBSCRIBE accepted),
``{"result":[…],"id":n}`` (LIST_SUBSCRIPTIONS) and errors ``{"error":{"code":c,"msg":"…"},
"id":n}`` (the documented stream errors are also seen flat, ``{"code":c,"msg":"…","id":n}``;
both decode). Rate limiting is code -1003 (HTTP 429 in the REST and WebSocket APIs).

One msgspec decode per frame (or per socket read: its frames joined into one array): every
field a feed can carry sits in one Struct with defaults, so
trades and book tickers (which have no ``"e"`` tag to dispatch on) decode in one pass;
``strict=False`` turns Binance's string numbers into floats in C (exactly ``float(str)``).
In the ``aggTrade`` feed ``a`` is the aggregate id on trades but the ask price (a string) on
book tickers, hence ``int | str`` there.
"""

from __future__ import annotations

import math

import msgspec

_NAN = math.nan


class TradeData(msgspec.Struct, gc=False):
    """``data`` of the ``trade`` feed's streams: a trade or a book ticker."""

    E: int = 0  # event time, ms (provider clock)
    T: int = 0  # trade time, ms (exchange clock)
    t: int = -1  # trade id, contiguous per symbol
    p: float = _NAN
    q: float = _NAN
    m: bool = False  # buyer is the maker: the taker sold
    u: int = -1  # book ticker update id
    b: float = _NAN
    B: float = _NAN
    a: float = _NAN
    A: float = _NAN


class ForceOrder(msgspec.Struct, gc=False):
    """``o`` of a USD-M ``forceOrder`` message: the liquidation order."""

    S: str = ""  # side of the forced order: "SELL" closes a long
    q: float = _NAN  # original quantity
    p: float = _NAN  # order price
    ap: float = _NAN  # average fill price
    z: float = _NAN  # filled quantity, accumulated
    T: int = 0  # trade time, ms


class AggTradeData(msgspec.Struct, gc=False):
    """``data`` of the ``aggTrade`` feed's streams: an aggregate trade or a book ticker."""

    E: int = 0
    T: int = 0
    a: int | str = -1  # aggregate trade id (int) or, on a book ticker, the ask price (str)
    f: int = -1  # first trade id
    l: int = -1  # noqa: E741 - Binance's name: last trade id
    p: float = _NAN
    q: float = _NAN
    m: bool = False
    u: int = -1
    b: float = _NAN
    B: float = _NAN
    A: float = _NAN


class ErrorBody(msgspec.Struct, gc=False):
    code: int = 0
    msg: str = ""


class TradeFrame(msgspec.Struct, gc=False):
    stream: str = ""
    data: TradeData | None = None
    id: int | str | None = None
    error: ErrorBody | None = None
    code: int | None = None
    msg: str | None = None


class AggTradeFrame(msgspec.Struct, gc=False):
    stream: str = ""
    data: AggTradeData | None = None
    id: int | str | None = None
    error: ErrorBody | None = None
    code: int | None = None
    msg: str | None = None


class DerivativeData(msgspec.Struct, gc=False):
    """``data`` of a USD-M ``markPrice@1s`` (``p`` mark, ``i`` index, ``r`` funding rate, ``T``
    next funding time) or ``forceOrder`` (``o``) message."""

    E: int = 0  # event time, ms
    T: int = 0  # next funding time, ms (0 on a dated contract)
    p: float = _NAN
    i: float = _NAN
    r: float | str = _NAN  # "" on a dated contract
    o: ForceOrder | None = None


class DerivativeFrame(msgspec.Struct, gc=False):
    stream: str = ""
    data: DerivativeData | None = None


TRADE_FRAME_DECODER = msgspec.json.Decoder(TradeFrame, strict=False)
AGG_FRAME_DECODER = msgspec.json.Decoder(AggTradeFrame, strict=False)
# The frames of one socket read joined into one JSON array (BinanceParser.parse_batch).
TRADE_BATCH_DECODER = msgspec.json.Decoder(list[TradeFrame], strict=False)
AGG_BATCH_DECODER = msgspec.json.Decoder(list[AggTradeFrame], strict=False)
# Derivatives messages come about once per second and symbol: the parser decodes them a second
# time with their own Struct, so the trade and book Structs (every other message) stay as small.
DERIVATIVE_FRAME_DECODER = msgspec.json.Decoder(DerivativeFrame, strict=False)


# --- control messages the parser hands to the adapter ---------------------------------------


class Ack(msgspec.Struct, frozen=True):
    """A request was accepted (``{"result": …, "id": n}``)."""

    id: int | str | None


class Error(msgspec.Struct, frozen=True):
    """A request was refused, or the server reported an error."""

    id: int | str | None
    code: int
    msg: str


RATE_LIMIT_CODE = -1003


# --- client → server ------------------------------------------------------------------------


class Request(msgspec.Struct):
    method: str
    params: list[str] = []
    id: int | str | None = None


REQUEST_DECODER = msgspec.json.Decoder(Request)
_ENCODER = msgspec.json.Encoder()


def subscribe(streams: list[str], request_id: int, method: str = "SUBSCRIBE") -> bytes:
    """``{"method":"SUBSCRIBE","params":[…],"id":n}``."""
    return _ENCODER.encode(Request(method, list(streams), request_id))


def encode(obj: object) -> bytes:
    return _ENCODER.encode(obj)
