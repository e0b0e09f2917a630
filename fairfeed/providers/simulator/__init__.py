"""Simulated provider: a WebSocket server streaming random-walk trades and quotes, and the
adapter that ingests it. Protocol: docs/simulator-protocol.md."""

from fairfeed.providers.simulator.adapter import SimulatorAdapter
from fairfeed.providers.simulator.parse import FrameParser
from fairfeed.providers.simulator.server import (
    ServerStats,
    SimulatorServer,
    SimulatorThread,
    SymbolStats,
    serve_forever,
)

__all__ = [
    "FrameParser",
    "ServerStats",
    "SimulatorAdapter",
    "SimulatorServer",
    "SimulatorThread",
    "SymbolStats",
    "serve_forever",
]
