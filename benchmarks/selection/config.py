"""What a model-selection run is made of: the source tasks (``ALL_SOURCES``), the run's knobs (``Config``, whose
``key`` names every cache file: do not change its fields or their values without meaning to invalidate
``benchmarks/cache/model_selection``) and the two sizes ``FULL`` / ``QUICK``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository

log = logging.getLogger("model_selection")


DATASETS = {"animal": "animal-mnist", "fashion": "fashion-mnist", "digits": "digits"}


# -- configuration ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    """A source task: a dataset and its label groups (group name -> original class names)."""

    name: str
    dataset: str  # key of DATASETS
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def label_names(self) -> list[str]:
        return [g for g, _ in self.groups]

    @property
    def classes(self) -> list[str]:
        return [c for _, cs in self.groups for c in cs]


def _subset(name: str, dataset: str, classes: list[str]) -> SourceSpec:
    return SourceSpec(name, dataset, tuple((c, (c,)) for c in classes))


def _grouping(name: str, dataset: str, groups: dict[str, list[str]]) -> SourceSpec:
    return SourceSpec(name, dataset, tuple((g, tuple(cs)) for g, cs in groups.items()))


ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGITS = [str(i) for i in range(10)]

ALL_SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        _subset("animals-all", "animal", ANIMALS),
        _subset("animals-hoofed", "animal", ["cow", "giraffe", "horse", "sheep", "zebra"]),
        _subset("animals-other", "animal", ["bear", "bird", "cat", "dog", "elephant"]),
        _grouping(
            "animals-habitat",
            "animal",
            {
                "pets": ["cat", "dog", "bird"],
                "farm": ["cow", "horse", "sheep"],
                "wild": ["bear", "elephant", "giraffe", "zebra"],
            },
        ),
        _subset("fashion-all", "fashion", FASHION),
        _subset("fashion-tops", "fashion", ["T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"]),
        _subset("fashion-shoes-bags", "fashion", ["Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot"]),
        _grouping(
            "fashion-kind",
            "fashion",
            {
                "upper-body": ["T-shirt/top", "Pullover", "Coat", "Shirt"],
                "legs-dress": ["Trouser", "Dress"],
                "footwear": ["Sandal", "Sneaker", "Ankle boot"],
                "bag": ["Bag"],
            },
        ),
        _subset("digits-all", "digits", DIGITS),
        _subset("digits-0-4", "digits", DIGITS[:5]),
        _subset("digits-5-9", "digits", DIGITS[5:]),
        _grouping("digits-parity", "digits", {"even": DIGITS[0::2], "odd": DIGITS[1::2]}),
    ]
}
QUICK_SOURCES = ["animals-hoofed", "animals-other", "fashion-tops", "fashion-shoes-bags", "digits-0-4", "digits-5-9"]
GENERIC = "generic-imagenet"
MODEL_PREFIX = "task2vec-bench/efficientnet-lite0-"


@dataclass(frozen=True)
class Config:
    quick: bool
    sources: tuple[str, ...]
    image_size: int = 32
    recipe: str = "lp-ft, frozen batch-norm, logistic ground truth v2"  # part of every cache key
    finetune_steps: int = 100
    finetune_batch: int = 32
    finetune_lr: float = 3e-4
    train_per_class: int = 500  # source training pool per class (animal / fashion; digits: all)
    test_pool_per_class: int = 300  # target pool per class (animal test has 200, digits ~36)
    targets_per_dataset: int = 10
    per_class_train: tuple[int, ...] = (10, 20, 50, 100)
    max_test_per_class: int = 150
    expert_embed_samples: int = 500
    seeds: tuple[int, ...] = (0, 1, 2)
    table1_probes: tuple[str, ...] = ("embedded", "embedded-mobilenetv2", "embedded-random-init")
    table1_seeds: tuple[int, ...] = (0, 1, 2)
    model2vec_steps: int = 50
    h_score_timing_experts: int = 13  # experts whose library H-score calls are timed (and checked)
    alpha: float = 0.15
    speed_experts: int = 10_000
    speed_dim: int = 21_008

    def key(self, *fields_: str) -> str:
        """A short hash of the named fields (cache keys)."""
        d = dataclasses.asdict(self)
        text = json.dumps({f: d[f] for f in sorted({"recipe", *fields_})}, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


FULL = Config(quick=False, sources=tuple(ALL_SOURCES))
QUICK = Config(
    quick=True,
    sources=tuple(QUICK_SOURCES),
    finetune_steps=30,
    train_per_class=200,
    test_pool_per_class=100,
    targets_per_dataset=3,
    per_class_train=(10, 25, 50),
    max_test_per_class=80,
    expert_embed_samples=150,
    seeds=(0,),
    table1_probes=("embedded",),
    table1_seeds=(),
    model2vec_steps=50,
    h_score_timing_experts=2,
    speed_experts=2_000,
)
