"""Imports between the library's modules run one way: no cycles, counting *every* import (module level,
inside functions, under ``TYPE_CHECKING``, ``importlib.import_module("...")``). tests/test_layers.py checks
the layers; this checks the direction inside a layer too (issue 22: rerank <-> selection, probes <->
text_probes imported each other)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hf_task2vec"


def _name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, package: str) -> list[str]:
    """Dotted names an import node (or an ``import_module("...")`` call) may load."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        return [module, *(f"{module}.{a.name}" for a in node.names)]
    if (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        target = node.args[0].value
        if target.startswith("."):
            level = len(target) - len(target.lstrip("."))
            base = package.split(".")[: len(package.split(".")) - (level - 1)]
            target = ".".join(base + [target.lstrip(".")]).rstrip(".")
        return [target]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the library modules it imports anywhere in its source (the package ``hf_task2vec`` itself
    left out: importing any submodule runs it first anyway)."""
    modules = {_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, package):
                while target and target not in modules:  # `from .x import y`: y is a name or a submodule
                    target = target.rpartition(".")[0]
                if target and target not in (name, "hf_task2vec"):
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions_and_type_checking_blocks():
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from ..c import d\n    import importlib\n    importlib.import_module('.e', 'p')\n"
    )
    found = [t for node in ast.walk(ast.parse(source)) for t in _imported(node, "p.q")]
    assert {"p.q.b", "p.c", "p.c.d", "p.q.e"} <= set(found)


def test_no_import_cycles_in_the_library():
    cycles = _cycles(import_graph())
    assert not cycles, f"modules that import each other (directly or around a loop): {cycles}"


def test_rerank_and_text_probes_depend_one_way():
    graph = import_graph()
    # selection delegates select(..., rerank=...) to rerank; both share ExpertMatch from matches
    assert "hf_task2vec.rerank" in graph["hf_task2vec.selection"]
    assert "hf_task2vec.selection" not in graph["hf_task2vec.rerank"]
    assert "hf_task2vec.matches" in graph["hf_task2vec.rerank"]
    # text_probes builds on Probe and registers its loader; probes never imports it
    assert "hf_task2vec.probes" in graph["hf_task2vec.text_probes"]
    assert "hf_task2vec.text_probes" not in graph["hf_task2vec.probes"]


def test_load_probe_builds_text_probes_without_importing_text_probes_first():
    """`load_probe("embedded-text")` works for a caller that only imports hf_task2vec.probes: the package's
    __init__ (which Python runs first) imports text_probes, which registers the text loader."""
    code = (
        "import sys\n"
        "from hf_task2vec.probes import load_probe, _LOADERS\n"
        "assert 'text' in _LOADERS, sorted(_LOADERS)\n"
        "probe = load_probe('minilm-offline')\n"
        "assert type(probe).__name__ == 'TextProbe' and probe.dim == 20_736, probe\n"
        "from hf_task2vec.selection import ExpertMatch\n"
        "from hf_task2vec.rerank import RerankedMatch\n"
        "assert issubclass(RerankedMatch, ExpertMatch)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
