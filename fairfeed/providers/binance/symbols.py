"""Canonical instrument names ↔ Binance spot symbols and stream names.

Binance spot symbols are the base and quote assets glued together (``BTCUSDT``); stream names
use them in lower case (``btcusdt@trade``). The glued form cannot be split back without the
exchange's asset list, so the reverse direction is a lookup built from what we subscribed.
"""

from __future__ import annotations

STREAM_KINDS = ("trade", "aggTrade", "bookTicker")


def _split(name: str) -> tuple[str, str]:
    base, sep, quote = name.partition("-")
    if not sep or not base or not quote or "-" in quote:
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    if not (base.isascii() and base.isalnum() and quote.isascii() and quote.isalnum()):
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    return base, quote


def to_symbol(instrument: str) -> str:
    """``"BTC-USDT"`` → ``"BTCUSDT"`` (the ``s`` field of Binance messages)."""
    base, quote = _split(instrument)
    return (base + quote).upper()


def to_stream_symbol(instrument: str) -> str:
    """``"BTC-USDT"`` → ``"btcusdt"`` (the symbol part of a stream name)."""
    return to_symbol(instrument).lower()


def stream_name(instrument: str, kind: str) -> str:
    """``("BTC-USDT", "trade")`` → ``"btcusdt@trade"``."""
    if kind not in STREAM_KINDS:
        raise ValueError(f"unknown Binance stream kind {kind!r} (known: {STREAM_KINDS})")
    return f"{to_stream_symbol(instrument)}@{kind}"


def split_stream(stream: str) -> tuple[str, str]:
    """``"btcusdt@trade"`` → ``("btcusdt", "trade")``; ValueError if it is no stream name."""
    sym, sep, kind = stream.partition("@")
    if not sep or not sym or kind not in STREAM_KINDS:
        raise ValueError(f"not a Binance stream name: {stream!r}")
    return sym, kind
