"""The hf-task2vec command line, end to end on a small real offline task."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_task2vec import TaskEmbedding, distance
from hf_task2vec.cli import main


def test_embed_and_distance(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = ["--max-samples", "48", "--image-size", "32"]
    assert main(["embed", "offline:digits", "--classes", "0,1", "--out", str(a), *common]) == 0
    assert main(["embed", "offline:digits", "--classes", "3,8", "--out", str(b), *common]) == 0
    ea, eb = TaskEmbedding.load(a), TaskEmbedding.load(b)
    assert ea.meta["label_names"] == '["0", "1"]' and ea.dim == 21_008
    capsys.readouterr()
    assert main(["distance", str(a), str(b), "--kind", "asymmetric"]) == 0
    printed = float(capsys.readouterr().out.strip())
    assert printed == pytest.approx(distance(ea, eb, kind="asymmetric"), abs=1e-6)


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["distance", str(bad), str(bad)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert main(["embed", "offline:digits", "--classes", "0", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "single class" in capsys.readouterr().err


def test_console_entry_point_and_module():
    out = subprocess.run([sys.executable, "-m", "hf_task2vec", "probes"], capture_output=True, text=True, check=True)
    assert "embedded" in out.stdout and "tf_efficientnet_lite0" in out.stdout
