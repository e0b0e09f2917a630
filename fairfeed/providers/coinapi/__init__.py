"""CoinAPI market-data WebSocket v1: adapter, parser and symbol mapping
(docs/providers/coinapi.md)."""
