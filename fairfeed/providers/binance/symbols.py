"""Canonical instrument names ↔ Binance symbols and stream names, spot and USD-M futures.

Binance spot symbols are the base and quote assets glued together (``BTCUSDT``); stream names
use them in lower case (``btcusdt@trade``). USD-M futures symbols are the same for perpetuals
(canonical ``BTC-USDT-PERP`` → ``BTCUSDT``) and carry the delivery date for dated contracts
(``BTC-USDT-250328`` → ``BTCUSDT_250328``). The glued form cannot be split back without the
exchange's asset list, so the reverse direction is a lookup built from what we subscribed.
"""

from __future__ import annotations

# USD-M futures only: mark / index price and funding every second, liquidation snapshots
DERIVATIVE_STREAMS = ("markPrice@1s", "forceOrder")
STREAM_KINDS = ("trade", "aggTrade", "bookTicker", *DERIVATIVE_STREAMS)
MARKETS = ("spot", "usdm")  # spot (stream.binance.com), USD-M futures (fstream.binance.com)


def _split(name: str) -> tuple[str, str]:
    base, sep, quote = name.partition("-")
    if not sep or not base or not quote or "-" in quote:
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    if not (base.isascii() and base.isalnum() and quote.isascii() and quote.isalnum()):
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    return base, quote


def _futures_symbol(name: str) -> str:
    pair, sep, expiry = name.rpartition("-")
    if not sep or not (expiry == "PERP" or (len(expiry) == 6 and expiry.isdigit())):
        raise ValueError(
            f"not a USD-M futures name: {name!r} (BASE-QUOTE-PERP, or BASE-QUOTE-YYMMDD for a "
            "dated contract)"
        )
    base, quote = _split(pair)
    glued = (base + quote).upper()
    return glued if expiry == "PERP" else f"{glued}_{expiry}"


def to_symbol(instrument: str, market: str = "spot") -> str:
    """``"BTC-USDT"`` → ``"BTCUSDT"`` (the ``s`` field of Binance messages); on ``"usdm"``
    ``"BTC-USDT-PERP"`` → ``"BTCUSDT"``, ``"BTC-USDT-250328"`` → ``"BTCUSDT_250328"``."""
    if market == "usdm":
        return _futures_symbol(instrument)
    if market != "spot":
        raise ValueError(f"unknown Binance market {market!r} (known: {MARKETS})")
    base, quote = _split(instrument)
    return (base + quote).upper()


def to_stream_symbol(instrument: str, market: str = "spot") -> str:
    """``"BTC-USDT"`` → ``"btcusdt"`` (the symbol part of a stream name)."""
    return to_symbol(instrument, market).lower()


def stream_name(instrument: str, kind: str, market: str = "spot") -> str:
    """``("BTC-USDT", "trade")`` → ``"btcusdt@trade"``."""
    if kind not in STREAM_KINDS:
        raise ValueError(f"unknown Binance stream kind {kind!r} (known: {STREAM_KINDS})")
    return f"{to_stream_symbol(instrument, market)}@{kind}"


def split_stream(stream: str) -> tuple[str, str]:
    """``"btcusdt@trade"`` → ``("btcusdt", "trade")``; ValueError if it is no stream name."""
    sym, sep, kind = stream.partition("@")
    if not sep or not sym or kind not in STREAM_KINDS:
        raise ValueError(f"not a Binance stream name: {stream!r}")
    return sym, kind


# USD-M futures serve each stream on one routed endpoint only ("Important WebSocket Change
# Notice", 2026): book tickers and depth on /public, trades, mark prices and klines on /market;
# a connection without a route gets public data only. There is no raw @trade stream.
USDM_ROUTES = {
    "bookTicker": "public",
    "aggTrade": "market",
    "markPrice@1s": "market",
    "forceOrder": "market",
}
