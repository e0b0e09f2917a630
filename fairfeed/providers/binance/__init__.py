"""Binance spot market streams (trade / aggTrade and bookTicker over combined streams): the
adapter and its parser. See docs/providers/binance.md."""
