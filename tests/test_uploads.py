"""The library's upload loader (`hf_task2vec.uploads`, what `load_task("my.zip")`, `hf-task2vec embed my.zip`
and the expert-finder Space read uploads with) on real offline images: zips of class folders, metadata
tables, CSV / parquet tables, and every hostile input (path traversal, symlinks, zip bombs, entry counts,
sizes, members that are not images): each is refused before anything is extracted, with a message that
names the file and the fix."""

from __future__ import annotations

import base64
import io
import stat
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import hf_task2vec as t2v
from hf_task2vec import TaskError
from hf_task2vec.upload_safety import _copy_capped
from hf_task2vec.uploads import UploadError, UploadLimits, check_upload, count_examples, read_upload
from tests.test_space import QUERY_CLASSES, animal_images, class_folder_zip, png_bytes, write_zip

Limits = UploadLimits


def load(path, workdir, limits=None, **kw):
    """What the Space does with an upload: `read_upload` into ``workdir``, then `load_task` of its dataset."""
    up = read_upload(path, workdir=workdir, limits=limits or UploadLimits(), image_column=kw.get("image_column"),
                     label_column=kw.get("label_column"))
    task = t2v.load_task(up.dataset, input_column=up.input_column, label_column=up.label_column, name=up.name)
    return SimpleNamespace(task=task, notes=up.notes)


def test_load_task_reads_a_zip_of_class_folders(tmp_path):
    zpath = class_folder_zip(tmp_path / "my-animals.zip")
    task = t2v.load_task(zpath)
    assert task.label_names == QUERY_CLASSES and len(task) == 60 and task.is_image
    assert np.bincount(task.labels).tolist() == [20, 20, 20]
    assert task.name == "my-animals.zip" and task.source.endswith("my-animals.zip")  # as for any data file
    img = task.dataset[0]["image"]
    assert isinstance(img, Image.Image)
    # nothing extracted is left behind: the images are held as bytes, named by their place in the zip
    raw = task.dataset.cast_column("image", __import__("datasets").Image(decode=False))[0]["image"]
    assert raw["bytes"] and raw["path"] == "animals/cat/cat_000.png"
    sub = task.subset(range(0, 60, 6))
    assert len(sub) == 10 and isinstance(sub.dataset[3]["image"], Image.Image)


def test_read_upload_shows_its_progress_bar_only_when_asked(tmp_path, capsys):
    zpath = class_folder_zip(tmp_path / "my-animals.zip")
    quiet = read_upload(zpath, progress=False)  # what the Space asks: its page shows progress, not the server log
    assert "checking images" not in capsys.readouterr().err
    shown = read_upload(zpath)
    assert "checking images" in capsys.readouterr().err
    assert quiet.dataset["label"] == shown.dataset["label"] and len(quiet.dataset) == 60


def test_load_task_and_the_cli_refuse_what_the_space_refuses(tmp_path, capsys):
    from hf_task2vec.cli import main

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("cat/ok.png", png_bytes(np.zeros((8, 8), np.uint8)))
        zf.writestr("../../../tmp/pwned.png", b"evil")
    with pytest.raises(UploadError, match="path traversal"):
        t2v.load_task(evil)
    assert main(["embed", str(evil), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "path traversal" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_labels_only_and_number_columns_are_never_texts(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "\n".join(f"{i},{'ab'[i % 2]}" for i in range(60)) + "\n")
    with pytest.raises(UploadError) as err:
        t2v.load_task(labels)
    text = str(err.value)
    assert "labels.csv" in text and "no image or text column" in text and "input_column" in text
    with pytest.raises(UploadError, match="column 'id' holds numbers, not images or texts"):
        t2v.load_task(labels, input_column="id")
    scores = tmp_path / "scores.csv"
    scores.write_text("score,label\n" + "\n".join(f"{i / 7:.3f},{'ab'[i % 2]}" for i in range(10)) + "\n")
    with pytest.raises(UploadError, match="no image or text column"):
        t2v.load_task(scores)
    texts = tmp_path / "texts.csv"
    texts.write_text("id,text,label\n" + "\n".join(f"{i},text number {i},{'ab'[i % 2]}" for i in range(10)) + "\n")
    task = t2v.load_task(texts)
    assert task.is_text and task.input_column == "text"


def test_count_examples(tmp_path):
    import pandas as pd

    assert count_examples(class_folder_zip(tmp_path / "a.zip", per_class=7), Limits()) == 21
    imgs = animal_images(("bird", "zebra"), 5)
    pd.DataFrame({"image": [{"bytes": d, "path": None} for _, d in imgs], "label": [c for c, _ in imgs]}).to_parquet(
        tmp_path / "t.parquet"
    )
    assert count_examples(tmp_path / "t.parquet", Limits()) == 10
    assert count_examples(tmp_path / "nothing.zip", Limits()) is None


def test_limits_from_environment():
    limits = UploadLimits.from_env({"T2V_UPLOAD_MAX_IMAGES": "123", "T2V_UPLOAD_MAX_RATIO": "9.5"})
    assert limits.max_images == 123 and limits.max_ratio == 9.5
    with pytest.raises(ValueError, match="T2V_UPLOAD_MAX_IMAGES"):
        UploadLimits.from_env({"T2V_UPLOAD_MAX_IMAGES": "lots"})


# -- tables: CSV / parquet --------------------------------------------------------------------------
def test_metadata_csv_in_zip_matches_the_files(tmp_path):
    imgs = animal_images(("cat", "dog"), 6)
    entries = {f"data/images/img_{i:02d}.png": data for i, (_, data) in enumerate(imgs)}
    rows = ["file_name,label"] + [f"images/img_{i:02d}.png,{c}" for i, (c, _) in enumerate(imgs)]
    entries["data/metadata.csv"] = "\n".join(rows).encode()
    prepared = load(write_zip(tmp_path / "tbl.zip", entries), tmp_path / "w", Limits())
    task = prepared.task
    assert task.label_names == ["cat", "dog"]
    assert [task.label_names[y] for y in task.labels] == [c for c, _ in imgs]
    decoded = task.dataset[:][task.input_column]
    for img, (_, data) in zip(decoded, imgs, strict=True):
        np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(data))))
    assert any("metadata.csv" in n for n in prepared.notes)


def test_parquet_with_image_bytes_and_csv_with_data_uris(tmp_path):
    import pandas as pd

    imgs = animal_images(("bird", "zebra"), 5)
    labels = [c for c, _ in imgs]
    pq = tmp_path / "birds-zebras.parquet"
    pd.DataFrame({"image": [{"bytes": d, "path": None} for _, d in imgs], "label": labels}).to_parquet(pq)
    task = load(pq, tmp_path / "w", Limits()).task
    assert task.label_names == ["bird", "zebra"] and [task.label_names[y] for y in task.labels] == labels
    np.testing.assert_array_equal(np.asarray(task.dataset[3]["image"]), np.asarray(Image.open(io.BytesIO(imgs[3][1]))))

    csv = tmp_path / "uris.csv"
    uris = ["data:image/png;base64," + base64.b64encode(d).decode() for _, d in imgs]
    pd.DataFrame({"picture": uris, "class": labels}).to_csv(csv, index=False)
    task = load(csv, tmp_path / "w2", Limits()).task
    assert [task.label_names[y] for y in task.labels] == labels

    pd.DataFrame({"img": uris, "animal": labels}).to_csv(csv, index=False)
    with pytest.raises(TaskError, match="cannot tell the label column"):
        load(csv, tmp_path / "w3", Limits())
    task = load(csv, tmp_path / "w3", Limits(), label_column="animal").task
    assert task.num_classes == 2


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("/etc/passwd", "must be relative"),
        ("../../secret.png", "path traversal"),
        ("images/missing.png", "is not in the zip"),
        ("http://example.com/x.png", "must be relative"),
    ],
)
def test_table_paths_stay_inside_the_zip(tmp_path, cell, message):
    imgs = animal_images(("cat", "dog"), 2)
    entries = {f"images/{i}.png": d for i, (_, d) in enumerate(imgs)}
    rows = ["file_name,label", f"{cell},cat"] + [f"images/{i}.png,{c}" for i, (c, _) in enumerate(imgs)]
    entries["metadata.csv"] = "\n".join(rows).encode()
    with pytest.raises(TaskError, match=message):
        load(write_zip(tmp_path / "t.zip", entries), tmp_path / "w", Limits())


def test_csv_of_paths_without_images_is_explained(tmp_path):
    csv = tmp_path / "paths.csv"
    csv.write_text("image,label\na/1.png,cat\nb/2.png,dog\n")
    with pytest.raises(TaskError, match="only the table was uploaded"):
        load(csv, tmp_path / "w", Limits())


# -- hostile and broken zips ----------------------------------------------------------------------------
def _raw_entry(zf: zipfile.ZipFile, name: str, data: bytes, *, mode: int | None = None) -> None:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.external_attr = mode << 16
    zf.writestr(info, data)


def _good_entries(n: int = 3) -> dict[str, bytes]:
    return {f"{c}/{c}{i}.png": d for i, (c, d) in enumerate(animal_images(("cat", "dog"), n))}


@pytest.mark.parametrize(
    ("name", "mode", "message"),
    [
        ("../evil.png", None, "path traversal"),
        ("cat/../../evil.png", None, "path traversal"),
        ("/tmp/evil.png", None, "absolute path"),
        ("C:/evil.png", None, "absolute path"),
        ("cat\\..\\..\\evil.png", None, "backslash"),
        ("cat/link.png", stat.S_IFLNK | 0o777, "symbolic link"),
        ("cat/fifo.png", stat.S_IFIFO | 0o644, "special file"),
    ],
)
def test_unsafe_zip_entries_are_refused_before_extraction(tmp_path, name, mode, message):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for n, d in _good_entries().items():
            zf.writestr(n, d)
        _raw_entry(zf, name, b"../../../../etc/passwd" if mode else png_bytes(np.zeros((8, 8), np.uint8)), mode=mode)
    work = tmp_path / "work" / "deep"
    with pytest.raises(TaskError, match=message):
        load(zpath, work, Limits())
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "work" / "evil.png").exists()
    extracted = work / "extracted"
    assert not extracted.exists() or not any(extracted.rglob("*.png")), "nothing is extracted from a refused zip"


def test_zip_bomb_by_compression_ratio(tmp_path):
    zpath = write_zip(tmp_path / "bomb.zip", {**_good_entries(), "cat/zeros.png": bytes(8 * 2**20)})
    assert zpath.stat().st_size < 200_000
    with pytest.raises(TaskError, match="zip bomb"):
        load(zpath, tmp_path / "w", Limits())
    assert not (tmp_path / "w" / "extracted" / "cat" / "zeros.png").exists()


def test_zip_bomb_by_declared_total_size(tmp_path):
    rng = np.random.default_rng(0)
    entries = {f"cat/noise{i}.png": rng.bytes(300_000) for i in range(4)}
    zpath = write_zip(tmp_path / "big.zip", entries, compression=zipfile.ZIP_STORED)
    with pytest.raises(TaskError, match="would expand to"):
        load(zpath, tmp_path / "w", Limits(max_total_bytes=1_000_000))
    with pytest.raises(TaskError, match="per file"):
        load(zpath, tmp_path / "w2", Limits(max_entry_bytes=200_000))


def test_zip_that_lies_about_its_sizes(tmp_path):
    """A header declaring 1,000 bytes for a 2 MB entry: extraction stops at the declared size."""
    zpath = write_zip(tmp_path / "liar.zip", {**_good_entries(), "dog/big.png": bytes(2 * 2**20)})
    data = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo("dog/big.png")
    real = (2 * 2**20).to_bytes(4, "little")
    for pos in [i for i in range(len(data) - 3) if data[i : i + 4] == real]:  # local header + central directory
        data[pos : pos + 4] = (1000).to_bytes(4, "little")
    zpath.write_bytes(bytes(data))
    with zipfile.ZipFile(zpath) as zf:
        assert zf.getinfo("dog/big.png").file_size == 1000 and info.file_size == 2 * 2**20
    with pytest.raises(TaskError, match="'dog/big.png' is damaged \\(Bad CRC-32"):
        load(zpath, tmp_path / "w", Limits())
    assert not (tmp_path / "w" / "extracted" / "dog" / "big.png").exists()


def test_streaming_byte_cap_stops_extraction(tmp_path):
    """The byte budget is enforced while decompressing, whatever the headers say."""
    zpath = write_zip(tmp_path / "z.zip", {"cat/a.png": bytes(50_000)})
    target = tmp_path / "a.png"
    with zipfile.ZipFile(zpath) as zf, pytest.raises(TaskError, match="zip bomb"):
        _copy_capped(zf, zf.getinfo("cat/a.png"), target, budget=10_000)
    assert not target.exists()
    with zipfile.ZipFile(zpath) as zf:
        assert _copy_capped(zf, zf.getinfo("cat/a.png"), target, budget=50_000) == 50_000
    assert target.read_bytes() == bytes(50_000)


def test_too_many_entries_and_too_large_uploads(tmp_path):
    zpath = write_zip(tmp_path / "many.zip", {f"c{i % 2}/{i}.png": b"x" for i in range(30)})
    with pytest.raises(TaskError, match="holds 30 entries; the limit is 20"):
        load(zpath, tmp_path / "w", Limits(max_zip_entries=20))
    with pytest.raises(TaskError, match="holds 30 images; uploads may hold at most 25"):
        load(zpath, tmp_path / "w2", Limits(max_images=25))
    with pytest.raises(TaskError, match="uploads may be at most"):
        load(zpath, tmp_path / "w3", Limits(max_upload_bytes=100))


def test_encrypted_duplicate_and_broken_zips(tmp_path):
    zpath = write_zip(tmp_path / "enc.zip", {"cat/a.png": b"xxxx", "dog/b.png": b"yyyy"})
    data = bytearray(zpath.read_bytes())  # set the "encrypted" flag bit in the central directory records
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        data[pos + 8] |= 0x1
        pos = data.find(b"PK\x01\x02", pos + 4)
    zpath.write_bytes(bytes(data))
    with pytest.raises(TaskError, match="encrypted"):
        load(zpath, tmp_path / "w", Limits())

    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("cat/a.png", b"1")
        zf.writestr("cat/a.png", b"2")
    with pytest.raises(TaskError, match="twice"):
        load(dup, tmp_path / "w2", Limits())

    junk = tmp_path / "junk.zip"
    junk.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(TaskError, match="not a zip"):
        load(junk, tmp_path / "w3", Limits())
    truncated = tmp_path / "trunc.zip"
    truncated.write_bytes(class_folder_zip(tmp_path / "full.zip", per_class=2).read_bytes()[:-40])
    with pytest.raises(TaskError, match="zip"):
        load(truncated, tmp_path / "w4", Limits())
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TaskError, match="not a supported upload"):
        check_upload(tmp_path / "notes.txt", Limits())
    with pytest.raises(TaskError, match="no file was uploaded"):
        check_upload(None, Limits())


def test_non_image_files_are_ignored_and_listed(tmp_path):
    entries = {
        **_good_entries(),
        "README.txt": b"hello",
        "cat/run.sh": b"rm -rf /",
        "__MACOSX/._x": b"",
        "dog/.DS_Store": b"",
        "inner.zip": b"PK",
    }
    prepared = load(write_zip(tmp_path / "mixed.zip", entries), tmp_path / "w", Limits())
    assert prepared.task.label_names == ["cat", "dog"] and len(prepared.task) == 6
    note = next(n for n in prepared.notes if n.startswith("Ignored"))
    assert "Ignored 3 file(s)" in note and "README.txt" in note and "run.sh" in note
    assert not list((tmp_path / "w").rglob("*.sh")), "non-image files are never written to disk"

    only_text = write_zip(tmp_path / "text.zip", {"cat/a.txt": b"a", "dog/b.csv.txt": b"b"})
    with pytest.raises(TaskError, match="holds no images"):
        load(only_text, tmp_path / "w2", Limits())


def test_split_folders_and_stray_tables(tmp_path):
    imgs = animal_images(("cat", "dog"), 4)
    entries = {f"ds/{'train' if i % 4 else 'test'}/{c}/{i}.png": d for i, (c, d) in enumerate(imgs)}
    entries["ds/notes.csv"] = b"a,b\n1,2\n"
    prepared = load(write_zip(tmp_path / "splits.zip", entries), tmp_path / "w", Limits())
    assert prepared.task.label_names == ["cat", "dog"] and np.bincount(prepared.task.labels).tolist() == [3, 3]
    assert "Found split folders ['test', 'train']: used 'train'" in prepared.notes
    assert any(n.startswith("Ignored 1 file") and "notes.csv" in n for n in prepared.notes)


def test_layout_errors(tmp_path):
    cats = {f"cats/{i}.png": d for i, (_, d) in enumerate(animal_images(("cat",), 4))}
    single = write_zip(tmp_path / "one.zip", cats)
    with pytest.raises(TaskError, match="single class \\('cats'"):
        load(single, tmp_path / "w", Limits())
    loose = write_zip(tmp_path / "loose.zip", {**_good_entries(), "stray.png": animal_images(("cat",), 1)[0][1]})
    with pytest.raises(TaskError, match="outside class folders.*stray.png"):
        load(loose, tmp_path / "w2", Limits())


def test_corrupt_and_oversized_images(tmp_path):
    good = _good_entries(3)
    cat_png = next(iter(good.values()))
    big = png_bytes(np.zeros((300, 300), np.uint8))
    entries = {
        **good,
        "cat/truncated.png": cat_png[: len(cat_png) // 2],
        "dog/text.png": b"not an image at all",
        "dog/huge.png": big,
    }
    prepared = load(
        write_zip(tmp_path / "c.zip", entries), tmp_path / "w", Limits(max_image_pixels=50_000)
    )
    assert len(prepared.task) == 6 and np.bincount(prepared.task.labels).tolist() == [3, 3]
    # a member that does not start like an image is never extracted; the others fail when decoded
    ignored = next(n for n in prepared.notes if n.startswith("Ignored 1"))
    note = next(n for n in prepared.notes if n.startswith("Left out 2"))
    assert "text.png" in ignored and "truncated.png" in note and "huge.png" in note and "300x300" in note

    all_bad_dog = {k: v for k, v in good.items() if k.startswith("cat/")} | {"dog/x.png": b"garbage"}
    with pytest.raises(TaskError, match="single class.*after leaving out unreadable images"):
        load(write_zip(tmp_path / "d.zip", all_bad_dog), tmp_path / "w2", Limits())
    with pytest.raises(TaskError, match="none of its 2 image files could be read.*nothing was extracted"):
        load(
            write_zip(tmp_path / "e.zip", {"a/1.png": b"x", "b/2.png": b"y"}), tmp_path / "w3", Limits()
        )
