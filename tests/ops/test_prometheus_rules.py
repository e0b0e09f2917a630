"""The alert rules pass `promtool check rules` and their unit tests (`promtool test rules`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

OPS = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
PROMTOOL = shutil.which("promtool")
# Required, never skipped: .ci/run installs the Debian package `prometheus`.
assert PROMTOOL, "promtool missing: apt-get install prometheus"


def _run(*args: str) -> None:
    proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_are_valid() -> None:
    _run("check", "rules", str(OPS / "fairfeed.rules.yml"))


def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (OPS / "tests").glob("*.yml"))
    assert tests
    _run("test", "rules", *tests)
