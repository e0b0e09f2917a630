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
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from fairfeed.core.config import Config
from fairfeed.core.partition import worker_for
from fairfeed.core.records import CLASS_CODES
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription

log = logging.getLogger(__name__)

STATE_VERSION = 1
INSTRUMENT_NAME = re.compile(r"[A-Z0-9][A-Z0-9._/-]{0,47}")

Key = tuple[str, str, str]  # provider, venue, instrument


class SubscriptionError(ValueError):
    """A subscription request names something invalid (the message says what)."""


@dataclass(frozen=True)
class Change:
    """What an add or remove did."""

    changed: tuple[Key, ...]  # added (or removed)
    unchanged: tuple[Key, ...]  # already there (or not there)


def fingerprint(cfg: Config) -> str:
    """Hash of the configuration's subscriptions (what the state file was derived from)."""
    data = orjson.dumps(sorted(cfg.subscription_keys()))
    return hashlib.sha256(data).hexdigest()[:16]


def default_state_file() -> Path:
    base = os.environ.get("STATE_DIRECTORY") or os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base else Path.home() / ".local" / "state"
    return root / "fairfeed" / "subscriptions.json"


class SubscriptionBook:
    """The live set: which (provider, venue, instrument) is streamed, and by which worker."""

    def __init__(self, cfg: Config, registry: Registry, workers: int) -> None:
        self.cfg = cfg
        self.registry = registry
        self.workers = workers
        self.entries: dict[Key, str] = {}  # key -> data class
        for provider, venue, inst, dclass in cfg.subscription_keys():
            self.entries[(provider, venue, inst)] = dclass

    # -- queries -------------------------------------------------------------------------
    def worker_of(self, key: Key) -> int:
        provider, venue, inst = key
        return worker_for(provider, f"{venue}:{inst}", self.workers)

    def subscription(self, key: Key) -> Subscription:
        return Subscription.resolve(self.registry, *key, self.entries[key])

    def assignments(self) -> list[dict[str, tuple[Subscription, ...]]]:
        """Per ingest worker: provider -> its subscriptions there."""
        parts: list[dict[str, list[Subscription]]] = [{} for _ in range(self.workers)]
        for key in self.entries:
            parts[self.worker_of(key)].setdefault(key[0], []).append(self.subscription(key))
        return [{p: tuple(s) for p, s in part.items()} for part in parts]

    # -- changes -------------------------------------------------------------------------
    def resolve(
        self, provider: str, instruments: list[str], venue: str = "", data_class: str = ""
    ) -> tuple[list[Key], str]:
        """Validated keys for a request, and the data class; raises SubscriptionError."""
        try:
            p = self.cfg.provider(provider)
        except KeyError:
            known = ", ".join(x.name for x in self.cfg.providers)
            raise SubscriptionError(f"unknown provider {provider!r} (known: {known})") from None
        venue = venue or p.venue
        if not venue:
            raise SubscriptionError(f"provider {provider!r} serves many venues: give a venue")
        dclass = data_class or p.data_class
        if dclass not in CLASS_CODES:
            raise SubscriptionError(
                f"unknown data class {dclass!r} (known: {', '.join(CLASS_CODES)})"
            )
        if not instruments:
            raise SubscriptionError("no instruments given")
        for inst in instruments:
            if not isinstance(inst, str) or not INSTRUMENT_NAME.fullmatch(inst):
                raise SubscriptionError(
                    f"invalid instrument {inst!r}: use upper-case canonical names like BTC-USD"
                )
            have = self.registry.class_of(inst)
            if have is not None and have != CLASS_CODES[dclass]:
                raise SubscriptionError(
                    f"instrument {inst!r} is already known with another data class"
                )
        return [(provider, venue, inst) for inst in dict.fromkeys(instruments)], dclass

    def add(self, keys: list[Key], data_class: str) -> Change:
        """Add ``keys`` (registering new instruments and sources)."""
        new = [k for k in keys if k not in self.entries]
        for provider, venue, inst in new:
            self.registry.add_instrument(inst, CLASS_CODES[data_class])
            self.registry.add_source(provider, venue)
        for k in new:
            self.entries[k] = data_class
        return Change(tuple(new), tuple(k for k in keys if k not in new))

    def remove(self, keys: list[Key]) -> Change:
        gone = [k for k in keys if k in self.entries]
        for k in gone:
            del self.entries[k]
        return Change(tuple(gone), tuple(k for k in keys if k not in gone))

    # -- state file ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the live set atomically (temp file, fsync, rename)."""
        data = orjson.dumps(
            {
                "version": STATE_VERSION,
                "config_fingerprint": fingerprint(self.cfg),
                "subscriptions": [
                    {"provider": p, "venue": v, "instrument": i, "data_class": c}
                    for (p, v, i), c in self.entries.items()
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
        entries: dict[Key, str] = {}
        dropped = 0
        for e in state.get("subscriptions", []):
            try:
                key = (e["provider"], e["venue"], e["instrument"])
                dclass = e["data_class"]
            except (KeyError, TypeError):
                dropped += 1
                continue
            if key[0] not in providers or dclass not in CLASS_CODES:
                dropped += 1
                continue
            entries[key] = dclass
        self.entries = {}
        for key, dclass in entries.items():
            try:
                self.add([key], dclass)
            except (ValueError, KeyError):
                dropped += 1
        extra = f", {dropped} invalid entries dropped" if dropped else ""
        return f"restored {len(self.entries)} subscriptions from {path}{extra}"
