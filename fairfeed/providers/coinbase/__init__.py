"""Coinbase parsers: Exchange feed (ws-feed) and Advanced Trade (docs/providers/coinbase.md)."""
