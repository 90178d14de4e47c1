"""Bad uploads to the library's upload loader (`hf_task2vec.uploads`, what `load_task`, `hf-task2vec embed`
and the expert-finder Space read uploads with): each is refused with an `UploadError` whose message names
the upload and the fix, shows no server path, and leaves nothing extracted beyond what was checked."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hf_task2vec as t2v
from hf_task2vec.uploads import UploadError, UploadLimits, check_image, public_text, read_upload, safe_extract_zip
from tests.bad_inputs.common import assert_says, snapshot

Limits = UploadLimits


def upload(path, workdir, limits=None):
    return read_upload(path, workdir=workdir, limits=limits or UploadLimits())


def png(seed: int, size: int = 16) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def good_entries(n: int = 3) -> dict[str, bytes]:
    return {f"{c}/{c}{i}.png": png(10 * j + i) for j, c in enumerate(("cat", "dog")) for i in range(n)}


def no_server_path(message: str, *roots: Path) -> None:
    for root in (*roots, Path(tempfile.gettempdir())):
        assert str(root) not in message, f"the message shows a server path ({root}): {message}"
    assert "/tmp/" not in message and "/home/" not in message, message


def many_entry_bomb(path: Path, n: int, size: int) -> Path:
    """A zip of ``n`` deflated entries of ``size`` zero bytes, written directly (the deflate stream
    of one entry is computed once and reused, so building a 1 GB bomb takes a fraction of a second)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(bytes(size)) + comp.flush()
    crc = zlib.crc32(bytes(size))
    local, central = bytearray(), bytearray()
    for i in range(n):
        name = f"{('cat', 'dog')[i % 2]}/img{i:05d}.png".encode()
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0)
        local += name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0o100644 << 16, offset)
        central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


# 1
def test_many_entries_just_under_the_ratio_threshold(tmp_path):
    """The bypass of the per-entry ratio check: 1,000 entries of 1 MiB - 1 zero bytes (~1 MB
    upload, 1.05 GB expanded). The running-total ratio refuses it before anything is written."""
    zpath = many_entry_bomb(tmp_path / "bomb.zip", 1000, 2**20 - 1)
    assert zpath.stat().st_size < 2_000_000
    work = tmp_path / "w"
    with pytest.raises(UploadError) as err:
        upload(zpath, work, Limits())
    assert_says(str(err.value), "bomb.zip", "zip bomb", "expands")
    assert snapshot(work) == {}


# 2
def test_running_ratio_also_catches_a_smaller_bomb(tmp_path):
    zpath = many_entry_bomb(tmp_path / "small.zip", 40, 2**19)  # 20 MB from ~20 KB, each entry under 1 MiB
    with pytest.raises(UploadError, match="zip bomb"):
        safe_extract_zip(zpath, tmp_path / "x", Limits())
    assert snapshot(tmp_path / "x") == {}


# 3
def test_total_cap_stays_well_below_the_free_disk(tmp_path):
    """On a 16 MiB file system an 8 MB upload of incompressible images is refused (the cap is a
    quarter of the free space), although it is far under ``max_total_bytes`` (1 GiB)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN in this container)")
    try:
        rng = np.random.default_rng(0)
        entries = {f"{c}/{c}{i}.png": rng.bytes(2_000_000) for c in ("cat", "dog") for i in range(2)}
        zpath = write_zip(tmp_path / "big.zip", entries)
        with pytest.raises(UploadError) as err:
            safe_extract_zip(zpath, mnt / "x", Limits())
        assert_says(str(err.value), "big.zip", "would expand to", "fewer images")
        assert snapshot(mnt / "x") == {}
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# 4
def test_300_character_entry_name(tmp_path):
    name = "cat/" + "x" * 296 + ".png"  # a 300-character file name
    zpath = write_zip(tmp_path / "long.zip", {**good_entries(), name: png(99)})
    work = tmp_path / "w"
    with pytest.raises(UploadError) as err:
        upload(zpath, work, Limits())
    msg = str(err.value)
    assert_says(msg, "300 characters", "rename", "255")
    assert len(msg) < 400  # the name is shortened, not pasted whole
    no_server_path(msg, work)
    assert snapshot(work) == {}  # refused while reading the central directory


# 5
def test_very_long_entry_path(tmp_path):
    name = "/".join(["d" * 200] * 6) + "/a.png"  # each part fine, the whole path too long
    zpath = write_zip(tmp_path / "deep.zip", {**good_entries(), name: png(3)})
    with pytest.raises(UploadError) as err:
        upload(zpath, tmp_path / "w", Limits())
    assert_says(str(err.value), "path of", "shorter folder names")
    assert snapshot(tmp_path / "w") == {}


# 6
def test_unquoted_data_uri_in_a_csv(tmp_path):
    uri = "data:image/png;base64," + __import__("base64").b64encode(png(1)).decode()
    rows = [f"{uri},{lab}" for lab in ("cat", "dog", "cat", "dog")]
    path = tmp_path / "uris.csv"
    path.write_text("image,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(UploadError) as err:
        t2v.load_task(path)  # the library reads a table like the Space does
    assert_says(str(err.value), "uris.csv", "unquoted comma", "double quotes")


# 7
def test_ragged_csv_names_the_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text('image,label\n"data:image/png;base64,AAAA",cat\ndata:image/png;base64,BBBB,dog\n')
    with pytest.raises(UploadError) as err:
        t2v.load_task(path)  # the library reads a table like the Space does
    assert_says(str(err.value), "ragged.csv", "line 3 has 3 fields", "header has 2", "quotes")


# 8
def test_zero_byte_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    with pytest.raises(UploadError) as err:
        t2v.load_task(path)  # the library reads a table like the Space does
    assert_says(str(err.value), "empty.parquet", "empty")


# 9
def test_garbage_parquet_shows_no_server_path(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(UploadError) as err:
        t2v.load_task(path)  # the library reads a table like the Space does
    assert_says(str(err.value), "garbage.parquet", "not a readable parquet file", "write it again")
    no_server_path(str(err.value), tmp_path)


# 10
def test_csv_that_is_not_text(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"image,label\n\xff\xfe\x00\x81,cat\n")
    with pytest.raises(UploadError) as err:
        t2v.load_task(path)  # the library reads a table like the Space does
    assert_says(str(err.value), "binary.csv", "UTF-8")
    no_server_path(str(err.value), tmp_path)


# 11
def test_header_only_csv(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("image,label\n")
    with pytest.raises(UploadError) as err:
        t2v.load_task(path)  # the library reads a table like the Space does
    assert_says(str(err.value), "header.csv", "no rows")


# 12
def test_damaged_images_are_named_without_server_paths(tmp_path):
    """A zip with unreadable images: they are left out and named in the notes by file name only;
    when nothing is readable the error says so, again without the extraction folder."""
    entries = {f"{c}/{c}{i}.png": b"not a png" for c in ("cat", "dog") for i in range(2)}
    zpath = write_zip(tmp_path / "broken.zip", entries)
    work = tmp_path / "w"
    with pytest.raises(UploadError) as err:
        upload(zpath, work, Limits())
    assert_says(str(err.value), "could be read", "cat0.png")
    no_server_path(str(err.value), work)
    reason = check_image(str(work / "extracted" / "cat" / "cat0.png"), Limits())
    assert reason is not None
    no_server_path(reason, work)


# 13
def test_not_a_zip(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"PK\x03\x04 but nothing else of a zip" * 4)
    with pytest.raises(UploadError) as err:
        t2v.load_task(path)  # the library reads a table like the Space does
    assert_says(str(err.value), "fake.zip", "zip")
    no_server_path(str(err.value), tmp_path)
    assert snapshot(tmp_path / "w") == {}


# 14
def test_single_class_zip(tmp_path):
    zpath = write_zip(tmp_path / "one.zip", {f"cat/c{i}.png": png(i) for i in range(4)})
    with pytest.raises(UploadError) as err:
        upload(zpath, tmp_path / "w", Limits())
    assert_says(str(err.value), "single class", "'cat'", "another class")


def test_public_text_strips_paths():
    exc = OSError(36, "File name too long")
    assert public_text(exc) == "File name too long"
    text = public_text(ValueError(f"cannot open {tempfile.gettempdir()}/t2v-space-abc/extracted/cat/x.png"))
    assert text == "cannot open t2v-space-abc/extracted/cat/x.png" or text == "cannot open x.png"
    assert public_text(ValueError("bad file /srv/data/secret/thing.csv here")) == "bad file thing.csv here"


def test_members_that_are_not_images_are_never_extracted(tmp_path):
    """Issue 23 item 7: a 25 MB zip of 1,000 one-MB entries named .png (39x) was written out in full (1,000 MB)
    before its files were found not to be images. The members' type is now checked from their first bytes
    before anything is extracted (here 200 entries of 256 KiB of text, about 50 MB uncompressed)."""
    rng = np.random.default_rng(0)
    words = np.array([b"lorem ", b"ipsum ", b"dolor ", b"sit ", b"amet "])
    blob = b"".join(rng.choice(words, 60_000))[: 2**18]
    entries = {f"{c}/{c}{i}.png": blob for c in ("cat", "dog") for i in range(100)}
    zpath = write_zip(tmp_path / "fake.zip", entries)
    dest = tmp_path / "x"
    with pytest.raises(UploadError) as err:
        safe_extract_zip(zpath, dest, Limits())
    assert_says(str(err.value), "fake.zip", "none of its 200 image files", "does not start like a PNG",
                "nothing was extracted")
    no_server_path(str(err.value), tmp_path)
    assert snapshot(dest) == {}


def test_some_non_images_are_left_out_unextracted_and_named(tmp_path):
    entries = {**good_entries(3), "cat/fake.png": b"just text, not a png" * 100}
    zpath = write_zip(tmp_path / "mixed.zip", entries)
    ex = safe_extract_zip(zpath, tmp_path / "x", Limits())
    assert ex.not_images == ["cat/fake.png"]
    assert not (tmp_path / "x" / "cat" / "fake.png").exists()
    assert len(ex.images) == 6
