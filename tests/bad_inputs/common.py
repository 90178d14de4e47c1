"""Shared helpers of the bad-input battery (tests/bad_inputs): run the CLI, snapshot folders,
make tiny embeddings and tasks."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def snapshot(root: str | os.PathLike[str]) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (hidden ones too): relative path -> (sha256, mode)."""
    root = Path(root)
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
    return out


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """``hf_task2vec.cli.main(argv)`` in this process: (exit status, stderr)."""
    from hf_task2vec.cli import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one error line of a failed command (stderr may also hold progress bars or warnings)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hf-task2vec")]
    assert len(lines) == 1, f"expected one 'hf-task2vec ...: error: ...' line, got:\n{err}"
    return lines[0]


def assert_says(text: str, *needles: str) -> None:
    """``text`` contains every needle (case-insensitive): the input at fault and the fix."""
    low = text.lower()
    missing = [n for n in needles if n.lower() not in low]
    assert not missing, f"message lacks {missing}: {text}"


def run_cli(args: list[str], *, cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m hf_task2vec ARGS`` in a fresh process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hf_task2vec", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_embedding(task: str = "t", seed: int = 0, dim: int = 16, **meta: str):
    from hf_task2vec import TaskEmbedding

    rng = np.random.default_rng(seed)
    base = {"task": task, "probe": "tiny", "probe_revision": "r1", "method": "montecarlo", "image_size": "32",
            "num_samples": "10", "label_names": json.dumps(["a", "b"])}
    base.update(meta)
    return TaskEmbedding(rng.gamma(2.0, 1e-3, dim), np.full(dim, 1e-4), [("a", 0, dim // 2), ("b", dim // 2, dim)],
                         base)
