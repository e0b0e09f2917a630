"""Binance spot market streams (trade / aggTrade and bookTicker over combined streams): the
adapter, its parser, and a local server speaking the protocol. See docs/providers/binance.md."""

from fairfeed.providers.binance.adapter import BinanceAdapter
from fairfeed.providers.binance.parse import BinanceParser
from fairfeed.providers.binance.server import BinanceServer

__all__ = ["BinanceAdapter", "BinanceParser", "BinanceServer"]
