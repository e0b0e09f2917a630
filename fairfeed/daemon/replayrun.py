"""`fairfeed replay CAPTURE`: the real pipeline on a recorded capture, as fast as possible.

The daemon runs as usual (supervisor, the capture's replay server, ingest workers, compute),
with three differences: the provider replaying the capture plays it at ``speed = 0``; with no
broker configured the compute process writes the fair prices and anomalies to a file instead
of Kafka; and the daemon stops by itself once the replay server has played every subscribed
symbol to its end *and* the ingest workers have read every frame it sent (the graceful stop
then drains the rings through compute). The result is printed, or written as JSON.

Which provider plays the capture: with ``--config``, the configuration's one provider with a
``[providers.replay]`` table (its ``capture`` is replaced); without, a provider is derived
from the capture itself (its protocol from the recorded endpoint, or from the header
``fairfeed record`` writes; its instruments from the recorded subscribe requests).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from fairfeed.core.config import Config, ConfigError, ReplayConfig, load, loads
from fairfeed.core.counters import Slot
from fairfeed.ipc.control import ControlBlock
from fairfeed.local.capture import read_capture
from fairfeed.local.recordfmt import capture_provider


class ReplayError(ValueError):
    """The capture or the configuration cannot be replayed (the message says why)."""


def replay_config(capture: Path, config: Path | None, workdir: Path) -> Config:
    """The configuration that replays ``capture`` (see the module docstring)."""
    if not capture.is_file():
        raise ReplayError(f"{capture}: no such capture file")
    if config is not None:
        cfg = load(config)
        replays = [p for p in cfg.providers if p.replay is not None]
        if len(replays) != 1:
            raise ReplayError(
                f"{config}: needs exactly one provider with a [providers.replay] table to play "
                f"{capture} (found {len(replays)})"
            )
        p = replays[0]
        r = dataclasses.replace(p.replay, capture=str(capture), speed=0.0, keep_open=True)
        providers = tuple(dataclasses.replace(q, replay=r) if q is p else q for q in cfg.providers)
        cfg = dataclasses.replace(cfg, providers=providers)
    else:
        cfg = loads(_derived_toml(capture), source=str(capture))
    # A replay must not touch a running daemon's control socket, state or spool.
    d = dataclasses.replace(
        cfg.daemon,
        control_socket=str(workdir / "control.sock"),
        state_file=str(workdir / "state.json"),
        live_view="off",
    )
    k = dataclasses.replace(cfg.kafka, spool_dir=str(workdir / "spool"))
    m = dataclasses.replace(cfg.metrics, listen="")  # nor its metrics port
    return dataclasses.replace(cfg, daemon=d, kafka=k, metrics=m)


def _derived_toml(capture: Path) -> str:
    try:
        kind, feed, venue, instruments = capture_provider(capture)
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{capture}: {exc}") from None
    if not instruments:
        raise ReplayError(f"{capture}: the recording subscribes to nothing; give --config")
    insts = ", ".join(json.dumps(i) for i in instruments)
    feed_line = f'feed = "{feed}"\n' if feed else ""
    return (
        f'[[providers]]\nname = "replay"\nkind = "{kind}"\nvenue = "{venue}"\n{feed_line}'
        f"[providers.replay]\ncapture = {json.dumps(str(capture))}\nspeed = 0\n"
        f'[[subscriptions]]\nprovider = "replay"\ninstruments = [{insts}]\n'
    )


def played_and_read(control: ControlBlock, sim_slot: int, ingest_slots: list[int]) -> bool:
    """The capture was played to its end and the ingest workers have read every frame sent."""
    if not control.get(sim_slot, Slot.REPLAY_DONE):
        return False
    sent = control.get(sim_slot, Slot.REPLAY_SENT)
    return sum(control.get(s, Slot.FRAMES_IN) for s in ingest_slots) >= sent


def summarize(path: Path) -> dict[str, Any]:
    """Anomaly events and fair-price status counts per instrument, from the collected file."""
    anomalies: list[dict] = []
    statuses: dict[str, Counter] = {}
    with open(path, "rb") as f:
        for line in f:
            msg = json.loads(line)
            value = msg["value"]
            if value.get("type") == "fair":
                inst = value.get("instrument", "?")
                statuses.setdefault(inst, Counter())[value.get("status", "?")] += 1
            elif value.get("type") == "anomaly":
                anomalies.append(value)
    return {
        "anomalies": anomalies,
        "fair_status": {i: dict(sorted(c.items())) for i, c in sorted(statuses.items())},
    }


def render(summary: dict[str, Any]) -> str:
    lines = [f"{len(summary['anomalies'])} anomaly events"]
    for a in summary["anomalies"]:
        what = " ".join(
            str(a.get(k)) for k in ("phase", "kind", "instrument", "provider", "venue") if a.get(k)
        )
        lines.append(f"  {what}")
    lines.append("fair-price statuses per instrument:")
    for inst, counts in summary["fair_status"].items():
        lines.append(f"  {inst}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    return "\n".join(lines)


def replay(capture: Path, config: Path | None = None, json_out: Path | None = None) -> int:
    """Run the pipeline on ``capture``; print the result or write it to ``json_out``."""
    from fairfeed.daemon.run import run

    with tempfile.TemporaryDirectory(prefix="fairfeed-replay-") as tmp:
        work = Path(tmp)
        cfg = replay_config(capture, config, work)
        if cfg.kafka.bootstrap:
            # published like the daemon does; nothing is collected here
            return run(cfg, live_view=False, stop_when=played_and_read)
        out = work / "output.jsonl"
        status = run(cfg, live_view=False, collect=out, stop_when=played_and_read)
        if not out.exists():
            raise ReplayError("the compute process wrote no output (see the log above)")
        summary = summarize(out)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=1) + "\n")
    else:
        print(render(summary), flush=True)
    return status


def check_capture(capture: Path) -> None:
    """Read ``capture`` once: a bad file gives a ReplayError naming what is wrong."""
    try:
        for _ in read_capture(capture):
            pass
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{capture}: not a readable capture: {exc}") from None


__all__ = ["ConfigError", "ReplayConfig", "ReplayError", "check_capture", "replay"]
