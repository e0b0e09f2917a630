"""Kraken spot WebSocket API v2 (``trade`` and ``ticker`` channels): the adapter and its
parser. See docs/providers/kraken.md."""
