"""The Space's one-click examples: small zips of class folders cut from the real offline data.

Nothing large is committed: `build_examples` writes the zips once (a few seconds) into a cache
folder at start-up, from the test splits of Fashion-MNIST (Debian ``dataset-fashion-mnist``) and
scikit-learn's handwritten digits; `build_examples(text=True)` writes the text examples
(`TEXT_EXAMPLES`: a CSV of ``text,label`` rows from the test split of the offline fortunes, shown when
the Space has a text expert index). An example whose source is not installed is left out (and the
page lists only the others). Run ``python spaces/expert-finder/examples.py OUT_DIR`` to write them
by hand.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("expert_finder")


@dataclass(frozen=True)
class Example:
    """One example dataset: ``file_name`` (the zip), the offline ``dataset``, the ``classes`` (names in
    that dataset), ``per_class`` images each, and the one-line ``label`` shown on the page."""

    file_name: str
    dataset: str
    classes: tuple[str, ...]
    per_class: int
    label: str


EXAMPLES: tuple[Example, ...] = (
    Example(
        "footwear.zip", "fashion-mnist", ("Sandal", "Sneaker", "Ankle boot"), 30,
        "Footwear: sandals, sneakers, ankle boots (Fashion-MNIST, 90 images)",
    ),
    Example(
        "digits-3-7-8.zip", "digits", ("3", "7", "8"), 30,
        "Handwritten digits 3, 7, 8 (scikit-learn digits, 90 images)",
    ),
)


#: Text examples: ``file_name`` is a CSV (``text``, ``label``) of ``per_class`` texts per class.
TEXT_EXAMPLES: tuple[Example, ...] = (
    Example(
        "fortunes-literature-poems.csv", "fortunes", ("literature", "songs-poems"), 40,
        "Text: fortunes about literature vs songs and poems (80 texts, CSV)",
    ),
)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _offline_class_images(dataset: str, classes: tuple[str, ...], per_class: int) -> dict[str, list[np.ndarray]]:
    """The first ``per_class`` test images of each class (grey uint8 arrays)."""
    from hf_task2vec.data import load_offline

    split = "test"
    ds = load_offline(dataset, split)
    names = ds.features["label"].names
    labels = np.asarray(ds["label"])
    out: dict[str, list[np.ndarray]] = {}
    for c in classes:
        idx = np.nonzero(labels == names.index(c))[0][:per_class]
        out[c] = [np.asarray(ds[int(i)]["image"].convert("L")) for i in idx]
    return out


def write_example(example: Example, folder: str | os.PathLike[str]) -> Path:
    """Write one example zip (``<class>/<class>_NNN.png``) atomically into ``folder``."""
    from hf_task2vec.embedding import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = _offline_class_images(example.dataset, example.classes, example.per_class)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for c, arrays in images.items():
            safe = c.replace(" ", "-").lower()
            for i, arr in enumerate(arrays):
                zf.writestr(f"{safe}/{safe}_{i:03d}.png", _png(arr))
    target = folder / example.file_name
    atomic_write_bytes(target, buf.getvalue())
    return target


def write_text_example(example: Example, folder: str | os.PathLike[str]) -> Path:
    """Write one text example (a ``text,label`` CSV of the first ``per_class`` test texts of each class)
    atomically into ``folder``."""
    import pandas as pd

    from hf_task2vec.data import load_offline
    from hf_task2vec.embedding import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = load_offline(example.dataset, "test")
    names = ds.features["label"].names
    labels = np.asarray(ds["label"])
    rows = []
    for c in example.classes:
        for i in np.nonzero(labels == names.index(c))[0][: example.per_class]:
            rows.append({"text": ds[int(i)]["text"], "label": c})
    target = folder / example.file_name
    atomic_write_bytes(target, pd.DataFrame(rows, columns=["text", "label"]).to_csv(index=False).encode())
    return target


def default_folder() -> Path:
    """Where the example zips are cached (``T2V_SPACE_EXAMPLES_DIR``, else a temporary folder)."""
    return Path(os.environ.get("T2V_SPACE_EXAMPLES_DIR") or Path(tempfile.gettempdir()) / "t2v-space-examples")


def build_examples(folder: str | os.PathLike[str] | None = None, *, text: bool = False) -> list[tuple[Path, Example]]:
    """The example zips that can be built here (``text=True``: the text examples, CSVs), written once
    into ``folder`` (reused afterwards). Examples whose offline data is missing are skipped with a log line."""
    folder = Path(folder) if folder is not None else default_folder()
    built: list[tuple[Path, Example]] = []
    for ex in TEXT_EXAMPLES if text else EXAMPLES:
        path = folder / ex.file_name
        try:
            if not path.is_file():
                path = (write_text_example if text else write_example)(ex, folder)
        except Exception as exc:  # a missing Debian package must not stop the page
            logger.warning("example %s left out: %s: %s", ex.file_name, type(exc).__name__, exc)
            continue
        built.append((path, ex))
    return built


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for text in (False, True):
        for p, _ in build_examples(sys.argv[1] if len(sys.argv) > 1 else None, text=text):
            print(p, p.stat().st_size, "bytes")
