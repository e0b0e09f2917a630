"""Kraken spot WebSocket API v2: the wire messages (``wss://ws.kraken.com/v2``).

Server → client (JSON numbers are numbers in v2; times are RFC 3339 with microseconds):

* ``{"channel":"status","type":"update","data":[{"system":"online","api_version":"v2",
  "connection_id":…,"version":…}]}`` right after connecting (and on system changes);
* ``{"channel":"heartbeat"}`` about once a second once something is subscribed;
* ``{"channel":"trade","type":"update"|"snapshot","data":[{"symbol":"BTC/USD","side":"buy",
  "price":…,"qty":…,"ord_type":"market","trade_id":…,"timestamp":"…Z"}, …]}`` (``side`` is the
  taker's; ``trade_id`` is contiguous per symbol);
* ``{"channel":"ticker","type":…,"data":[{"symbol":…,"bid":…,"bid_qty":…,"ask":…,
  "ask_qty":…,"last":…,"volume":…,…}]}`` (no time stamp);
* answers: ``{"method":"subscribe","result":{"channel":…,"symbol":…,…},"success":true,
  "req_id":n,"time_in":…,"time_out":…}`` (one per symbol), ``{"method":"subscribe",
  "success":false,"error":"…","symbol":…?,"req_id":n,…}``, ``{"method":"pong","req_id":n,…}``;
* ``{"Error":"Exceeded msg rate"}``: requests sent too fast are dropped with this instead of an
  answer (no method, no req_id).

Client → server: ``{"method":"subscribe"|"unsubscribe","params":{"channel":…,"symbol":[…],
"snapshot":bool,"event_trigger":"bbo"|"trades"},"req_id":n}`` and ``{"method":"ping",
"req_id":n}``.

One msgspec decode per frame into a Struct holding every field we read (with defaults), so
every message type decodes in one pass; unknown fields are skipped in C.
"""

from __future__ import annotations

import math

import msgspec

_NAN = math.nan


class Item(msgspec.Struct, gc=False):
    """One element of ``data``: a trade, a ticker, or a status."""

    symbol: str = ""
    side: str = ""
    price: float = _NAN
    qty: float = _NAN
    trade_id: int = -1
    timestamp: str = ""
    bid: float = _NAN
    bid_qty: float = _NAN
    ask: float = _NAN
    ask_qty: float = _NAN
    system: str = ""  # status


class Result(msgspec.Struct, gc=False):
    channel: str = ""
    symbol: str = ""


class Frame(msgspec.Struct, gc=False):
    channel: str = ""
    type: str = ""
    data: list[Item] | None = None
    method: str = ""
    success: bool | None = None
    error: str | None = None
    symbol: str | None = None
    req_id: int | None = None
    result: Result | None = None
    # the connection-level refusal, capitalised and outside any method:
    # {"Error": "Exceeded msg rate"} when the client sends requests too fast
    refusal: str | None = msgspec.field(default=None, name="Error")


FRAME_DECODER = msgspec.json.Decoder(Frame)


# --- control messages the parser hands to the adapter ---------------------------------------


class Answer(msgspec.Struct, frozen=True):
    """An answer to a subscribe / unsubscribe request (one per symbol on success)."""

    method: str
    req_id: int | None
    success: bool
    channel: str = ""
    symbol: str = ""
    error: str = ""


class Pong(msgspec.Struct, frozen=True):
    req_id: int | None


class Status(msgspec.Struct, frozen=True):
    system: str  # "online", "maintenance", "cancel_only", "post_only"


class Refusal(msgspec.Struct, frozen=True):
    """``{"Error": "Exceeded msg rate"}``: a request was dropped, not answered; the requests
    still waiting on this connection will never be answered either."""

    error: str


class Other(msgspec.Struct, frozen=True):
    """A well-formed message we do not use (another channel or method)."""

    channel: str
    method: str


RATE_LIMIT_ERROR = "EGeneral:Too many requests"

_ENCODER = msgspec.json.Encoder()


def subscribe(
    channel: str, symbols: list[str], req_id: int, method: str = "subscribe", **params: object
) -> bytes:
    """``{"method":"subscribe","params":{"channel":…,"symbol":[…],…},"req_id":n}``."""
    return _ENCODER.encode(
        {"method": method, "params": {"channel": channel, "symbol": symbols, **params},
         "req_id": req_id}
    )  # fmt: skip


def ping(req_id: int) -> bytes:
    return _ENCODER.encode({"method": "ping", "req_id": req_id})


def encode(obj: object) -> bytes:
    return _ENCODER.encode(obj)
