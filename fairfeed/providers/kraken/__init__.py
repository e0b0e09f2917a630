"""Kraken spot WebSocket API v2 (``trade`` and ``ticker`` channels): the adapter, its parser,
and a local server speaking the protocol. See docs/providers/kraken.md."""

from fairfeed.providers.kraken.adapter import KrakenAdapter
from fairfeed.providers.kraken.parse import KrakenParser
from fairfeed.providers.kraken.server import KrakenServer

__all__ = ["KrakenAdapter", "KrakenParser", "KrakenServer"]
