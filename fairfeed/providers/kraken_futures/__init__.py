"""Kraken Futures WebSocket API v1 (``trade``, ``ticker``, ``heartbeat`` feeds): the adapter and
its parser. See docs/providers/kraken_futures.md."""
