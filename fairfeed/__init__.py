"""fairfeed: multi-provider crypto market data → normalized records → fair price → Kafka."""

__version__ = "0.1.0"
