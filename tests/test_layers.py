"""The package layers import one way only: a module may import its own layer and those below.

core ← hotpath ← ipc ← providers, kafka ← local ← daemon (docs/architecture.md). Imports inside
functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "fairfeed"

#: layer -> rank; a module may import layers of lower or equal rank (providers and kafka are
#: siblings: neither imports the other).
RANK = {"core": 0, "hotpath": 1, "ipc": 2, "providers": 3, "kafka": 3, "local": 4, "daemon": 5}
#: top-level modules of the package and the layer they sit in
TOP = {"__init__": "core", "__main__": "daemon", "cli": "daemon"}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "core"
    return TOP.get(parts[1], parts[1])


def _imports(path: Path) -> list[tuple[int, str]]:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    package = list(rel.parts[:-1])  # a module's package; for __init__ the package itself
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod.startswith("fairfeed"):  # `from fairfeed.x import y`: y may be a module
                for a in node.names:
                    sub = ROOT.parent.joinpath(*f"{mod}.{a.name}".split("."))
                    if sub.is_dir() or sub.with_suffix(".py").is_file():
                        out.append((node.lineno, f"{mod}.{a.name}"))
    return [(line, m) for line, m in out if m == "fairfeed" or m.startswith("fairfeed.")]


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_layer_is_known() -> None:
    layers = {
        p.relative_to(ROOT).parts[0] for p in _modules() if len(p.relative_to(ROOT).parts) > 1
    }
    assert layers <= set(RANK), f"packages without a layer: {sorted(layers - set(RANK))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_flow_down(path: Path) -> None:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    own = _layer(".".join(rel.parts))
    bad = []
    for line, mod in _imports(path):
        if mod == "fairfeed":
            continue
        target = _layer(mod)
        if target == own:
            continue
        if RANK[target] >= RANK[own]:
            bad.append(f"line {line}: {own} imports {mod} ({target})")
    assert not bad, f"{path.relative_to(ROOT.parent)} imports upward or sideways:\n" + "\n".join(
        bad
    )


def test_core_imports_nothing_else_of_ours() -> None:
    for path in (ROOT / "core").rglob("*.py"):
        for line, mod in _imports(path):
            assert mod == "fairfeed" or _layer(mod) == "core", f"{path}:{line} imports {mod}"


def test_the_provider_template_stays_in_the_providers_layer() -> None:
    """A copy of docs/providers/template/ becomes fairfeed/providers/<kind>/: it must import
    only what a provider may."""
    template = ROOT.parent / "docs" / "providers" / "template"
    files = sorted(template.glob("*.py"))
    assert files
    for path in files:
        for line, mod in _imports(path):
            if mod == "fairfeed":
                continue
            layer = _layer(mod)
            ok = layer == "providers" or RANK[layer] < RANK["providers"]
            assert ok, f"{path.name}:{line} imports {mod} ({layer})"
