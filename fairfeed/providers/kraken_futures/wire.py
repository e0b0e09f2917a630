"""Kraken Futures WebSocket API v1: the wire messages (``wss://futures.kraken.com/ws/v1``).

Server → client (JSON numbers; times in milliseconds since epoch; product ids upper case in
messages, e.g. ``PI_XBTUSD``, ``FI_XBTUSD_210924``):

* ``{"event":"info","version":1}`` right after connecting;
* answers, one per product: ``{"event":"subscribed","feed":"trade","product_ids":["PI_XBTUSD"]}``
  (also ``unsubscribed``, ``subscribed_failed``, ``unsubscribed_failed``); the heartbeat feed's
  has no ``product_ids``; ``{"event":"error","message":"Invalid product id"}`` (names no
  product) and ``{"event":"alert","message":"…"}``;
* ``{"feed":"trade","product_id":…,"uid":…,"side":"buy"|"sell","type":"fill"|"liquidation"|
  "termination"|"block","seq":n,"time":ms,"qty":contracts,"price":…}`` (``side`` is the
  taker's; ``seq`` is contiguous per product);
  ``{"feed":"trade_snapshot","product_id":…,"trades":[…]}`` on subscribing: the recent trades,
  newest first (history);
* ``{"feed":"ticker","product_id":…,"time":ms,"bid":…,"ask":…,"bid_size":…,"ask_size":…,
  "index":…,"markPrice":…,"openInterest":contracts,"funding_rate":…,"funding_rate_prediction":…,
  "relative_funding_rate":…,"relative_funding_rate_prediction":…,
  "next_funding_rate_time":ms,"tag":"perpetual"|"month"|"quarter",…}`` about once a second
  (Kraken leaves a funding field out when it is zero; funding only on perpetuals);
* ``{"feed":"ticker_lite","product_id":…,"bid":…,"ask":…,…}`` (no sizes, no time);
* ``{"feed":"heartbeat","time":ms}`` once the heartbeat feed is subscribed;
* ``book`` / ``book_snapshot`` (not read).

Client → server: ``{"event":"subscribe"|"unsubscribe","feed":…,"product_ids":[…]}`` (the
heartbeat feed without ``product_ids``); keep-alive: a WebSocket ping at least every 60 s.

One msgspec decode per frame into a Struct holding every field we read (with defaults: NaN
marks a number the message left out), unknown fields are skipped in C.
"""

from __future__ import annotations

import math

import msgspec

_NAN = math.nan


class Frame(msgspec.Struct, gc=False):
    feed: str = ""
    event: str = ""
    product_id: str = ""
    product_ids: list[str] | None = None
    message: str = ""
    time: int = 0  # ms since epoch, 0 = absent
    # trade
    side: str = ""
    type: str = ""
    seq: int = -1
    qty: float = _NAN
    price: float = _NAN
    # ticker, ticker_lite
    bid: float = _NAN
    ask: float = _NAN
    bid_size: float = _NAN
    ask_size: float = _NAN
    index: float = _NAN
    markPrice: float = _NAN
    openInterest: float = _NAN
    relative_funding_rate: float = _NAN
    relative_funding_rate_prediction: float = _NAN
    next_funding_rate_time: float = _NAN  # ms since epoch


FRAME_DECODER = msgspec.json.Decoder(Frame)


# --- control messages the parser hands to the adapter ---------------------------------------


class Answer(msgspec.Struct, frozen=True):
    """``subscribed`` / ``unsubscribed`` / ``…_failed`` for ``feed`` and ``product_ids``."""

    event: str
    feed: str
    product_ids: tuple[str, ...] = ()


class Error(msgspec.Struct, frozen=True):
    """``{"event":"error","message":…}`` (a refused request; it names no product)."""

    message: str


class Alert(msgspec.Struct, frozen=True):
    message: str


class Info(msgspec.Struct, frozen=True):
    pass


class Other(msgspec.Struct, frozen=True):
    """A well-formed message we do not use (another feed or event)."""

    feed: str
    event: str


ANSWER_EVENTS = ("subscribed", "unsubscribed", "subscribed_failed", "unsubscribed_failed")

_ENCODER = msgspec.json.Encoder()


def subscribe(feed: str, products: list[str] | None = None, event: str = "subscribe") -> bytes:
    """``{"event":"subscribe","feed":…,"product_ids":[…]}`` (no ``product_ids``: heartbeat)."""
    msg: dict[str, object] = {"event": event, "feed": feed}
    if products is not None:
        msg["product_ids"] = products
    return _ENCODER.encode(msg)


def encode(obj: object) -> bytes:
    return _ENCODER.encode(obj)
