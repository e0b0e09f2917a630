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
    from fairfeed.daemon import ctl_client

    ctl_client.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "ctl":
        return ctl_client.main(args)

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


if __name__ == "__main__":
    sys.exit(main())
