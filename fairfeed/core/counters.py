"""What every process counts: the fields of a child's counter slot and the counting interface.

The words live in shared memory (``fairfeed.ipc.control``); adapters and the Kafka sink count
through :class:`Counters` so they need not know where the words are.
"""

from __future__ import annotations

import abc
import enum

SLOT_WORDS = 48  # uint64 words per child slot


class Slot(enum.IntEnum):
    """Fields of one child's slot (uint64 each)."""

    HEARTBEAT = 0  # bumped by the child's main loop
    PID = 1
    READY = 2  # 1 once the child has booted
    RECORDS_IN = 3  # ingest: records parsed; compute: records read from rings
    RECORDS_OUT = 4  # ingest: records written to the ring; compute: ticks produced
    PARSE_ERRORS = 5
    RING_DROPPED = 6
    FRAMES_IN = 7
    RECONNECTS = 8
    FAIR_OUT = 9  # fair-price records produced
    KAFKA_DELIVERED = 10  # Kafka messages acknowledged by the broker
    KAFKA_ERRORS = 11  # delivery reports with an error
    KAFKA_RETRIES = 12  # messages the producer's full queue refused (kept in the spool, retried)
    KAFKA_DROPPED = 13  # messages given up: spool full, or rejected for good by the broker
    CONNECTED = 14  # ingest: open provider connections
    KAFKA_QUEUE = 15  # messages handed to librdkafka, not yet acknowledged
    GAPS = 16  # sequence gaps detected by adapters
    MISSED = 17  # messages missed in those gaps
    HEARTBEATS = 18  # provider heartbeats received
    DISCONNECTS = 19  # provider connections lost (not counting our own closes)
    SUBSCRIBE_ERRORS = 20  # subscriptions refused by a provider
    DEAD_LETTERS = 21  # malformed frames forwarded to the dead-letter topic
    DEAD_LETTERS_DROPPED = 22  # malformed frames not forwarded (dead-letter ring full)
    ANOMALIES_OPEN = 23  # compute: anomaly episodes open now
    ANOMALIES_TOTAL = 24  # compute: anomaly events published (starts and ends)
    # compute's Kafka output (fairfeed/kafka/sink.py)
    SPOOL_BYTES = 25  # bytes of output in the spool not yet acknowledged by the broker
    SPOOL_MESSAGES = 26  # messages in the spool not yet acknowledged by the broker
    SPOOL_RESENT = 27  # messages sent again (producer replaced, restart): Kafka may hold 2 copies
    OUTPUT_STATE = 28  # fairfeed.kafka.sink.OutputState
    OUTPUT_SINCE = 29  # wall time (ns) the current output problem began, 0 when delivering
    DROPPED_TICKS = 30  # records dropped because the spool was full, per topic
    DROPPED_FAIR = 31
    DROPPED_ANOMALIES = 32
    DROPPED_DEAD_LETTERS = 33
    DROPPED_OTHER = 34
    REPEATS_DROPPED = 35  # ingest: numbered or keyed records published already (switch overlap)
    REPLAY_SENT = 36  # simulators: frames the capture replays sent (answers included)
    REPLAY_DONE = 37  # simulators: 1 once every replayed capture was played to its end
    STREAM_RESTARTS = 38  # ingest: streams restarted alone, their connection up (Kaiko calls)
    TIME_ERRORS = 39  # ingest: records whose venue time was implausible (set to 0, kept)
    OVERSIZED = 40  # ingest: provider messages over max_message_bytes, dropped (also PARSE_ERRORS)
    ADAPTER_FAILURES = 41  # ingest: unexpected exceptions in a connection; it was reopened
    DROPPED_DERIVATIVES = 42  # records dropped because the spool was full (derivatives topic)
    VALUE_ERRORS = 43  # ingest: records whose price or size was implausible (dropped)


class Counters(abc.ABC):
    """Where an adapter counts what happened (frames, parse errors, reconnects...)."""

    @abc.abstractmethod
    def add(self, field: Slot, n: int = 1) -> None: ...

    @abc.abstractmethod
    def set(self, field: Slot, value: int) -> None: ...


class DictCounters(Counters):
    """In-process counters, for tests and benchmarks."""

    def __init__(self) -> None:
        self.values: dict[Slot, int] = {}

    def add(self, field: Slot, n: int = 1) -> None:
        self.values[field] = self.values.get(field, 0) + n

    def set(self, field: Slot, value: int) -> None:
        self.values[field] = value

    def __getitem__(self, field: Slot) -> int:
        return self.values.get(field, 0)
