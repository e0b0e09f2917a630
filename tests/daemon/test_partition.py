from fairfeed.core import config
from fairfeed.core.partition import worker_for
from fairfeed.daemon.run import assign_subscriptions, build_registry


def test_assignment_is_stable_and_in_range() -> None:
    for n in (1, 2, 3, 8):
        for i in range(50):
            w = worker_for("kaiko", f"I{i}", n)
            assert 0 <= w < n
            assert w == worker_for("kaiko", f"I{i}", n)


def test_adding_a_worker_moves_few_subscriptions() -> None:
    keys = [f"INST-{i}" for i in range(2000)]
    before = [worker_for("p", k, 4) for k in keys]
    after = [worker_for("p", k, 5) for k in keys]
    moved = [a for b, a in zip(before, after, strict=True) if a != b]
    assert all(a == 4 for a in moved)  # only to the new worker
    assert 0.12 < len(moved) / len(keys) < 0.28  # about 1/5
    assert len(set(before)) == 4  # every worker gets some


def test_every_subscription_goes_to_exactly_one_worker() -> None:
    cfg = config.load()
    reg = build_registry(cfg)
    parts = assign_subscriptions(cfg, reg, 3)
    seen = sorted(s.key for part in parts for s in part)
    assert seen == sorted(s.key for s in cfg.streams())
    assert len(seen) == len(set(seen)) == len(cfg.streams())
    for w, part in enumerate(parts):
        assert all(s.owner(3) == w for s in part)
