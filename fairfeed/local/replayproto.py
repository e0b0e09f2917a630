"""What the replay server must know of each recorded protocol (``fairfeed/local/replay.py``).

Per protocol, three things:

* which wire symbols a recorded frame carries (so a client gets only the frames of the symbols
  it subscribed: one worker's partition), or none (a connection-level frame: heartbeat,
  status), or that it is the venue's answer to the *recording's* client (dropped: the replay
  answers its own client instead);
* which symbols a client's message subscribes to, and the answers the venue gives to it —
  Binance ``{"result":null,"id":n}``, Kraken v2 one ``subscribe`` answer per symbol, Kraken
  Futures one ``subscribed`` per product, Coinbase
  ``subscriptions``, CoinAPI none;
* an optional per-connection rewrite of a frame (Coinbase Advanced Trade numbers a
  connection's messages in ``sequence_num``: a filtered connection is renumbered, or its
  client would see gaps that the recording does not have).

Symbols are compared upper-cased (Binance streams are lower case, its symbols upper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

ANSWER = None  # frame_symbols() result for a recorded answer to the recording's client
_SEQ = re.compile(rb'"sequence_num":\s*\d+')


class ReplayProtocolError(ValueError):
    """The capture's protocol cannot be replayed (unknown endpoint or kind)."""


@dataclass
class Client:
    """One client connection's protocol state (answers numbered per connection)."""

    symbols: set[str] = field(default_factory=set)
    messages: int = 0  # frames sent on it (Coinbase Advanced Trade's sequence_num)


class ReplayProtocol:
    """The base: frames of no symbol, no answers (override per venue)."""

    kind = ""

    def frame_symbols(self, msg: dict) -> frozenset[str] | None:
        """Symbols a recorded frame carries; empty = connection-level; ANSWER = drop it."""
        return frozenset()

    def on_client(self, client: Client, msg: dict) -> list[str]:
        """Apply a client's message to ``client.symbols``; the venue's answers to it."""
        return []

    def rewrite(self, client: Client, text: str) -> str:
        return text

    def url_symbols(self, path: str) -> set[str]:
        """Symbols named in the request path (Binance ``/stream?streams=``)."""
        return set()


class CoinbaseExchange(ReplayProtocol):
    kind = "coinbase"

    def frame_symbols(self, msg: dict) -> frozenset[str] | None:
        t = msg.get("type")
        if t in ("subscriptions", "error"):
            return ANSWER
        pid = msg.get("product_id")
        return frozenset((pid.upper(),)) if isinstance(pid, str) else frozenset()

    def on_client(self, client: Client, msg: dict) -> list[str]:
        kind = msg.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return []
        products = {p.upper() for p in msg.get("product_ids", ())}
        channels = []
        for ch in msg.get("channels", ()):
            if isinstance(ch, dict):
                products |= {p.upper() for p in ch.get("product_ids", ())}
                channels.append(ch.get("name", ""))
            else:
                channels.append(ch)
        if kind == "subscribe":
            client.symbols |= products
        else:
            client.symbols -= products
        subs = sorted(client.symbols)
        answer = {"type": "subscriptions",
                  "channels": [{"name": c, "product_ids": subs} for c in channels]}  # fmt: skip
        return [orjson.dumps(answer).decode()]


class CoinbaseAdvanced(ReplayProtocol):
    kind = "coinbase"

    def frame_symbols(self, msg: dict) -> frozenset[str] | None:
        if msg.get("channel") == "subscriptions" or msg.get("type") == "error":
            return ANSWER
        out: set[str] = set()
        for ev in msg.get("events") or ():
            if not isinstance(ev, dict):
                continue
            if isinstance(ev.get("product_id"), str):
                out.add(ev["product_id"].upper())
            for key in ("trades", "tickers", "candles"):
                for item in ev.get(key) or ():
                    pid = item.get("product_id") if isinstance(item, dict) else None
                    if isinstance(pid, str):
                        out.add(pid.upper())
        return frozenset(out)

    def on_client(self, client: Client, msg: dict) -> list[str]:
        kind = msg.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return []
        products = {p.upper() for p in msg.get("product_ids", ())}
        if kind == "subscribe":
            client.symbols |= products
        else:
            client.symbols -= products
        subs = {msg.get("channel", ""): sorted(products)}
        answer = {"channel": "subscriptions", "client_id": "", "timestamp": "",
                  "sequence_num": 0, "events": [{"subscriptions": subs}]}  # fmt: skip
        return [orjson.dumps(answer).decode()]

    def rewrite(self, client: Client, text: str) -> str:
        # sequence_num counts this connection's messages (answers included), from 0
        n = client.messages
        return _SEQ.sub(f'"sequence_num":{n}'.encode(), text.encode(), count=1).decode()


class Binance(ReplayProtocol):
    kind = "binance"

    def frame_symbols(self, msg: dict) -> frozenset[str] | None:
        stream = msg.get("stream")
        if isinstance(stream, str):
            return frozenset((stream.partition("@")[0].upper(),))
        if "id" in msg and ("result" in msg or "error" in msg or "code" in msg):
            return ANSWER
        return frozenset()

    def on_client(self, client: Client, msg: dict) -> list[str]:
        method = msg.get("method")
        params = {str(p).partition("@")[0].upper() for p in msg.get("params") or ()}
        if method == "SUBSCRIBE":
            client.symbols |= params
        elif method == "UNSUBSCRIBE":
            client.symbols -= params
        elif method == "LIST_SUBSCRIPTIONS":
            return [orjson.dumps({"result": sorted(client.symbols), "id": msg.get("id")}).decode()]
        else:
            return []
        return [orjson.dumps({"result": None, "id": msg.get("id")}).decode()]

    def url_symbols(self, path: str) -> set[str]:
        _, _, query = path.partition("streams=")
        names = query.partition("&")[0]
        return {s.partition("@")[0].upper() for s in names.split("/") if s}


class Kraken(ReplayProtocol):
    kind = "kraken"

    def frame_symbols(self, msg: dict) -> frozenset[str] | None:
        if msg.get("method"):
            return ANSWER
        data = msg.get("data")
        if msg.get("channel") in ("status", "heartbeat") or not isinstance(data, list):
            return frozenset()
        return frozenset(d["symbol"].upper() for d in data if isinstance(d, dict) and "symbol" in d)

    def on_client(self, client: Client, msg: dict) -> list[str]:
        method = msg.get("method")
        rid = msg.get("req_id")
        if method == "ping":
            return [orjson.dumps({"method": "pong", "req_id": rid}).decode()]
        if method not in ("subscribe", "unsubscribe"):
            return []
        params = msg.get("params") or {}
        symbols = [str(s) for s in params.get("symbol") or ()]
        upper = {s.upper() for s in symbols}
        if method == "subscribe":
            client.symbols |= upper
        else:
            client.symbols -= upper
        channel = params.get("channel", "")
        return [
            orjson.dumps(
                {
                    "method": method,
                    "result": {"channel": channel, "symbol": s},
                    "success": True,
                    "req_id": rid,
                }
            ).decode()
            for s in symbols
        ]


class KrakenFutures(ReplayProtocol):
    kind = "kraken_futures"
    _ANSWERS = ("subscribed", "unsubscribed", "subscribed_failed", "unsubscribed_failed", "error")

    def frame_symbols(self, msg: dict) -> frozenset[str] | None:
        if msg.get("event") in self._ANSWERS:
            return ANSWER
        pid = msg.get("product_id")
        return frozenset((pid.upper(),)) if isinstance(pid, str) else frozenset()

    def on_client(self, client: Client, msg: dict) -> list[str]:
        event, feed = msg.get("event"), msg.get("feed", "")
        if event not in ("subscribe", "unsubscribe"):
            return []
        products = [str(p).upper() for p in msg.get("product_ids") or ()]
        if event == "subscribe":
            client.symbols |= set(products)
        else:
            client.symbols -= set(products)
        if not products:  # the heartbeat feed
            return [orjson.dumps({"event": f"{event}d", "feed": feed}).decode()]
        return [
            orjson.dumps({"event": f"{event}d", "feed": feed, "product_ids": [p]}).decode()
            for p in products
        ]


class CoinApi(ReplayProtocol):
    kind = "coinapi"

    def frame_symbols(self, msg: dict) -> frozenset[str] | None:
        t = msg.get("type")
        if t in ("error", "reconnect"):
            # a recorded notice would start a planned switch against the replay: left out
            return ANSWER
        sid = msg.get("symbol_id")
        return frozenset((sid.upper(),)) if isinstance(sid, str) else frozenset()

    def on_client(self, client: Client, msg: dict) -> list[str]:
        t = msg.get("type")
        ids = {str(s).rstrip("$").upper() for s in msg.get("subscribe_filter_symbol_id") or ()}
        if t == "hello":
            client.symbols = ids
        elif t == "subscribe":
            client.symbols |= ids
        elif t == "unsubscribe":
            client.symbols -= ids
        return []  # CoinAPI does not answer subscriptions


def protocol_for(kind: str, feed: str = "") -> ReplayProtocol:
    """The replay protocol of a provider kind (and feed)."""
    if kind == "coinbase":
        return CoinbaseAdvanced() if feed == "advanced" else CoinbaseExchange()
    table = {"binance": Binance, "kraken": Kraken, "kraken_futures": KrakenFutures,
             "coinapi": CoinApi}  # fmt: skip
    if kind not in table:
        raise ReplayProtocolError(
            f"captures of provider kind {kind!r} cannot be replayed (supported: coinbase, "
            "binance, kraken, kraken_futures, coinapi)"
        )
    return table[kind]()


# The recorded endpoint tells the protocol of a capture that names no provider kind.
_ENDPOINTS = (
    ("advanced-trade-ws.coinbase.com", "coinbase", "advanced"),
    ("coinbase.com", "coinbase", "exchange"),
    ("binance", "binance", ""),
    ("kraken.com/v2", "kraken", ""),
    ("futures.kraken.com", "kraken_futures", ""),
    ("coinapi", "coinapi", ""),
)


def kind_of_url(url: str) -> tuple[str, str]:
    """``(kind, feed)`` of a recorded endpoint; ReplayProtocolError if it is not known."""
    for needle, kind, feed in _ENDPOINTS:
        if needle in url:
            return kind, feed
    raise ReplayProtocolError(f"no replay protocol for the recorded endpoint {url!r}")
