"""The derivatives path of a compute pass: mark and index prices, funding, open interest and
liquidations out of the pass's records, onto their own topic and the metrics board.

They travel through the rings with the market data (same order, same ring, same spool), but
they are no market observation: the ticks topic carries kinds up to ``MAX_MARKET_KIND``, and
the fair-price kernel reads trades and quotes, plus the mark prices of perpetuals and dated
futures with ``[fair] mark_inputs`` (it reads every record and skips the rest itself). The
compute pipeline calls :meth:`DerivativesPath.process` once per pass, over the whole pass.
"""

from __future__ import annotations

import numpy as np

from fairfeed.core.records import MAX_DATA_KIND, MAX_MARKET_KIND
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.kafka.collect import CollectSink
from fairfeed.kafka.encode import TickEncoder
from fairfeed.kafka.sink import KafkaSink


def derivatives_of(records: np.ndarray) -> np.ndarray:
    """The records of ``records`` whose kind is a derivatives kind (a copy, in order)."""
    kinds = records["kind"]
    return records[(kinds > MAX_MARKET_KIND) & (kinds <= MAX_DATA_KIND)]


class DerivativesPath:
    """Publishes a pass's derivatives records and keeps their latest values for /metrics."""

    def __init__(
        self,
        encoder: TickEncoder,
        sink: KafkaSink | CollectSink,
        topic: str,
        metrics: MetricsBoard | None,
        source_table: np.ndarray,
    ) -> None:
        self.encoder = encoder  # shared with the ticks: one name table, refreshed as it grows
        self.sink = sink
        self.topic = topic
        self.metrics = metrics
        self.source_table = source_table  # the pipeline's, updated in place as sources appear
        self.published = 0  # records published so far

    def process(self, records: np.ndarray) -> int:
        """Publish the derivatives records among ``records``; how many there were."""
        kinds = records["kind"]
        if not len(kinds) or kinds.max() <= MAX_MARKET_KIND:
            return 0  # the usual pass: market data only, one max() over the kinds
        recs = derivatives_of(records)
        if not len(recs):
            return 0
        if self.metrics is not None:
            self.metrics.derivatives(recs, self.source_table)
        produce = self.sink.produce
        msgs = self.encoder.derivatives(recs)
        for (key, value), n in zip(msgs, self.encoder.counts, strict=True):
            produce(self.topic, key, value, None, n)
        self.published += len(recs)
        return len(recs)
