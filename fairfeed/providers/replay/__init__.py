"""Replay of recorded WebSocket traffic (docs/providers/replay.md)."""
