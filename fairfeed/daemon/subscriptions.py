"""The live subscription set, owned by the supervisor, and its state file.

A subscription is (provider, venue, instrument) with the instrument's data class. The set starts
from the configuration, changes over the control socket, and is written atomically to the state
file after every change so it survives a restart.

**Configuration vs state file.** The state file records the fingerprint of the configuration's
subscriptions it started from. At start:

* same fingerprint → the configuration's subscriptions have not been edited since: the state
  file's set is restored (live changes survive restarts);
* different fingerprint (or no, or an unreadable, state file) → the configuration was edited, or
  this is the first start: the configuration wins and the state file is rewritten from it;
  any live changes recorded against the old configuration are dropped, with a warning saying so;
* entries of the state file naming a provider the configuration no longer has are dropped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from fairfeed.core.config import Config
from fairfeed.core.names import name_problem, shown
from fairfeed.core.records import CLASS_CODES
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Key, Stream, SubscriptionSet

log = logging.getLogger(__name__)

STATE_VERSION = 1


class SubscriptionError(ValueError):
    """A subscription request names something invalid (the message says what)."""


@dataclass(frozen=True)
class Change:
    """What an add or remove did."""

    changed: tuple[Stream, ...]  # added (or removed, with their data class)
    unchanged: tuple[Key, ...]  # already there (or not there)


def fingerprint(cfg: Config) -> str:
    """Hash of the configuration's subscriptions (what the state file was derived from)."""
    data = orjson.dumps(sorted((*s.key, s.data_class) for s in cfg.streams()))
    return hashlib.sha256(data).hexdigest()[:16]


def default_state_file() -> Path:
    base = os.environ.get("STATE_DIRECTORY") or os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base else Path.home() / ".local" / "state"
    return root / "fairfeed" / "subscriptions.json"


class SubscriptionBook:
    """The live set (:attr:`live`), its validation, and its state file."""

    def __init__(self, cfg: Config, registry: Registry, workers: int) -> None:
        self.cfg = cfg
        self.registry = registry
        self.workers = workers
        self.live = SubscriptionSet(cfg.streams())

    # -- queries -------------------------------------------------------------------------
    def worker_of(self, key: Key) -> int:
        provider, venue, inst = key
        return Stream(provider, venue, inst, "").owner(self.workers)

    def partition(self) -> list[SubscriptionSet]:
        """The live set split over the ingest workers."""
        return self.live.partition(self.workers)

    # -- changes -------------------------------------------------------------------------
    def resolve(
        self, provider: str, instruments: list[str], venue: str = "", data_class: str = ""
    ) -> list[Stream]:
        """Validated streams for a request (names by the configuration's rule,
        :mod:`fairfeed.core.names`); raises SubscriptionError."""
        try:
            p = self.cfg.provider(provider)
        except KeyError:
            known = ", ".join(x.name for x in self.cfg.providers)
            raise SubscriptionError(
                f"unknown provider {shown(provider)} (known: {known})"
            ) from None
        venue = venue or p.venue
        if not venue:
            raise SubscriptionError(f"provider {provider!r} serves many venues: give a venue")
        if problem := name_problem("venue", venue):
            raise SubscriptionError(problem)
        dclass = data_class or p.data_class
        if dclass not in CLASS_CODES:
            raise SubscriptionError(
                f"unknown data class {shown(dclass)} (known: {', '.join(CLASS_CODES)})"
            )
        if not instruments:
            raise SubscriptionError("no instruments given")
        for inst in instruments:
            if problem := name_problem("instrument", inst):
                raise SubscriptionError(problem)
            have = self.registry.class_of(inst)
            if have is not None and have != CLASS_CODES[dclass]:
                raise SubscriptionError(
                    f"instrument {inst!r} is already known with another data class"
                )
        return [Stream(provider, venue, inst, dclass) for inst in dict.fromkeys(instruments)]

    def add(self, streams: list[Stream]) -> Change:
        """Add ``streams`` (registering new instruments and sources first)."""
        new = [s for s in streams if s not in self.live]
        for s in new:
            self.registry.add_instrument(s.instrument, CLASS_CODES[s.data_class])
            self.registry.add_source(s.provider, s.venue)
        added = self.live.add(new)
        return Change(added, tuple(s.key for s in streams if s not in new))

    def remove(self, keys: list[Key]) -> Change:
        gone = self.live.remove(keys)
        left = {s.key for s in gone}
        return Change(gone, tuple(k for k in keys if k not in left))

    # -- state file ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the live set atomically (temp file, fsync, rename)."""
        data = orjson.dumps(
            {
                "version": STATE_VERSION,
                "config_fingerprint": fingerprint(self.cfg),
                "subscriptions": [
                    {
                        "provider": s.provider,
                        "venue": s.venue,
                        "instrument": s.instrument,
                        "data_class": s.data_class,
                    }
                    for s in self.live
                ],
            },
            option=orjson.OPT_INDENT_2,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".subscriptions-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def restore(self, path: Path) -> str:
        """Apply the rule in the module docstring; returns what happened, for the log."""
        try:
            state = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return "no state file: starting from the configuration"
        except (OSError, orjson.JSONDecodeError) as exc:
            return f"state file {path} unreadable ({exc}): starting from the configuration"
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return f"state file {path} has an unknown format: starting from the configuration"
        if state.get("config_fingerprint") != fingerprint(self.cfg):
            return (
                f"the configuration's subscriptions changed since {path} was written: "
                "the configuration wins, live changes recorded there are dropped"
            )
        providers = {p.name for p in self.cfg.providers}
        streams: list[Stream] = []
        dropped = 0
        for e in state.get("subscriptions", []):
            try:
                s = Stream(e["provider"], e["venue"], e["instrument"], e["data_class"])
            except (KeyError, TypeError):
                dropped += 1
                continue
            bad_name = any(
                name_problem(kind, value)
                for kind, value in (("venue", s.venue), ("instrument", s.instrument))
            )
            if s.provider not in providers or s.data_class not in CLASS_CODES or bad_name:
                dropped += 1
                continue
            streams.append(s)
        self.live = SubscriptionSet()
        for s in streams:
            try:
                self.add([s])
            except (ValueError, KeyError):
                dropped += 1
        extra = f", {dropped} invalid entries dropped" if dropped else ""
        return f"restored {len(self.live)} subscriptions from {path}{extra}"
