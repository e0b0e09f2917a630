"""The venue's wire messages: what the server sends, what we send. No parsing into records.

Server → client (an example JSON protocol; write down the real one here, with links):

* ``{"type":"trade","symbol":"BTC_USD","price":…,"size":…,"side":"buy","id":n,"time":ns}``
  (``side`` is the taker's; ``id`` +1 per trade per symbol);
* ``{"type":"heartbeat"}`` once a second;
* ``{"type":"subscribed","req_id":n}`` / ``{"type":"error","req_id":n,"message":…}``.

Client → server: ``{"op":"subscribe","symbols":[…],"req_id":n}``.

One msgspec Struct holds every field we read, so each message decodes in one pass (unknown
fields are skipped in C).
"""

from __future__ import annotations

import json

import msgspec


class Message(msgspec.Struct, gc=False):
    type: str = ""
    symbol: str = ""
    price: float = -1.0
    size: float = -1.0
    side: str = ""
    id: int = -1
    time: int = 0
    req_id: int = -1
    message: str = ""


DECODER = msgspec.json.Decoder(Message)


def subscribe(symbols: list[str], req_id: int) -> str:
    """A subscribe request for ``symbols``."""
    return json.dumps({"op": "subscribe", "symbols": symbols, "req_id": req_id})
