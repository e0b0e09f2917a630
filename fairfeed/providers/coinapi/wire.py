"""CoinAPI market-data WebSocket v1: the messages as msgspec Structs (JSON text frames).

Server → client messages are a tagged union on ``"type"`` (:data:`SERVER_DECODER`); each Struct
holds only the fields we read (msgspec skips the others in C). Both
heartbeat spellings decode: CoinAPI documents ``{"type": "hearbeat"}`` (sic) and we also accept
the corrected ``"heartbeat"``. Numbers are JSON numbers on CoinAPI; ``strict=False`` also takes
numeric strings, exactly as ``float(str)``. Timestamps stay strings here: the parser turns them
into integer nanoseconds without a float on the way (CoinAPI sends 7 fractional digits).

Client → server messages (``hello``, ``subscribe``, ``unsubscribe``) share one shape; the local
server decodes them with :data:`CLIENT_DECODER`.
"""

from __future__ import annotations

import msgspec

# --- server -> client --------------------------------------------------------------------------


class Trade(msgspec.Struct, tag_field="type", tag="trade", gc=False):
    symbol_id: str
    time_exchange: str
    time_coinapi: str
    price: float
    size: float  # base asset amount (0 = a data point without volume, e.g. an index)
    taker_side: str = "UNKNOWN"  # BUY, SELL, BUY_ESTIMATED, SELL_ESTIMATED, UNKNOWN
    sequence: int = -1  # per (type, symbol_id), valid for the lifespan of the connection
    uuid: str = ""  # the trade's unique id, the same on every connection (not ordered)


class Quote(msgspec.Struct, tag_field="type", tag="quote", gc=False):
    symbol_id: str
    time_exchange: str
    time_coinapi: str
    ask_price: float
    ask_size: float  # 0 = size unknown
    bid_price: float
    bid_size: float
    sequence: int = -1


class Heartbeat(msgspec.Struct, tag_field="type", tag="heartbeat", gc=False):
    pass


class Hearbeat(msgspec.Struct, tag_field="type", tag="hearbeat", gc=False):
    """The spelling CoinAPI documents for its heartbeat."""


class Reconnect(msgspec.Struct, tag_field="type", tag="reconnect"):
    """The server goes away: reconnect within ``within_seconds`` / before ``before_time``."""

    within_seconds: float = 0.0
    before_time: str = ""


class Error(msgspec.Struct, tag_field="type", tag="error"):
    """Permanent: the server closes the connection after it (bad key, quota, bad request)."""

    message: str = ""


ServerMessage = Trade | Quote | Heartbeat | Hearbeat | Reconnect | Error
SERVER_DECODER = msgspec.json.Decoder(ServerMessage, strict=False)

# --- client -> server --------------------------------------------------------------------------


class _Request(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    apikey: str = ""
    heartbeat: bool = False
    subscribe_data_type: list[str] = msgspec.field(default_factory=list)
    subscribe_filter_symbol_id: list[str] = msgspec.field(default_factory=list)
    subscribe_filter_exchange_id: list[str] = msgspec.field(default_factory=list)


class Hello(_Request, tag="hello"):
    """Starts (or replaces) the whole subscription scope; carries the API key."""


class Subscribe(_Request, tag="subscribe"):
    """Adds to the scope."""


class Unsubscribe(_Request, tag="unsubscribe"):
    """Removes from the scope."""


ClientRequest = Hello | Subscribe | Unsubscribe
CLIENT_DECODER = msgspec.json.Decoder(ClientRequest)
_ENCODER = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    """JSON bytes of a wire Struct (the ``type`` tag included)."""
    return _ENCODER.encode(msg)


def exact(symbol_id: str) -> str:
    """A ``subscribe_filter_symbol_id`` entry matching ``symbol_id`` only.

    CoinAPI filters are prefixes (``COINBASE_SPOT_BTC_USD`` also matches ``…_BTC_USDT``); a
    trailing ``$`` asks for an exact match.
    """
    return symbol_id + "$"
