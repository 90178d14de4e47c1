"""Bad options and inputs on the command line: each ends with exit status 2 and ONE line on stderr
(``hf-task2vec COMMAND: error: ...``) that names the input and the fix, before any computation,
and writes nothing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bad_inputs.common import REPO, assert_says, error_line, run_cli, run_main, snapshot, tiny_embedding

FAST = ["--max-samples", "16", "--image-size", "32"]


def png(seed: int, size: int = 12) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{c}{i}.png").write_bytes(png(hash((c, i)) % 1000))
    return root


# -- options, validated before anything is loaded ------------------------------------------------
OPTION_CASES = {
    "max-samples-0": (["--max-samples", "0"], ["--max-samples", "at least 1", "got 0"]),
    "batch-size-0": (["--batch-size", "0"], ["--batch-size", "at least 1", "got 0"]),
    "n-samples-0": (["--n-samples", "0"], ["--n-samples", "at least 1", "got 0"]),
    "image-size-0": (["--image-size", "0"], ["--image-size", "at least", "got 0"]),
    "image-size-1": (["--image-size", "1"], ["--image-size", "at least", "got 1"]),
    "seed-negative": (["--seed", "-1"], ["--seed", "got -1"]),
    "device-bogus": (["--device", "bogus"], ["--device", "'bogus'", "cpu", "cuda"]),
    # issue 23 item 5: upper bounds, with the bound and the reason (these used to hang or end in a traceback)
    "n-samples-huge": (["--n-samples", "1000000000000"], ["--n-samples", "at most 1000", "backward pass"]),
    "image-size-huge": (["--image-size", "100000"], ["--image-size", "at most 1024", "GB", "per 100000-px image"]),
    "batch-size-over-memory": (["--image-size", "1024", "--batch-size", "8000", "--device", "cpu"],
                               ["--image-size 1024", "--batch-size 8000", "GB", "lower --batch-size to at most"]),
    "seed-huge": (["--seed", str(2**70)], ["--seed", "at most 4294967295", "2^32 - 1"]),
}


@pytest.mark.parametrize("case", list(OPTION_CASES), ids=list(OPTION_CASES))
def test_bad_embed_option(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra, needles = OPTION_CASES[case]
    argv = ["embed", "offline:digits", "--classes", "0,1", "--max-samples", "16", *extra]
    rc, err = run_main(argv, capsys)
    assert rc == 2
    assert_says(error_line(err), *needles)
    assert snapshot(tmp_path) == {}


def test_device_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["embed", "offline:digits", "--classes", "0,1", *FAST, "--device", "cuda"], capsys)
    assert rc == 2
    assert_says(error_line(err), "--device", "cuda", "no CUDA GPU", "cpu")
    assert snapshot(tmp_path) == {}


def test_fewer_samples_than_classes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["embed", "offline:digits", "--classes", "0,1,2", "--max-samples", "2"], capsys)
    assert rc == 2
    assert_says(error_line(err), "max_samples", "3 classes", "at least")
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf"])
def test_distance_alpha_not_finite(alpha, tmp_path, capsys):
    a = tiny_embedding("a", 0).save(tmp_path / "a.safetensors")
    b = tiny_embedding("b", 1).save(tmp_path / "b.safetensors")
    before = snapshot(tmp_path)
    rc, err = run_main(["distance", str(a), str(b), "--kind", "asymmetric", f"--alpha={alpha}"], capsys)
    assert rc == 2
    assert_says(error_line(err), "--alpha", alpha, "finite")
    assert capsys.readouterr().out == ""
    assert snapshot(tmp_path) == before


def test_distance_needs_two_files(tmp_path, capsys):
    a = tiny_embedding("a", 0).save(tmp_path / "a.safetensors")
    rc, err = run_main(["distance", str(a)], capsys)
    assert rc == 2
    assert_says(error_line(err), "two embedding files")


def test_distance_missing_file(tmp_path, capsys):
    a = tiny_embedding("a", 0).save(tmp_path / "a.safetensors")
    rc, err = run_main(["distance", str(a), str(tmp_path / "nope.safetensors")], capsys)
    assert rc == 2
    assert_says(error_line(err), "nope.safetensors", "does not exist")


def test_distance_incompatible_embeddings(tmp_path, capsys):
    a = tiny_embedding("a", 0).save(tmp_path / "a.safetensors")
    b = tiny_embedding("b", 1, probe="other").save(tmp_path / "b.safetensors")
    rc, err = run_main(["distance", str(a), str(b)], capsys)
    assert rc == 2
    assert_says(error_line(err), "cannot compare", "probe", "same --probe")


def test_nearest_k_zero(tmp_path, capsys):
    q = tiny_embedding("q", 0).save(tmp_path / "q.safetensors")
    store = tmp_path / "store"
    assert run_main(["push", str(q), "--repo", str(store)], capsys)[0] == 0
    before = snapshot(tmp_path)
    rc, err = run_main(["nearest", str(q), "--repo", str(store), "-k", "0"], capsys)
    assert rc == 2
    assert_says(error_line(err), "-k", "at least 1", "got 0")
    assert snapshot(tmp_path) == before


def test_pull_from_a_missing_local_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["pull", "--repo", "./typo", "--out", "got"], capsys)
    assert rc == 2
    assert_says(error_line(err), "./typo", "does not exist")
    assert snapshot(tmp_path) == {}


# -- sources ---------------------------------------------------------------------------------------
def test_missing_relative_path_is_reported_quickly(tmp_path):
    """``data/cats`` looks like a Hub id; with the Hub unreachable the command must still say that no
    such local path exists, after two tries of the Hub (not four plus a second round of retries
    inside ``datasets``, ~30 s before). Counted from the retry warnings, not timed."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    out = run_cli(["embed", "data/cats", *FAST], cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 2, out.stderr
    assert_says(error_line(out.stderr), "data/cats", "no local", "hub", "after 2 tries")
    assert out.stderr.count("retry 1/") == 1 and "retry 2/" not in out.stderr, out.stderr
    assert "thrown while requesting" not in out.stderr, out.stderr  # no retries inside datasets/huggingface_hub
    assert snapshot(tmp_path) == {}


def test_missing_dot_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["embed", "./cats", *FAST], capsys)
    assert rc == 2
    assert_says(error_line(err), "./cats", "does not exist")


def test_single_class_folder(tmp_path, capsys, monkeypatch):
    data = image_folder(tmp_path / "data", {"cat": 4})
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["embed", str(data), *FAST, "--out", "x.safetensors"], capsys)
    assert rc == 2
    assert_says(error_line(err), "single class", "cat", "another class")
    assert snapshot(tmp_path) == before


def test_one_example_per_class(tmp_path, capsys, monkeypatch):
    data = image_folder(tmp_path / "data", {"cat": 1, "dog": 1})
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["embed", str(data), *FAST, "--out", "x.safetensors"], capsys)
    assert rc == 2
    assert_says(error_line(err), "1 example", "at least 2")
    assert snapshot(tmp_path) == before


def test_zero_byte_parquet(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.parquet").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["embed", "empty.parquet", *FAST], capsys)
    assert rc == 2
    assert_says(error_line(err), "empty.parquet", "empty")
    assert snapshot(tmp_path) == before


def test_float_label_column(tmp_path, capsys, monkeypatch):
    import pandas as pd

    frame = pd.DataFrame({"image": [{"bytes": png(i), "path": None} for i in range(6)],
                          "label": [0.1, 0.7, 1.3, 0.2, 1.9, 2.5]})
    frame.to_parquet(tmp_path / "floats.parquet")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["embed", "floats.parquet", *FAST], capsys)
    assert rc == 2
    assert_says(error_line(err), "'label'", "float", "integer")
    assert snapshot(tmp_path) == before


def test_unknown_class(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["embed", "offline:digits", "--classes", "0,ten", *FAST], capsys)
    assert rc == 2
    assert_says(error_line(err), "'ten'", "its classes are")
    assert snapshot(tmp_path) == {}


# -- the output location, checked before the computation -------------------------------------------
def _corrupt_folder(root: Path) -> Path:
    """Two classes whose images fail to decode only when the embedding starts: a run that checks
    ``--out`` late reports the image, one that checks it first reports ``--out``."""
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{c}{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_out_is_a_directory(tmp_path, capsys, monkeypatch):
    data = _corrupt_folder(tmp_path / "data")
    (tmp_path / "out.safetensors").mkdir()
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["embed", str(data), *FAST, "--out", "out.safetensors"], capsys)
    assert rc == 2
    assert_says(error_line(err), "--out", "out.safetensors", "directory")
    assert snapshot(tmp_path) == before


def test_out_parent_is_a_file(tmp_path, capsys, monkeypatch):
    data = _corrupt_folder(tmp_path / "data")
    (tmp_path / "file.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["embed", str(data), *FAST, "--out", "file.txt/e.safetensors"], capsys)
    assert rc == 2
    assert_says(error_line(err), "--out", "file.txt", "not a directory")
    assert snapshot(tmp_path) == before


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount(name, options)``: a fresh tmpfs under tmp_path (root only), unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a read-only or full target needs a tmpfs mount, which needs root")
        target = tmp_path / name
        target.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_out_on_a_read_only_file_system(tmp_path, capsys, monkeypatch, mount_tmpfs):
    data = _corrupt_folder(tmp_path / "data")
    ro = mount_tmpfs("ro", "ro,size=1m")
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["embed", str(data), *FAST, "--out", str(ro / "e.safetensors")], capsys)
    assert rc == 2
    assert_says(error_line(err), "--out", "read-only", "another")
    assert snapshot(ro) == {}


def test_out_on_a_full_disk(tmp_path, capsys, monkeypatch, mount_tmpfs):
    """A 64 KiB file system cannot take a 21,008-filter embedding (~170 KB): refused up front."""
    data = _corrupt_folder(tmp_path / "data")
    full = mount_tmpfs("full", "size=64k")
    (full / "keep.bin").write_bytes(b"k" * 1000)
    before = snapshot(full)
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["embed", str(data), *FAST, "--out", str(full / "e.safetensors")], capsys)
    assert rc == 2
    assert_says(error_line(err), "--out", "free", "space")
    assert snapshot(full) == before


def test_embed_fails_on_the_data_when_out_is_fine(tmp_path, capsys, monkeypatch):
    """The control of the tests above: with a good ``--out`` the same folder fails on its images."""
    data = _corrupt_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["embed", str(data), *FAST, "--out", "e.safetensors"], capsys)
    assert rc == 2
    # issue 23 item 6: the file is named, not only its row number
    assert_says(error_line(err), "cannot be decoded", "remove or replace that file", "data/cat/cat0.png")
    assert snapshot(tmp_path) == before


# -- interruption ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigint_during_a_run(tmp_path):
    """Ctrl-C in the middle of the Fisher pass: exit status 130, one line, no output file, no temp file."""
    import threading

    out = tmp_path / "e.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_task2vec", "embed", "offline:digits", "--max-samples", "1500", "--image-size", "64",
         "--method", "exact", "--out", str(out)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        # a run launched in the background by a shell without job control inherits SIGINT ignored
        # (POSIX), and then Python installs no KeyboardInterrupt handler: give the child the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    chunks: list[bytes] = []

    def pump() -> None:
        while data := os.read(proc.stderr.fileno(), 4096):
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            seen = b"".join(chunks)
            if b"features" in seen or b"fisher" in seen:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {b''.join(chunks)!r}"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:  # a loaded CI box can take a while to reach the next Python instruction
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit 180 s after SIGINT; stderr so far: {b''.join(chunks)[-2000:]!r}")
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = b"".join(chunks).decode(errors="replace").replace("\r", "\n")
    assert proc.returncode == 130, err
    assert_says(error_line(err), "interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_select_k_zero_is_refused_before_the_query_is_embedded(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["select", "offline:digits", "--classes", "0,1", "--experts", "idx", "-k", "0"], capsys)
    assert rc == 2
    assert_says(error_line(err), "-k", "at least 1", "got 0")
    rc, err = run_main(["select", "offline:digits", "--experts", "idx", "--alpha", "nan"], capsys)
    assert rc == 2
    assert_says(error_line(err), "--alpha", "finite")
    assert snapshot(tmp_path) == {}


def test_demo_out_is_checked_before_the_twelve_embeddings(tmp_path, capsys, monkeypatch):
    (tmp_path / "heat.png").mkdir()
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, err = run_main(["demo", "--out", "heat.png", "--embeddings-dir", "emb", "--max-samples", "16"], capsys)
    assert rc == 2
    assert_says(error_line(err), "--out", "heat.png", "directory")
    assert snapshot(tmp_path) == before  # no emb/ folder: refused before the first embedding was saved


def test_pull_into_a_file(tmp_path, capsys):
    q = tiny_embedding("q", 0).save(tmp_path / "q.safetensors")
    store = tmp_path / "store"
    assert run_main(["push", str(q), "--repo", str(store)], capsys)[0] == 0
    (tmp_path / "taken").write_text("x")
    before = snapshot(tmp_path)
    rc, err = run_main(["pull", "--repo", str(store), "--out", str(tmp_path / "taken")], capsys)
    assert rc == 2
    assert_says(error_line(err), "--out", "taken", "not a directory")
    assert snapshot(tmp_path) == before


def test_push_of_a_missing_file(tmp_path, capsys):
    rc, err = run_main(["push", str(tmp_path / "nope.safetensors"), "--repo", str(tmp_path / "store")], capsys)
    assert rc == 2
    assert_says(error_line(err), "nope.safetensors")
    assert snapshot(tmp_path) == {}


def test_an_unexpected_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    """Not every exception is the user's fault: a bug prints its traceback and asks to be reported."""
    from hf_task2vec.commands import core

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(core, "cmd_probes", broken)  # the registered command calls this function
    from hf_task2vec.cli import main

    capsys.readouterr()
    parser_args = ["probes"]
    rc = main(parser_args)
    err = capsys.readouterr().err
    if rc == 0:
        pytest.skip("the probes command is bound at registration; cannot inject a bug this way")
    assert rc == 1
    assert "Traceback" in err and "ZeroDivisionError" in err and "report" in err


def test_max_length_beyond_the_text_probes_positions(tmp_path, capsys, monkeypatch):
    """Issue 23 item 5: --max-length 100000 was accepted for MiniLM (512 positions), then a long text asked for
    4.9 GB; now refused before the work with the probe's position limit."""
    monkeypatch.chdir(tmp_path)
    rc, err = run_main(["embed", "offline:fortunes", "--classes", "computers,science", "--max-samples", "8",
                        "--max-length", "100000"], capsys)
    assert rc == 2
    assert_says(error_line(err), "--max-length", "at most 512", "got 100000", "positions")
    assert snapshot(tmp_path) == {}


def test_weights_file_probe_names_the_arch_option_and_it_works(tmp_path, capsys, monkeypatch):
    """Issue 23 item 6: ``--probe random.pt`` pointed to ``load_probe(..., arch=...)``, but embed had no
    --arch. Now the message names --arch, and --arch works."""
    import timm

    monkeypatch.chdir(tmp_path)
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), tmp_path / "random.pt")
    argv = ["embed", "offline:digits", "--classes", "0,1", *FAST, "--method", "montecarlo", "--probe", "random.pt",
            "--out", "e.safetensors"]
    rc, err = run_main(argv, capsys)
    assert rc == 2
    assert_says(error_line(err), "--probe 'random.pt'", "weights file", "--arch")
    assert not (tmp_path / "e.safetensors").exists()
    rc, err = run_main([*argv, "--arch", "mobilenetv3_small_050"], capsys)
    assert rc == 0, err
    assert (tmp_path / "e.safetensors").is_file()


def test_empty_texts_and_ambiguous_columns_on_the_command_line(tmp_path, capsys, monkeypatch):
    """Issue 23 items 3 and 4 through the CLI: one line naming the fix; --allow-empty leaves the empty texts out."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    texts = [f"a real text number {i}" if i % 4 < 2 else "" for i in range(32)]
    pd.DataFrame({"text": texts, "label": ["x", "y"] * 16}).to_csv(tmp_path / "holes.csv", index=False)
    argv = ["embed", "holes.csv", "--max-samples", "8", "--max-length", "16", "--method", "montecarlo",
            "--out", "e.safetensors"]
    rc, err = run_main(argv, capsys)
    assert rc == 2
    assert_says(error_line(err), "holes.csv", "16 of the 32 texts", "--allow-empty")
    rc, err = run_main([*argv, "--allow-empty"], capsys)
    assert rc == 0, err
    assert t2v_load(tmp_path / "e.safetensors").meta["num_samples"] == "8"
    image_folder(tmp_path / "img", {"a": 3, "b": 3})
    paths = sorted(str(p) for p in (tmp_path / "img").rglob("*.png"))
    labels = [p.split("/")[-2] for p in paths]
    pd.DataFrame({"image": paths, "text": [f"caption {i}" for i in range(6)], "label": labels}).to_csv(
        tmp_path / "both.csv", index=False
    )
    rc, err = run_main(["embed", "both.csv", *FAST, "--out", "both.safetensors"], capsys)
    assert rc == 2
    assert_says(error_line(err), "both.csv", "image column", "text column", "--input-column")
    assert not (tmp_path / "both.safetensors").exists()


def t2v_load(path):
    from hf_task2vec import TaskEmbedding

    return TaskEmbedding.load(path)
