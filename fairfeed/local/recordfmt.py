"""Writing captures (``fairfeed record``) and telling what a capture holds (``fairfeed replay``).

A recording is a ``*.jsonl.zst`` capture (the format :mod:`fairfeed.local.capture` reads):
a ``header`` line that also names the recorded provider — ``{"t":"header","format":2,
"exchange":VENUE,"fairfeed":{"kind","feed","venue","instruments"}}`` — then ``connect``,
``send`` and ``recv`` lines. ``ts`` is written from the integer nanoseconds as a decimal
number with all nine digits, so the reader gets the very same integer back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from fairfeed.local.capture import read_capture
from fairfeed.local.replayproto import kind_of_url


def _ts(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


class CaptureWriter:
    """Appends capture lines to a zstd-compressed file; :meth:`close` finishes the frame."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        import zstandard

        path = Path(path)
        if not path.name.endswith(".jsonl.zst"):
            raise ValueError(f"{path}: a recording's name must end in .jsonl.zst")
        self._raw: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._z = zstandard.ZstdCompressor(level=3).stream_writer(self._raw)
        self._line({"t": "header", "format": 2, **header})

    def _line(self, obj: dict[str, Any], ts_ns: int | None = None) -> None:
        text = json.dumps(obj, separators=(",", ":"))
        if ts_ns is not None:  # a JSON number with exactly the nanoseconds' digits
            text = text[:-1] + f',"ts":{_ts(ts_ns)}}}'
        self._z.write(text.encode() + b"\n")

    def connect(self, conn: str, url: str, ts_ns: int) -> None:
        self._line({"t": "connect", "conn": conn, "addr": url}, ts_ns)

    def send(self, conn: str, text: str, ts_ns: int) -> None:
        self._line({"t": "send", "conn": conn, "data": text}, ts_ns)

    def recv(self, conn: str, text: str, ts_ns: int) -> None:
        self._line({"t": "recv", "conn": conn, "data": text}, ts_ns)

    def close(self) -> None:
        self._z.close()  # also closes the file


def capture_provider(path: str | Path) -> tuple[str, str, str, list[str]]:
    """``(kind, feed, venue, instruments)`` of the provider recorded in ``path``.

    From the header ``fairfeed record`` writes; otherwise the protocol comes from the first
    recorded endpoint and the instruments from the client's subscribe requests (Coinbase
    product ids are our instrument names).
    """
    url = ""
    instruments: dict[str, None] = {}
    for ev in read_capture(path):
        if ev.kind == "header":
            own = json.loads(ev.data).get("fairfeed")
            if own:
                return own["kind"], own.get("feed", ""), own["venue"], list(own["instruments"])
        elif ev.kind == "connect" and not url:
            url = ev.url
        elif ev.kind == "send":
            try:
                msg = json.loads(ev.data)
            except ValueError:
                continue
            for pid in msg.get("product_ids", ()) if isinstance(msg, dict) else ():
                instruments[pid] = None
        elif ev.kind == "recv":
            break
    if not url:
        raise ValueError("no recorded connection")
    kind, feed = kind_of_url(url)
    if kind != "coinbase":
        raise ValueError(f"cannot tell the instruments of a {kind} capture: give --config")
    return kind, feed, "COINBASE", list(instruments)
