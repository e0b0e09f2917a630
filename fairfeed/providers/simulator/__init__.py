"""Simulated provider: the adapter for our own random-walk WebSocket protocol
(docs/simulator-protocol.md); its server is ``fairfeed.local.simulator``."""
