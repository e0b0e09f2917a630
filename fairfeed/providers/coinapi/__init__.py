"""CoinAPI market-data WebSocket v1: adapter, parser, symbol mapping and a local server."""

from fairfeed.providers.coinapi.adapter import CoinApiAdapter
from fairfeed.providers.coinapi.parse import CoinApiParser

__all__ = ["CoinApiAdapter", "CoinApiParser"]
