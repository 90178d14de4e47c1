"""`hf-task2vec demo` on the real offline data and probe: the first thing a newcomer runs (issue 21)."""

from __future__ import annotations

import re

import pytest

from hf_task2vec.cli import main


@pytest.mark.slow
def test_demo_finds_same_dataset_neighbours_and_states_the_noise(tmp_path, capsys):
    """With the default estimator the nearest task comes from the task's own dataset for at least 10 of
    the 12 demo tasks (round two's default: 4, chance), and the output gives the resampling noise the
    distances are to be read against (seeded: deterministic on one machine)."""
    out = tmp_path / "heatmap.png"
    assert main(["demo", "--out", str(out), "--image-size", "32", "--max-samples", "100"]) == 0
    text = capsys.readouterr().out
    same = int(re.search(r"(\d+)/12 tasks have their nearest neighbour in the same source dataset", text).group(1))
    assert same >= 10, text
    noise = float(re.search(r"lies (\d+\.\d+) from itself", text).group(1))
    nearest = [float(x) for x in re.findall(r"-> .+? (\d+\.\d+)  \(", text)]
    assert len(nearest) == 12 and noise > 0
    assert sorted(nearest)[len(nearest) // 2] > 2 * noise, (noise, nearest)  # most neighbours well beyond the noise
    assert "relative Fisher" in text and "data norm" in text
    assert out.stat().st_size > 10_000
