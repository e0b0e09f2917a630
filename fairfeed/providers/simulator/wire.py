"""The simulator's wire protocol: JSON text frames over WebSocket (see docs/simulator-protocol.md).

One set of msgspec Structs describes every frame. The client decodes server frames with
:data:`SERVER_FRAME_DECODER` (a tagged union on ``"type"``; events are a tagged union on ``"e"``);
the server decodes client requests with :data:`CLIENT_REQUEST_DECODER` (tagged on ``"op"``).
The server never builds these Structs on its hot path: it formats event JSON directly (see
:mod:`fairfeed.local.simulator`), and :func:`ws_text_frame` wraps a payload into a raw unmasked
server frame (the local servers' pre-built-frame write path, :mod:`fairfeed.local.wsserver`).
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

# --- server -> client -------------------------------------------------------------------------


class Trade(msgspec.Struct, tag_field="e", tag="trade", gc=False):
    s: str  # instrument symbol, canonical name (e.g. "BTC-USD")
    p: float  # price
    q: float  # size, base currency
    side: Literal["buy", "sell"]  # taker side
    seq: int  # per-symbol sequence, +1 per event (trades and quotes share it)
    T: int  # exchange timestamp, ns since epoch
    P: int  # provider timestamp, ns since epoch


class Quote(msgspec.Struct, tag_field="e", tag="quote", gc=False):
    s: str
    bp: float  # best bid price
    bq: float  # best bid size
    ap: float  # best ask price
    aq: float  # best ask size
    seq: int
    T: int
    P: int


Event = Trade | Quote


class Batch(msgspec.Struct, tag_field="type", tag="batch"):
    events: list[Event]


class Heartbeat(msgspec.Struct, tag_field="type", tag="heartbeat"):
    ts: int  # server time, ns since epoch


class Subscribed(msgspec.Struct, tag_field="type", tag="subscribed"):
    id: int | None
    symbols: list[str]


class Unsubscribed(msgspec.Struct, tag_field="type", tag="unsubscribed"):
    id: int | None
    symbols: list[str]


class Error(msgspec.Struct, tag_field="type", tag="error"):
    id: int | None
    message: str


ServerFrame = Batch | Heartbeat | Subscribed | Unsubscribed | Error
SERVER_FRAME_DECODER = msgspec.json.Decoder(ServerFrame)

# --- client -> server -------------------------------------------------------------------------


class Subscribe(msgspec.Struct, tag_field="op", tag="subscribe"):
    id: int
    symbols: list[str]


class Unsubscribe(msgspec.Struct, tag_field="op", tag="unsubscribe"):
    id: int
    symbols: list[str]


ClientRequest = Subscribe | Unsubscribe
CLIENT_REQUEST_DECODER = msgspec.json.Decoder(ClientRequest)
_ENCODER = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    """JSON bytes of any wire Struct (the tag field is included)."""
    return _ENCODER.encode(msg)


# --- raw WebSocket framing (server side: frames are never masked) -----------------------------

OP_TEXT = 0x1
OP_BINARY = 0x2
_H2 = struct.Struct("!BB")
_H4 = struct.Struct("!BBH")
_H10 = struct.Struct("!BBQ")


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, unmasked WebSocket frame (RFC 6455 §5.2) carrying ``payload``.

    The server writes these straight to the transport so that pre-encoded batches cost one
    ``write`` per chunk of frames instead of one library call per frame. Only valid for a
    server without a negotiated extension (the simulator disables compression).
    """
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return _H2.pack(b0, n) + payload
    if n < 65536:
        return _H4.pack(b0, 126, n) + payload
    return _H10.pack(b0, 127, n) + payload


def ws_text_frame(payload: bytes) -> bytes:
    return ws_frame(payload, OP_TEXT)
