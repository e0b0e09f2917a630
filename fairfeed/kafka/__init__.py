"""Kafka: the producer wrapper (sink), every message encoder (one schema version) and the local
development broker."""
