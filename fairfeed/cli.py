"""The `fairfeed` command line."""

from __future__ import annotations

import argparse
import sys

from fairfeed import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fairfeed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fairfeed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the daemon")
    run_p.add_argument(
        "--config", "-c", help="TOML configuration (default: the embedded simulated set-up)"
    )
    view = run_p.add_mutually_exclusive_group()
    view.add_argument("--live", dest="live", action="store_true", default=None)
    view.add_argument("--no-live", dest="live", action="store_false")
    check_p = sub.add_parser("check-config", help="validate a configuration and exit")
    check_p.add_argument("config", nargs="?")
    replay_p = sub.add_parser(
        "replay", help="run the pipeline on a capture as fast as possible, print its results"
    )
    replay_p.add_argument("capture", help="a capture (.jsonl.zst or .ws.<n>)")
    replay_p.add_argument("--config", "-c", help="TOML configuration with one replay provider")
    replay_p.add_argument("--json", dest="json_out", help="write the results to this file")
    record_p = sub.add_parser("record", help="record the configured providers' frames")
    record_p.add_argument("--config", "-c", required=True)
    record_p.add_argument("--out", "-o", required=True, help="the capture to write (.jsonl.zst)")
    record_p.add_argument("--seconds", type=float, default=60.0)
    sub.add_parser(
        "warm-up",
        help="compile the Numba kernels into their on-disk cache (NUMBA_CACHE_DIR) and exit",
    )
    from fairfeed.daemon import ctl_client

    ctl_client.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "ctl":
        return ctl_client.main(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "record":
        return _record(args)
    if args.command == "warm-up":
        return _warm_up()

    from fairfeed.core import config

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"fairfeed: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{cfg.source}: ok ({len(cfg.providers)} providers)")
        return 0
    from fairfeed.daemon.run import run

    try:
        return run(cfg, live_view=args.live)
    except config.ConfigError as exc:  # found at start (e.g. an unusable spool directory)
        print(f"fairfeed: configuration error: {exc}", file=sys.stderr)
        return 2


def _warm_up() -> int:
    """Fill the kernel cache ahead of the first start (container build, ExecStartPre)."""
    import numba

    from fairfeed.hotpath.metrics import warm_metrics
    from fairfeed.hotpath.warmup import warm_up

    seconds = warm_up()
    warm_metrics()
    where = numba.config.CACHE_DIR or "next to the package (__pycache__)"
    print(f"kernels ready in {seconds:.2f}s; cache: {where}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fairfeed.core.config import ConfigError
    from fairfeed.daemon.replayrun import ReplayError, check_capture, replay
    from fairfeed.local.replayproto import ReplayProtocolError

    capture = Path(args.capture)
    try:
        if not capture.is_file():
            raise ReplayError(f"{capture}: no such capture file")
        check_capture(capture)
        return replay(
            capture,
            Path(args.config) if args.config else None,
            Path(args.json_out) if args.json_out else None,
        )
    except (ReplayError, ReplayProtocolError, ConfigError) as exc:
        print(f"fairfeed replay: {exc}", file=sys.stderr)
        return 2


def _record(args: argparse.Namespace) -> int:
    from fairfeed.core import config
    from fairfeed.daemon.record import RecordError, record

    try:
        cfg = config.load(args.config)
        n = record(cfg, args.out, args.seconds)
    except (config.ConfigError, RecordError) as exc:
        print(f"fairfeed record: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} frames recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
