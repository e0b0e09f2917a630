from fairfeed.daemon.partition import partition, worker_for


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


def test_partition_covers_every_subscription_once() -> None:
    subs = {"a": ("X", "Y", "Z"), "b": ("X", "W")}
    parts = partition(subs, 3)
    seen = sorted((p, i) for part in parts for p, insts in part.items() for i in insts)
    assert seen == sorted((p, i) for p, insts in subs.items() for i in insts)
