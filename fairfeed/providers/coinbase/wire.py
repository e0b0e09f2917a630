"""Coinbase WebSocket wire messages: the Exchange feed and Advanced Trade market data.

Server → client, Exchange feed (``wss://ws-feed.exchange.coinbase.com``): ``match`` /
``last_match``, ``ticker``, ``heartbeat`` (one per product per second) and the answers
``subscriptions`` and ``error`` (``message``, ``reason``); numbers are strings
(``"14.7775"``), times ISO-8601 with microseconds.

Server → client, Advanced Trade (``wss://advanced-trade-ws.coinbase.com``):
``{"channel":…,"timestamp":…,"sequence_num":n,"events":[…]}`` with the channels
``market_trades`` (events of ``trades``, newest first; ``snapshot`` then ``update``),
``ticker`` / ``ticker_batch`` (``tickers``), ``heartbeats`` (``current_time`` in Go's time
format, ``heartbeat_counter``) and ``subscriptions``; an error is ``{"type":"error",
"message":…}`` without a channel. ``sequence_num`` numbers every message of one connection.

Client → server: ``{"type":"subscribe"|"unsubscribe","product_ids":[…],"channels":[…]}``
(Exchange) or ``…,"channel":…}`` (Advanced Trade, one channel per message).

Each feed decodes in one msgspec pass into one Struct holding only the fields we read
(``strict=False``: the string numbers become float and int in C); unknown fields are skipped.
"""

from __future__ import annotations

import json

import msgspec

EXCHANGE_CHANNELS = ("matches", "ticker", "heartbeat")
ADVANCED_CHANNELS = ("market_trades", "ticker")  # plus "heartbeats", once per connection
ADVANCED_HEARTBEATS = "heartbeats"

# --- Exchange feed ---------------------------------------------------------------------------


class ExchangeMessage(msgspec.Struct, gc=False):
    """Every ws-feed message type in one Struct: only the fields we read; the rest is skipped."""

    type: str
    product_id: str = ""
    sequence: int = -1
    trade_id: int = -1
    side: str = ""
    price: float = -1.0
    size: float = -1.0
    time: str = ""
    best_bid: float = -1.0
    best_ask: float = -1.0
    best_bid_size: float = 0.0
    best_ask_size: float = 0.0
    last_trade_id: int = -1
    message: str = ""
    reason: str = ""


EXCHANGE_DECODER = msgspec.json.Decoder(ExchangeMessage, strict=False)


# --- Advanced Trade --------------------------------------------------------------------------


class AdvancedTrade(msgspec.Struct, gc=False):
    product_id: str
    trade_id: int
    price: float
    size: float
    time: str
    side: str


class AdvancedTicker(msgspec.Struct, gc=False):
    product_id: str
    best_bid: float
    best_ask: float
    best_bid_quantity: float = 0.0
    best_ask_quantity: float = 0.0


class AdvancedEvent(msgspec.Struct, gc=False):
    type: str = ""
    trades: list[AdvancedTrade] = []
    tickers: list[AdvancedTicker] = []
    current_time: str = ""
    heartbeat_counter: int = -1


class AdvancedMessage(msgspec.Struct, gc=False):
    channel: str = ""
    timestamp: str = ""
    sequence_num: int = -1
    events: list[AdvancedEvent] = []
    type: str = ""  # only error answers have it (and no channel)
    message: str = ""


ADVANCED_DECODER = msgspec.json.Decoder(AdvancedMessage, strict=False)


# --- client → server -------------------------------------------------------------------------


def exchange_request(kind: str, products: list[str]) -> str:
    """An Exchange feed ``subscribe`` / ``unsubscribe`` of ``products`` on every channel."""
    return _json({"type": kind, "product_ids": products, "channels": list(EXCHANGE_CHANNELS)})


def advanced_request(kind: str, products: list[str], channel: str) -> str:
    """An Advanced Trade ``subscribe`` / ``unsubscribe`` of ``products`` on one channel."""
    return _json({"type": kind, "product_ids": products, "channel": channel})


def _json(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))
