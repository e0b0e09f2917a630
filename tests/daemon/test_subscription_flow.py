"""A live subscription change from the control handlers to every holder of the live set, without
a daemon: the handlers write typed commands into real pipes, and the book, the ingest workers'
sets (the supervisor's copies and the children's), the compute pipeline and the anomaly
detector apply what comes out of them."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import orjson
import pytest

from fairfeed.core import config
from fairfeed.core.records import CLASS_PERPETUAL, CLASS_SPOT
from fairfeed.core.subscriptions import Stream, Subscribe, SubscriptionSet, Unsubscribe
from fairfeed.daemon.commands import (
    CommandError,
    CommandPipe,
    CommandReader,
    GrowRegistry,
    SetLogLevel,
    decode,
    encode,
)
from fairfeed.daemon.compute import ComputeWorker, Pipeline
from fairfeed.daemon.ctl_handlers import ControlHandlers, Runtime
from fairfeed.daemon.ctl_protocol import ProtocolError
from fairfeed.daemon.ingest import IngestWorker
from fairfeed.daemon.run import build_registry
from fairfeed.daemon.subscriptions import SubscriptionBook
from fairfeed.daemon.supervisor import ChildSpec

WORKERS = 2

CONFIG = """
[daemon]
workers = 2

[[providers]]
name = "sim"
kind = "simulator"
venue = "SIMX"
url = "ws://127.0.0.1:9"

[[providers]]
name = "kaiko"
kind = "kaiko"
url = "grpc://127.0.0.1:9"
api_key_env = "FAIRFEED_TEST_FLOW_KAIKO_KEY"

[[subscriptions]]
provider = "sim"
instruments = ["BTC-USD", "ETH-USD"]

[[subscriptions]]
provider = "kaiko"
venue = "BINANCE"
data_class = "perpetual"
instruments = ["BTC-PERP"]
"""


class Child:
    """One child's end of a real command pipe (the supervisor keeps the other)."""

    def __init__(self, spec: ChildSpec) -> None:
        pipe = spec.pipe
        assert pipe is not None
        pipe.renew()
        self.reader = CommandReader(pipe.r)
        os.set_blocking(pipe.w, False)

    def read(self) -> list:
        return self.reader.read()


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("FAIRFEED_TEST_FLOW_KAIKO_KEY", "k")
    return _runtime(tmp_path, CONFIG)


def _runtime(tmp_path: Path, text: str) -> Runtime:
    cfg = config.loads(text, "<test>")
    registry = build_registry(cfg)
    book = SubscriptionBook(cfg, registry, WORKERS)
    parts = book.partition()
    workers = [
        IngestWorker(i, 1 + i, cfg, registry, None, None, parts[i], {}, None, CommandPipe())
        for i in range(WORKERS)
    ]
    comp = ComputeWorker(1 + WORKERS, cfg, registry, [], [], None, pipe=CommandPipe())
    rt = Runtime(cfg, registry, book, tmp_path / "state.json", None, [], None, workers, comp)
    rt.children = [
        *(ChildSpec(w.name, w.slot, lambda: 0, pipe=w.pipe) for w in workers),
        ChildSpec("compute", comp.slot, lambda: 0, stop_phase=2, pipe=comp.pipe),
    ]
    return rt


def _ends(rt: Runtime) -> dict[str, Child]:
    return {c.name: Child(c) for c in rt.children}


def test_commands_round_trip_through_a_pipe_and_bad_lines_are_skipped(caplog) -> None:
    pipe = CommandPipe()
    pipe.renew()
    reader = CommandReader(pipe.r)
    os.set_blocking(pipe.w, False)
    perp = Stream("kaiko", "BINANCE", "BTC-PERP", "perpetual")
    cmds = [
        GrowRegistry({"instruments": [["BTC-PERP", CLASS_PERPETUAL]], "sources": [["k", "V"]]}),
        Subscribe((perp, Stream("sim", "SIMX", "BTC-USD", "spot"))),
        Unsubscribe((perp,)),
        SetLogLevel("DEBUG"),
    ]
    for cmd in cmds[:2]:
        assert pipe.send(cmd)
    os.write(pipe.w, b'{"op": "launch"}\n{"op": "subscribe", "streams": [["a", "b"]]}\nnot json\n')
    for cmd in cmds[2:]:
        assert pipe.send(cmd)
    with caplog.at_level(logging.ERROR):
        got = reader.read()
    # JSON turns tuples into lists: compare the re-encoded form for the snapshot
    assert got[1:] == cmds[1:] and encode(got[0]) == encode(cmds[0])
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "bad command from the supervisor"
    ] * 3
    assert "unknown command 'launch'" in caplog.records[0].getMessage()
    with pytest.raises(CommandError, match="malformed"):
        decode(b'{"op": "unsubscribe"}')
    pipe.close()


def test_subscribe_grows_the_registry_first_and_reaches_only_the_owner(rt: Runtime) -> None:
    ends = _ends(rt)
    handlers = ControlHandlers(rt)
    new = ["SOL-USD", "XRP-USD", "ADA-USD", "DOT-USD"]
    result = handlers("subscribe", {"provider": "sim", "instruments": new})
    assert [a["instrument"] for a in result["added"]] == new and result["already"] == []
    streams = [Stream("sim", "SIMX", i, "spot") for i in new]
    assert all(s in rt.book.live for s in streams)
    assert {s.owner(WORKERS) for s in streams} == {0, 1}  # the test covers both workers

    for w in rt.workers:
        mine = tuple(s for s in streams if s.owner(WORKERS) == w.index)
        got = ends[w.name].read()
        # registry growth first, then only this worker's streams
        assert isinstance(got[0], GrowRegistry) and got[1:] == [Subscribe(mine)]
        # the supervisor's copy changed by the same rule the child applies
        assert all(s in w.subs for s in mine) and not any(
            s in w.subs for s in streams if s not in mine
        )
    got = ends["compute"].read()
    assert isinstance(got[0], GrowRegistry) and got[1:] == [Subscribe(tuple(streams))]
    assert rt.registry.instrument_id("DOT-USD") == 6  # after the three configured

    state = orjson.loads(rt.state_path.read_bytes())
    assert {e["instrument"] for e in state["subscriptions"]} >= set(new)

    # again: nothing new, nothing sent
    result = handlers("subscribe", {"provider": "sim", "instruments": new[:1]})
    assert result["added"] == [] and len(result["already"]) == 1
    assert all(e.read() == [] for e in ends.values())


def test_unsubscribe_carries_the_data_class_of_what_was_removed(rt: Runtime) -> None:
    ends = _ends(rt)
    handlers = ControlHandlers(rt)
    perp = Stream("kaiko", "BINANCE", "BTC-PERP", "perpetual")
    owner = rt.workers[perp.owner(WORKERS)]
    assert perp in owner.subs
    result = handlers(
        "unsubscribe",
        {"provider": "kaiko", "venue": "BINANCE", "data_class": "perpetual",
         "instruments": ["BTC-PERP", "ETH-PERP"]},
    )  # fmt: skip
    assert [r["instrument"] for r in result["removed"]] == ["BTC-PERP"]
    assert [a["instrument"] for a in result["absent"]] == ["ETH-PERP"]
    assert ends[owner.name].read() == [Unsubscribe((perp,))]
    assert ends["compute"].read() == [Unsubscribe((perp,))]
    other = rt.workers[1 - owner.index]
    assert ends[other.name].read() == []
    assert perp not in owner.subs and perp not in rt.book.live


def test_bad_requests_change_nothing(rt: Runtime) -> None:
    ends = _ends(rt)
    handlers = ControlHandlers(rt)
    before = list(rt.book.live)
    for args in (
        {"provider": "nope", "instruments": ["BTC-USD"]},
        {"provider": "sim", "instruments": ["btc usd"]},
        {"provider": "sim", "instruments": ["BTC-PERP"]},  # known as perpetual, asked as spot
        {"provider": "sim", "instruments": []},
    ):
        with pytest.raises(ProtocolError) as err:
            handlers("subscribe", args)
        assert err.value.code == "invalid_argument"
    assert list(rt.book.live) == before and all(e.read() == [] for e in ends.values())


def test_kraken_futures_names_are_checked_as_at_load(tmp_path: Path) -> None:
    """A live subscription the adapter could not map (no product, or a product of another
    data class) is refused like one in the configuration, before any worker sees it."""
    rt = _runtime(tmp_path, (
        '[daemon]\nworkers = 2\n[[providers]]\nname = "kf"\nkind = "kraken_futures"\n'
        'venue = "KRAKEN_FUTURES"\nurl = "ws://127.0.0.1:9"\ndata_class = "perpetual"\n'
        '[providers.options]\nproducts = { "BTC-USD-INV" = "PI_XBTUSD" }\n'
        '[[subscriptions]]\nprovider = "kf"\ninstruments = ["BTC-USD-PERP"]\n'
    ))  # fmt: skip
    ends = _ends(rt)
    handlers = ControlHandlers(rt)
    refused = (
        ("BTC-USD", "perpetual", "no Kraken Futures product"),
        ("BTC-USD-250328", "perpetual", "a future, subscribed as perpetual"),
        ("BTC-USD-INV", "future", "a perpetual, subscribed as future"),
    )
    for inst, dclass, why in refused:
        with pytest.raises(ProtocolError, match=why) as err:
            handlers("subscribe", {"provider": "kf", "instruments": [inst], "data_class": dclass})
        assert err.value.code == "invalid_argument"
    assert all(e.read() == [] for e in ends.values())
    handlers("subscribe", {"provider": "kf", "instruments": ["BTC-USD-INV", "ETH-USD-PERP"]})
    assert {s.instrument for s in rt.book.live} == {"BTC-USD-PERP", "BTC-USD-INV", "ETH-USD-PERP"}


def test_reload_sends_the_difference(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "fairfeed.toml"
    path.write_text(CONFIG)
    rt.cfg = config.load(path)
    rt.book.cfg = rt.cfg
    ends = _ends(rt)
    handlers = ControlHandlers(rt)
    path.write_text(CONFIG.replace('["BTC-USD", "ETH-USD"]', '["BTC-USD", "LTC-USD"]'))
    result = handlers("reload", {})
    assert [s["instrument"] for s in result["subscribed"]] == ["LTC-USD"]
    assert [s["instrument"] for s in result["unsubscribed"]] == ["ETH-USD"]
    got = ends["compute"].read()
    eth, ltc = Stream("sim", "SIMX", "ETH-USD", "spot"), Stream("sim", "SIMX", "LTC-USD", "spot")
    assert got[0] == Unsubscribe((eth,)) and isinstance(got[1], GrowRegistry)
    assert got[2] == Subscribe((ltc,))
    assert eth not in rt.book.live and ltc in rt.book.live


def test_the_worker_applies_commands_to_its_adapters(rt: Runtime) -> None:
    """The child side: a live-changing adapter (simulator) is told what changed; one that
    cannot change an open session (Kaiko) is replaced with the new set."""
    worker = next(w for w in rt.workers if w.subs.of_provider("sim"))
    sim = next(s for s in worker.subs if s.provider == "sim")
    rt.registry.add_instrument("SOL-USD", CLASS_SPOT)
    rt.registry.add_instrument("BTC-PERP2", CLASS_PERPETUAL)
    rt.registry.add_source("kaiko", "OKX")

    async def scenario() -> None:
        worker.counters = None
        worker._emit = lambda records: None
        worker.adapters, worker.tasks, worker._pending = {}, {}, set()
        worker.urls = {"sim": "ws://127.0.0.1:9", "kaiko": "grpc://127.0.0.1:9"}
        for provider in worker.subs.providers():
            worker._start_adapter(provider, worker.subs.resolve(worker.registry, provider))
        adapter = worker.adapters["sim"]
        added: list = []
        adapter.add = added.extend  # observe the call; the adapter itself is real
        sol = Stream("sim", "SIMX", "SOL-USD", "spot")
        worker.apply(Subscribe((sol,)))
        assert [s.instrument for s in added] == ["SOL-USD"] and worker.adapters["sim"] is adapter
        assert sol in worker.subs
        # unsubscribing every sim stream stops its adapter
        worker.apply(Unsubscribe(tuple(worker.subs.of_provider("sim"))))
        await asyncio.gather(*worker._pending)
        assert "sim" not in worker.adapters and sim not in worker.subs
        # Kaiko cannot change an open session: its adapter is replaced with the whole new set
        perp = Stream("kaiko", "OKX", "BTC-PERP2", "perpetual")
        worker.apply(Subscribe((perp,)))
        await asyncio.gather(*worker._pending)
        kaiko = worker.adapters["kaiko"]
        assert perp.key in {(s.provider, s.venue, s.instrument) for s in kaiko.ctx.subscriptions}
        # a log level command
        worker.apply(SetLogLevel("WARNING"))
        assert logging.getLogger().level == logging.WARNING
        for provider in list(worker.adapters):
            await worker._stop_adapter(provider)

    level = logging.getLogger().level
    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger().setLevel(level)


def test_the_pipeline_follows_the_live_set(rt: Runtime) -> None:
    pipe = Pipeline(rt.cfg, rt.registry, None, None, None, live=rt.book.live)
    btc = rt.registry.instrument_id("BTC-USD")
    assert pipe.live == rt.book.live and pipe.active[btc] == 1
    det = pipe.anomalies
    assert det is not None and len(det.streams) == 3

    rt.registry.add_instrument("SOL-USD", CLASS_SPOT)
    rt.registry.add_source("sim", "SIMY")  # a new venue of a configured provider
    pipe.command(GrowRegistry(rt.registry.snapshot()))
    assert pipe.registry.source_id("sim", "SIMY") == 2
    assert pipe.source_table[pipe.registry.provider_id("sim"), pipe.registry.venue_id("SIMY")] == 2

    sol = Stream("sim", "SIMY", "SOL-USD", "spot")
    pipe.command(Subscribe((sol,)))
    sol_id = rt.registry.instrument_id("SOL-USD")
    assert sol in pipe.live and pipe.active[sol_id] == 1 and sol.key in det.index
    pipe.command(Subscribe((sol,)))  # already there: counted once
    assert pipe.active[sol_id] == 1
    pipe.command(Unsubscribe((sol,)))
    assert sol not in pipe.live and pipe.active[sol_id] == 0
    pipe.command(Subscribe((sol,)))  # re-subscribed: the detector keeps its place
    assert pipe.active[sol_id] == 1 and len(det.streams) == 4
    assert SubscriptionSet(det.streams) == SubscriptionSet([*rt.book.live, sol])
