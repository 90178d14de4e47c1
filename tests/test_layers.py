"""The library's imports point one way (README, Development): nothing imports a module of a higher layer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hf_task2vec"
# a module may import its own layer or lower ones, never a higher one
LAYERS = {
    0: ["_version", "errors", "gateway", "data", "sampling", "head", "embedding", "checks", "lifeline", "locking",
        "compat", "upload_safety"],
    1: ["probes", "text_probes", "onnx_text", "columns", "uploads", "tasks", "pipeline"],
    2: ["fisher", "robust", "distance", "_dsym_kernels", "ann", "transferability", "task2vec", "model2vec", "plots",
        "diversity"],
    3: ["selection", "rerank", "matches", "experts", "expert_search", "hub", "distributed", "batch"],
    4: ["cli", "commands", "__init__", "__main__"],
}
LEVEL = {m: level for level, names in LAYERS.items() for m in names}


def _top(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def test_every_module_has_a_layer_and_no_import_runs_up():
    upward, unplaced = [], set()
    for path in ROOT.rglob("*.py"):
        me = _top(path)
        if me not in LEVEL:
            unplaced.add(me)
            continue
        depth = len(path.relative_to(ROOT).parts) - 1  # inside a sub-package
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            if node.level - 1 < depth:  # relative to the sub-package itself
                continue
            target = (node.module or "").split(".")[0]
            names = [target] if target else [alias.name for alias in node.names]
            for name in names:
                if name in LEVEL and LEVEL[name] > LEVEL[me]:
                    upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not unplaced, f"modules without a layer in this test: {sorted(unplaced)}"
    assert not upward, upward
