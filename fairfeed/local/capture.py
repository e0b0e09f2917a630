"""Readers for recorded WebSocket traffic (the formats of tests/data/captures/README.md).

Both yield :class:`CaptureEvent` in file order (which is receive order):

* ``*.ws.<n>`` text lines (cryptofeed's raw-data recorder, format 28):
  ``URL <-> TS`` a connection opened, ``URL <- TS: TEXT`` the client sent TEXT,
  ``TS: TEXT`` the client received TEXT (on the connection opened last). Empty lines are skipped.
* ``*.jsonl.zst``: zstd-compressed JSON lines ``{"t": kind, "conn", "ts", "addr"|"url", "data"}``
  with kind ``header``, ``http``, ``connect``, ``send``, ``recv``.

``ts`` (epoch seconds with a decimal fraction) becomes integer nanoseconds from its *text*, so
no float rounding creeps in: ``1618677817.0618958`` → ``1618677817061895800``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple


class CaptureEvent(NamedTuple):
    ts_ns: int  # local receive (or send / connect) time of the recorder, ns since epoch
    kind: str  # "connect", "send", "recv", "http", "header"
    conn: str  # connection id (the URL in the text format)
    url: str  # the endpoint, "" if unknown
    data: str  # frame text ("" for connect)


def seconds_to_ns(text: str) -> int:
    """``"1618677817.0618958"`` → 1618677817061895800, exactly (no float on the way)."""
    text = text.strip()
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 9:
        raise ValueError(f"bad timestamp {text!r}")
    return int(whole) * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)


def read_ws_text(path: str | Path) -> Iterator[CaptureEvent]:
    """Events of a ``.ws.<n>`` text capture."""
    url = ""
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if line[0].isdigit():  # TS: TEXT (received)
                ts, sep, text = line.partition(": ")
                if not sep:
                    raise ValueError(f"{path}:{lineno}: no ': ' in a receive line")
                yield CaptureEvent(seconds_to_ns(ts), "recv", url, url, text)
                continue
            head, sep, rest = line.partition(" <-> ")
            if sep:
                url = head
                yield CaptureEvent(seconds_to_ns(rest), "connect", url, url, "")
                continue
            head, sep, rest = line.partition(" <- ")
            if sep:
                ts, sep2, text = rest.partition(": ")
                if not sep2:
                    raise ValueError(f"{path}:{lineno}: no ': ' in a send line")
                yield CaptureEvent(seconds_to_ns(ts), "send", head, head, text)
                continue
            raise ValueError(f"{path}:{lineno}: unknown line {line[:80]!r}")


def read_jsonl_zst(path: str | Path) -> Iterator[CaptureEvent]:
    """Events of a ``.jsonl.zst`` capture (needs the ``zstandard`` package)."""
    import zstandard

    with open(path, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        text = io.TextIOWrapper(reader, encoding="utf-8")
        urls: dict[str, str] = {}  # conn → URL (only connect and send lines name it)
        for lineno, line in enumerate(text, 1):
            if not line.strip():
                continue
            # parse_float=str keeps the timestamp's digits for an exact conversion
            obj = json.loads(line, parse_float=str)
            kind = obj.get("t", "")
            ts = obj.get("ts")
            ts_ns = seconds_to_ns(str(ts)) if ts is not None else 0
            data = obj.get("data", "")
            if kind == "header":
                data = line.rstrip("\n")
            elif not isinstance(data, str):
                raise ValueError(f"{path}:{lineno}: data is not a string")
            conn = obj.get("conn", "")
            url = obj.get("addr") or obj.get("url") or urls.get(conn, "")
            if kind == "connect":
                urls[conn] = url
            yield CaptureEvent(ts_ns, kind, conn, url, data)


def read_capture(path: str | Path) -> Iterator[CaptureEvent]:
    """Events of a capture in either format (chosen by the file name)."""
    name = str(path)
    if name.endswith(".zst"):
        return read_jsonl_zst(path)
    return read_ws_text(path)


def received(path: str | Path, conn: str | None = None) -> tuple[str, list[tuple[int, str]]]:
    """``(conn, [(ts_ns, text), ...])``: the frames received on one connection.

    ``conn`` picks the connection (its id, or its URL); None = the first connection that
    received anything.
    """
    frames: list[tuple[int, str]] = []
    chosen = conn
    for ev in read_capture(path):
        if ev.kind != "recv":
            continue
        if chosen is None:
            chosen = ev.conn
        if ev.conn == chosen or ev.url == chosen:
            frames.append((ev.ts_ns, ev.data))
    if chosen is None:
        raise ValueError(f"{path}: no received frames")
    return chosen, frames
