"""The shape of the house (docs/design.md): small modules, no package cycle, no logic in the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hica"
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _unit(path: Path) -> str:
    """The package-level unit of a file: ``hica.<first component>`` (a top-level module or package)."""
    rel = path.relative_to(SRC).with_suffix("")
    return "hica." + rel.parts[0]


def _imports(path: Path) -> set[str]:
    """Every ``hica.*`` module the file imports, at module level or inside functions (lazy imports count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(SRC).with_suffix("")
    pkg = ["hica", *rel.parts[:-1]] if rel.name != "__init__" else ["hica", *rel.parts[:-1]]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hica"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("hica"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for path in _modules():
        src = _unit(path)
        g.add_node(src)
        for mod in _imports(path):
            parts = mod.split(".")
            if len(parts) < 2:
                continue
            dst = "hica." + parts[1]
            known = (SRC / parts[1]).exists() or (SRC / f"{parts[1]}.py").exists()
            if known and dst != src:
                g.add_edge(src, dst)
    return g


# docs/design.md's layers, lowest first: a package may import its own layer and those above it in this list.
LAYERS = [
    ["__init__", "errors", "io", "runtime", "environment", "integrity", "data", "train"],
    ["encoders", "cache"],
    ["model", "losses"],
    ["methods"],
    ["config"],
    ["eval"],
    ["report", "modelcard"],
    ["jobs", "analysis", "predict", "explain", "runs", "bench", "inventory"],
    ["serve", "cli"],
]


def test_imports_follow_the_layers() -> None:
    level = {f"hica.{name}": i for i, names in enumerate(LAYERS) for name in names}
    g = _graph()
    unknown = sorted(n for n in g.nodes if n not in level)
    assert not unknown, f"packages missing from LAYERS (and docs/design.md): {unknown}"
    upward = sorted(f"{a} -> {b}" for a, b in g.edges if level[b] > level[a])
    assert not upward, f"imports of a higher layer: {upward}"


def test_no_file_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_package_cycle() -> None:
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, "package-level import cycles (lazy imports included): " + "; ".join(
        " -> ".join([*c, c[0]]) for c in sorted(cycles, key=len)[:10]
    )


@pytest.mark.parametrize("lib", ["torch", "numpy", "hica.encoders", "hica.data.catalog", "safetensors"])
def test_cli_only_parses_and_calls(lib: str) -> None:
    """The CLI (``cli.py`` or every file of the ``cli`` package) parses arguments and calls the library: it
    builds no model and touches no tensor or dataset."""
    files = sorted(p for p in (SRC / "cli").rglob("*.py") if "__pycache__" not in p.parts)
    files += [SRC / "cli.py"] if (SRC / "cli.py").exists() else []
    assert files, "no CLI found"
    for path in files:
        names = set(_imports(path))  # hica.* modules, relative imports resolved
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)  # from hica import encoders
        rel = path.relative_to(SRC)
        assert not any(n == lib or n.startswith(lib + ".") for n in names), f"{rel} imports {lib}"


def test_graph_sees_lazy_imports() -> None:
    """The checker itself: an import inside a function is an edge."""
    f = SRC / "eval" / "episode_data.py"
    assert "hica.model.imagedata" in _imports(f)  # imported only inside a function there
