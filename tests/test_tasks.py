"""Tasks: column detection, sub-tasks, local folders and files, image modes, and bad input."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_task2vec import Task, TaskError, load_task, split_tasks
from hf_task2vec.tasks import to_rgb


def small_dataset(n_per_class: int = 4, classes=("cat", "dog", "cow")) -> datasets.Dataset:
    images, labels = [], []
    for c in range(len(classes)):
        for i in range(n_per_class):
            images.append(Image.fromarray(np.full((8, 8), 30 * c + i, np.uint8)))
            labels.append(c)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_detects_columns_and_subtask_relabels_in_given_order():
    ds = small_dataset()
    task = load_task(ds)
    assert (task.input_column, task.label_column) == ("image", "label")
    assert task.label_names == ["cat", "dog", "cow"] and len(task) == 12
    sub = load_task(ds, classes=["cow", "cat"])
    assert sub.label_names == ["cow", "cat"]
    assert sub.labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    # the first example of the sub-task is the first cat (label 1 in the sub-task)
    x = sub.get_inputs([0, 4], lambda im: torch.as_tensor(np.array(im))[..., 0].float())
    assert x[0, 0, 0] == 0.0 and x[1, 0, 0] == 60.0
    by_id = load_task(ds, classes=[2, 0])
    assert by_id.labels.tolist() == sub.labels.tolist()


def test_split_tasks():
    tasks = split_tasks(small_dataset(), {"pets": ["cat", "dog"], "farm": ["cow", "dog"]})
    assert [t.name for t in tasks] == ["pets", "farm"]
    assert tasks[1].label_names == ["cow", "dog"] and len(tasks[1]) == 8


def test_imagefolder_and_csv_of_paths(tmp_path):
    folder = tmp_path / "imgs"
    rows = []
    for cls in ("ants", "bees"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            p = folder / cls / f"{i}.png"
            Image.fromarray(np.full((6, 6, 3), i * 40, np.uint8)).save(p)
            rows.append(f"{p},{cls}")
    task = load_task(folder)
    assert sorted(task.label_names) == ["ants", "bees"] and len(task) == 6
    csv = tmp_path / "data.csv"
    csv.write_text("path,species\n" + "\n".join(rows) + "\n")
    task = load_task(csv, input_column="path", label_column="species")
    assert task.num_classes == 2 and len(task) == 6
    img = task.dataset[0]["path"]
    assert isinstance(img, Image.Image)


def test_image_modes_to_rgb():
    grey16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert to_rgb(grey16).getpixel((0, 0)) == (255, 255, 255)
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))  # fully transparent red -> white background
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)
    f = Image.fromarray(np.full((2, 2), 0.5, np.float32), mode="F")
    assert to_rgb(f).getpixel((0, 0)) == (128, 128, 128)
    p = Image.new("P", (2, 2))
    assert to_rgb(p).mode == "RGB"


def test_bad_input_messages(tmp_path):
    ds = small_dataset()
    with pytest.raises(TaskError, match="no column 'img'"):
        load_task(ds, input_column="img")
    two_images = datasets.Dataset.from_dict(
        {"image": ds["image"], "image2": ds["image"], "label": ds["label"]},
        features=datasets.Features(
            {"image": datasets.Image(), "image2": datasets.Image(), "label": ds.features["label"]}
        ),
    )
    with pytest.raises(TaskError, match="input_column"):
        load_task(two_images)
    with pytest.raises(TaskError, match="single class"):
        load_task(ds, classes=["cat"])
    with pytest.raises(TaskError, match="no class 'zebra'"):
        load_task(ds, classes=["cat", "zebra"])
    with pytest.raises(TaskError, match="empty"):
        load_task(ds.select([]))
    with pytest.raises(TaskError, match="no split 'validation'"):
        load_task(datasets.DatasetDict({"train": ds}), split="validation")
    with pytest.raises(TaskError, match="does not exist"):
        load_task("./no/such/folder")
    with pytest.raises(TaskError, match="single class"):
        Task.from_tensors(torch.zeros(3, 2), [1, 1, 1])
    with pytest.raises(TaskError, match="3 inputs but 2 labels"):
        Task.from_tensors(torch.zeros(3, 2), [0, 1])


def test_unreadable_image_names_the_row():
    good = io.BytesIO()
    Image.new("L", (4, 4)).save(good, format="PNG")
    rows = [{"bytes": good.getvalue(), "path": None}] * 3 + [{"bytes": b"not an image", "path": None}]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 0, 1]}, features=features)
    task = load_task(ds)
    with pytest.raises(TaskError, match="row 3"):
        task.get_inputs([0, 1, 2, 3], lambda im: torch.zeros(1))
