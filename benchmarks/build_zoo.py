"""Build the expert zoo that ships in the repository: LoRA + head experts as PEFT model repos.

Every expert is a folder ``benchmarks/zoo/<base>-<task>/`` that `hf_task2vec.experts.load_expert` reads
(``adapter_config.json`` + ``adapter_model.safetensors`` written by peft, ``head.safetensors``,
``task_embedding.safetensors``, and a ``README.md`` card). Source tasks are class subsets cut from the offline
data (Animal-MNIST, Fashion-MNIST, scikit-learn digits; fortunes, SpamAssassin, WordNet), each trained on every
base of its modality:

* image bases: EfficientNet-Lite0/1/2 and MobileNetV2 (``embedded``, ``embedded-lite1``, ``embedded-lite2``,
  ``embedded-mobilenetv2``), 32 px; LoRA (rank 4) on the pointwise convolutions of the last two stages and the
  final 1x1 conv; the frozen first five stages are run once per task (their output is cached), so a training
  step only runs the adapted tail;
* text bases: all-MiniLM-L6-v2 (``embedded-text``) and paraphrase-MiniLM-L3-v2 (``minilm-l3-onnx``, rebuilt from
  its ONNX export); LoRA (rank 4) on the query/value projections of every layer; 64 tokens.

Training is LP-FT: a linear head is fitted on the frozen base features first (L-BFGS, `fit_linear_head`), then
adapter and head are trained together with Adam (cosine schedule), batch-norm statistics frozen. Seeds: the
crc32 of the expert's name (recorded in its card); the source test error is measured on the test split.

Each source task is embedded once, with the library's default estimator, by the probe of its modality's expert
index (``Task2Vec("embedded", image_size=32, max_samples=500)`` for images, ``Task2Vec("embedded-text",
max_length=64, max_samples=200)`` for text: the settings of ``benchmarks/results/expert_index`` and
``text_expert_index``); every expert of that task ships the same bytes (git stores them once).

Resumable: an expert whose folder exists, whose files match the hashes its card records and whose card records
the same training config is skipped. Outputs: ``benchmarks/zoo/`` (the experts + ``zoo.json``, one row per
expert), ``benchmarks/results/zoo_index/`` and ``zoo_text_index/`` (expert indexes built from the cards),
``benchmarks/results/zoo.md`` / ``zoo.json`` (counts, errors, training cost, size in git).

Run: ``nice -n 15 python benchmarks/build_zoo.py`` (``--only image|text``, ``--bases``, ``--tasks``,
``--limit N`` experts, ``--index-only``, ``--measure-git``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from embedding_quality import code_digest  # noqa: E402

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec import experts as ex  # noqa: E402
from hf_task2vec.head import fit_linear_head  # noqa: E402
from hf_task2vec.sampling import balanced_sample  # noqa: E402

log = logging.getLogger("build_zoo")

ZOO = ROOT / "benchmarks" / "zoo"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache" / "zoo"
IMAGE_INDEX = RESULTS / "zoo_index"
TEXT_INDEX = RESULTS / "zoo_text_index"

IMAGE_BASES = {
    "lite0": "embedded", "lite1": "embedded-lite1", "lite2": "embedded-lite2", "mnv2": "embedded-mobilenetv2",
}
TEXT_BASES = {"l6": "embedded-text", "l3": "minilm-l3-onnx"}


@dataclass(frozen=True)
class Source:
    name: str
    dataset: str  # offline dataset name (hf_task2vec.data)
    classes: tuple[str, ...]
    modality: str


ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))


def _img(name: str, dataset: str, classes: tuple[str, ...]) -> Source:
    return Source(name, dataset, classes, "image")


def _txt(name: str, dataset: str, classes: tuple[str, ...]) -> Source:
    return Source(name, dataset, classes, "text")


IMAGE_SOURCES: tuple[Source, ...] = (
    _img("animals-all", "animal-mnist", ANIMALS),
    _img("animals-hoofed", "animal-mnist", ("cow", "giraffe", "horse", "sheep", "zebra")),
    _img("animals-other", "animal-mnist", ("bear", "bird", "cat", "dog", "elephant")),
    _img("animals-pets", "animal-mnist", ("bird", "cat", "dog")),
    _img("animals-farm", "animal-mnist", ("cow", "horse", "sheep")),
    _img("animals-wild", "animal-mnist", ("bear", "elephant", "giraffe", "zebra")),
    _img("fashion-all", "fashion-mnist", FASHION),
    _img("fashion-tops", "fashion-mnist", ("T-shirt/top", "Pullover", "Dress", "Coat", "Shirt")),
    _img("fashion-shoes-bags", "fashion-mnist", ("Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot")),
    _img("fashion-footwear", "fashion-mnist", ("Sandal", "Sneaker", "Ankle boot")),
    _img("fashion-upper", "fashion-mnist", ("T-shirt/top", "Pullover", "Coat", "Shirt")),
    _img("digits-all", "digits", DIGITS),
    _img("digits-0-4", "digits", DIGITS[:5]),
    _img("digits-5-9", "digits", DIGITS[5:]),
    _img("digits-even", "digits", DIGITS[0::2]),
    _img("digits-odd", "digits", DIGITS[1::2]),
)
TEXT_SOURCES: tuple[Source, ...] = (
    _txt("fortunes-computers-science", "fortunes", ("computers", "science")),
    _txt("fortunes-politics-law-education", "fortunes", ("politics", "law", "education")),
    _txt("fortunes-food-medicine-sports", "fortunes", ("food", "medicine", "sports")),
    _txt("fortunes-people-work-definitions", "fortunes", ("people", "work", "definitions")),
    _txt("fortunes-linux-perl-startrek", "fortunes", ("linux", "perl", "startrek")),
    _txt("spam-ham-spam", "spamassassin", ("ham", "spam")),
    _txt("lists-fork-ilug-rpm", "spamassassin-lists", ("fork", "ilug", "rpm-list")),
    _txt("lists-razor-satalk-exmh", "spamassassin-lists", ("razor-users", "spamassassin-talk", "exmh")),
    _txt("wordnet-animal-plant-food", "wordnet", ("noun.animal", "noun.plant", "noun.food")),
    _txt("wordnet-motion-communication-cognition", "wordnet", ("verb.motion", "verb.communication", "verb.cognition")),
    _txt("wordnet-body-feeling-time", "wordnet", ("noun.body", "noun.feeling", "noun.time")),
    _txt("wordnet-emotion-perception-consumption", "wordnet",
         ("verb.emotion", "verb.perception", "verb.consumption")),
)


@dataclass(frozen=True)
class Config:
    image_size: int = 32
    image_train_per_class: int = 100
    image_test_per_class: int = 100
    image_steps: int = 150
    image_batch: int = 32
    image_lr: float = 2e-3
    text_max_length: int = 64
    text_train_per_class: int = 100
    text_test_per_class: int = 60
    text_steps: int = 60
    text_batch: int = 16
    text_lr: float = 1e-3
    rank: int = 4
    lora_alpha: int = 8
    head_l2: float = 1e-2
    image_embed_samples: int = 500
    text_embed_samples: int = 200
    threads: int = 2

    def key(self, modality: str) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "threads" and not k.startswith(
            "text_" if modality == "image" else "image_")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def expert_name(base_key: str, source: Source) -> str:
    return f"{base_key}-{source.name}"


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


# -- data ------------------------------------------------------------------------------------------------
def source_task(source: Source, split: str) -> t2v.Task:
    return t2v.load_task(f"offline:{source.dataset}", split=split, classes=list(source.classes),
                         name=f"{source.name}-{split}")


def sample(task: t2v.Task, per_class: int, seed: int) -> np.ndarray:
    return balanced_sample(task.labels, per_class * task.num_classes, seed)


def image_inputs(task: t2v.Task, idx: np.ndarray, probe: t2v.Probe) -> torch.Tensor:
    transform = probe.transform()
    return torch.cat([task.get_inputs(idx[i : i + 256], transform) for i in range(0, len(idx), 256)])


def texts_of(task: t2v.Task, idx: np.ndarray) -> list[str]:
    rows = task.dataset[[int(i) for i in idx]][task.input_column]
    return [t or "" for t in rows]


# -- embeddings (one per source task, cached) ------------------------------------------------------------
def embedding_bytes(source: Source, cfg: Config) -> bytes:
    """The task embedding of ``source``, cached per config and per version of the library's code (a new
    estimator gives new embeddings; the experts' training does not depend on it)."""
    path = CACHE / "embeddings" / f"{source.name}-{cfg.key(source.modality)}-{code_digest()}.safetensors"
    if path.is_file():
        return path.read_bytes()
    start = time.perf_counter()
    if source.modality == "image":
        embedder = t2v.Task2Vec("embedded", image_size=cfg.image_size, max_samples=cfg.image_embed_samples, seed=0,
                                progress=False)
    else:
        embedder = t2v.Task2Vec("embedded-text", max_length=cfg.text_max_length, max_samples=cfg.text_embed_samples,
                                seed=0, progress=False)
    emb = embedder.embed(source_task(source, "train"))
    data = emb.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    log.info("embedded %-40s in %5.1f s", source.name, time.perf_counter() - start)
    return data


# -- training --------------------------------------------------------------------------------------------
def _lora(base: str, cfg: Config):
    from peft import LoraConfig

    targets = ex.BASES[base].lora_targets
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(targets) if isinstance(targets, tuple) else targets)


def _timm_split(model: nn.Module, first_adapted_stage: int = 5):
    """(prefix, tail) of a timm EfficientNet / MobileNetV2 feature extractor (classifier removed)."""

    def prefix(x: torch.Tensor) -> torch.Tensor:
        x = model.bn1(model.conv_stem(x))
        return model.blocks[:first_adapted_stage](x)

    def tail(h: torch.Tensor) -> torch.Tensor:
        h = model.blocks[first_adapted_stage:](h)
        return model.forward_head(model.bn2(model.conv_head(h)), pre_logits=True).flatten(1)

    return prefix, tail


def _head_from(features: torch.Tensor, y: torch.Tensor, k: int, cfg: Config) -> nn.Linear:
    w, b, _ = fit_linear_head(features, y, k, l2=cfg.head_l2, max_iter=200)
    head = nn.Linear(features.shape[1], k)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return head


def _schedule(params: list[nn.Parameter], lr: float, steps: int):
    opt = torch.optim.Adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)


def train_image(base: str, source: Source, cfg: Config, seed: int):
    from peft import PeftModel

    probe = ex.load_base(base, image_size=cfg.image_size)
    model = probe.backbone.eval()
    train, test = source_task(source, "train"), source_task(source, "test")
    tr_idx, te_idx = sample(train, cfg.image_train_per_class, seed), sample(test, cfg.image_test_per_class, seed)
    x_tr, y_tr = image_inputs(train, tr_idx, probe), torch.as_tensor(train.labels[tr_idx])
    x_te, y_te = image_inputs(test, te_idx, probe), torch.as_tensor(test.labels[te_idx])
    start = time.perf_counter()
    torch.manual_seed(seed)
    prefix, tail = _timm_split(model)
    with torch.no_grad():
        h_tr, h_te = prefix(x_tr), prefix(x_te)
        head = _head_from(tail(h_tr), y_tr, train.num_classes, cfg)
    peft_model = PeftModel(model, _lora(base, cfg))  # injects LoRA into `model` in place
    prefix, tail = _timm_split(model)
    params = [p for n, p in model.named_parameters() if "lora_" in n] + list(head.parameters())
    opt, sched = _schedule(params, cfg.image_lr, cfg.image_steps)
    rng = np.random.default_rng(seed)
    model.eval()
    for _ in range(cfg.image_steps):
        batch = torch.as_tensor(rng.choice(len(h_tr), cfg.image_batch, replace=False))
        loss = F.cross_entropy(head(tail(h_tr[batch])), y_tr[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = torch.cat([head(tail(h_te[i : i + 256])) for i in range(0, len(h_te), 256)]).argmax(1)
    err = float((pred != y_te).float().mean())
    return peft_model, probe, head, train.label_names, err, len(te_idx), len(tr_idx), seconds, float(loss.detach())


def train_text(base: str, source: Source, cfg: Config, seed: int):
    from peft import PeftModel

    probe = ex.load_base(base, max_length=cfg.text_max_length)
    probe.eval()
    train, test = source_task(source, "train"), source_task(source, "test")
    tr_idx, te_idx = sample(train, cfg.text_train_per_class, seed), sample(test, cfg.text_test_per_class, seed)
    t_tr, y_tr = texts_of(train, tr_idx), torch.as_tensor(train.labels[tr_idx])
    t_te, y_te = texts_of(test, te_idx), torch.as_tensor(test.labels[te_idx])
    start = time.perf_counter()
    torch.manual_seed(seed)

    def features(texts: list[str]) -> torch.Tensor:
        return probe.features(probe.tokenize(texts))

    with torch.no_grad():
        f_tr = torch.cat([features(t_tr[i : i + 64]) for i in range(0, len(t_tr), 64)])
        head = _head_from(f_tr, y_tr, train.num_classes, cfg)
    target = ex.peft_target(probe)
    peft_model = PeftModel(target, _lora(base, cfg))
    params = [p for n, p in target.named_parameters() if "lora_" in n] + list(head.parameters())
    opt, sched = _schedule(params, cfg.text_lr, cfg.text_steps)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.text_steps):
        batch = rng.choice(len(t_tr), cfg.text_batch, replace=False)
        loss = F.cross_entropy(head(features([t_tr[i] for i in batch])), y_tr[torch.as_tensor(batch)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = torch.cat([head(features(t_te[i : i + 64])) for i in range(0, len(t_te), 64)]).argmax(1)
    err = float((pred != y_te).float().mean())
    return peft_model, probe, head, train.label_names, err, len(te_idx), len(tr_idx), seconds, float(loss.detach())


# -- the zoo ---------------------------------------------------------------------------------------------
def plan(only: str | None, bases: list[str] | None, tasks: list[str] | None) -> list[tuple[str, str, Source]]:
    """(expert name, base, source) in build order: task by task, every base of the task's modality (so that a
    partial build covers every base)."""
    out: list[tuple[str, str, Source]] = []
    groups = []
    if only in (None, "image"):
        groups.append((IMAGE_BASES, IMAGE_SOURCES))
    if only in (None, "text"):
        groups.append((TEXT_BASES, TEXT_SOURCES))
    rounds = [[(expert_name(k, s), b, s) for s in sources for k, b in base_map.items()] for base_map, sources in groups]
    # interleave image and text experts so that a partial build has both
    for i in range(max((len(r) for r in rounds), default=0)):
        for r in rounds:
            if i < len(r):
                out.append(r[i])
    if bases:
        out = [p for p in out if p[1] in bases or p[0].split("-")[0] in bases]
    if tasks:
        out = [p for p in out if p[2].name in tasks]
    return out


def is_built(folder: Path, cfg: Config, modality: str) -> bool:
    if not folder.is_dir():
        return False
    try:
        meta = ex.read_card(folder)
        sec = ex._section(meta, str(folder))
        ex._verify_files(folder, sec, str(folder))
    except t2v.Task2VecError as exc:
        log.warning("%s is there but not usable (%s): rebuilding it", folder.name, exc)
        return False
    return (sec.get("training") or {}).get("config_key") == cfg.key(modality)


def build_one(name: str, base: str, source: Source, cfg: Config) -> dict:
    seed = seed_of(name)
    emb = embedding_bytes(source, cfg)
    trainer = train_image if source.modality == "image" else train_text
    peft_model, probe, head, label_names, err, n_test, n_train, seconds, last_loss = trainer(base, source, cfg, seed)
    modality = source.modality
    steps = cfg.image_steps if modality == "image" else cfg.text_steps
    training = {
        "seed": seed,
        "steps": steps,
        "batch_size": cfg.image_batch if modality == "image" else cfg.text_batch,
        "lr": cfg.image_lr if modality == "image" else cfg.text_lr,
        "optimizer": "Adam, cosine schedule; LP-FT (head fitted on frozen features first)",
        "lora_rank": cfg.rank,
        "lora_alpha": cfg.lora_alpha,
        "final_train_loss": round(last_loss, 5),
        "seconds": round(seconds, 2),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "config_key": cfg.key(modality),
        "script": "benchmarks/build_zoo.py",
    }
    task = {
        "task": source.name,
        "dataset": f"offline:{source.dataset}",
        "split": "train",
        "source_classes": list(source.classes),
        "source_test_error": round(err, 4),
        "test_examples": n_test,
        "train_examples": n_train,
    }
    folder = ex.write_expert(
        ZOO / name, base=base, peft_model=peft_model, probe=probe, head_weight=head.weight, head_bias=head.bias,
        label_names=label_names, task_embedding=emb, task=task, training=training,
        model_id=f"hf-task2vec-zoo/{name}", extra_meta={"license": "apache-2.0"},
    )
    log.info("expert %-48s error %.3f  trained in %6.1f s  (%d KB)", name, err, seconds,
             sum(f.stat().st_size for f in folder.iterdir()) // 1024)
    return {"name": name, "base": base, "task": source.name, "error": err, "seconds": seconds}


def refresh_embeddings(cfg: Config, only: str | None, bases: list[str] | None, tasks: list[str] | None) -> None:
    """Give every built expert the embedding of its source task that the current library makes."""
    replaced = 0
    for name, _, source in plan(only, bases, tasks):
        if is_built(ZOO / name, cfg, source.modality):
            replaced += ex.replace_task_embedding(ZOO / name, embedding_bytes(source, cfg))
    log.info("%d experts got a new task embedding", replaced)


def zoo_folders() -> list[Path]:
    return sorted(p for p in ZOO.iterdir() if p.is_dir() and not p.name.startswith(".")) if ZOO.is_dir() else []


def git_packed_size(folder: Path) -> int:
    """Bytes of ``folder`` once committed to a fresh git repo and packed (``git gc``): what the zoo adds to a clone."""
    with tempfile.TemporaryDirectory(prefix="zoo-git-") as tmp:
        dst = Path(tmp) / "zoo"
        shutil.copytree(folder, dst)
        env = {**os.environ, "GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x",
               "GIT_COMMITTER_EMAIL": "x@x"}
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "zoo"], ["git", "gc", "-q"]):
            subprocess.run(cmd, cwd=dst, check=True, env=env, capture_output=True)
        return sum(f.stat().st_size for f in (dst / ".git" / "objects").rglob("*") if f.is_file())


def write_outputs(cfg: Config, measure_git: bool) -> dict:
    rows = []
    for folder in zoo_folders():
        try:
            meta = ex.read_card(folder)
            sec = ex._section(meta, str(folder))
        except t2v.Task2VecError:
            continue
        tr = sec.get("training") or {}
        rows.append({
            "name": folder.name,
            "model_id": sec.get("model_id"),
            "base": sec.get("base"),
            "base_model": meta.get("base_model"),
            "modality": sec.get("modality"),
            "task": sec.get("task"),
            "dataset": sec.get("dataset"),
            "source_classes": sec.get("source_classes"),
            "source_test_error": sec.get("source_test_error"),
            "training_seconds": tr.get("seconds"),
            "bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
            "adapter_bytes": (folder / ex.ADAPTER_FILE).stat().st_size,
        })
    (ZOO / "zoo.json").write_text(json.dumps({"experts": rows}, indent=1) + "\n")
    # the indexes, from the cards
    for modality, out in (("image", IMAGE_INDEX), ("text", TEXT_INDEX)):
        folders = [ZOO / r["name"] for r in rows if r["modality"] == modality]
        if folders:
            t2v.ExpertIndex.from_expert_repos(folders, relative_to=ROOT).save(out)
            log.info("wrote %s (%d experts)", out.relative_to(ROOT), len(folders))
    raw = sum(f.stat().st_size for f in ZOO.rglob("*") if f.is_file())
    summary: dict = {
        "experts": len(rows),
        "per_base": {b: sum(r["base"] == b for r in rows) for b in sorted({r["base"] for r in rows})},
        "image_experts": sum(r["modality"] == "image" for r in rows),
        "text_experts": sum(r["modality"] == "text" for r in rows),
        "zoo_bytes_on_disk": raw,
        "training_seconds_total": round(sum(r["training_seconds"] or 0 for r in rows), 1),
        "training_seconds_mean": {
            m: round(float(np.mean([r["training_seconds"] for r in rows if r["modality"] == m])), 2)
            for m in ("image", "text") if any(r["modality"] == m for r in rows)
        },
        "config": asdict(cfg),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    if measure_git:
        summary["zoo_bytes_git_packed"] = git_packed_size(ZOO)
    (RESULTS / "zoo.json").write_text(json.dumps({"summary": summary, "experts": rows}, indent=1) + "\n")
    lines = [
        "# The expert zoo (`benchmarks/build_zoo.py`)",
        "",
        f"{summary['experts']} experts ({summary['image_experts']} image, {summary['text_experts']} text); per base: "
        + ", ".join(f"`{b}` {n}" for b, n in summary["per_base"].items()) + ".",
        f"On disk: {raw / 2**20:.1f} MiB"
        + (f"; in git (fresh repo, packed): {summary['zoo_bytes_git_packed'] / 2**20:.1f} MiB" if measure_git else "")
        + f". Training: {summary['training_seconds_total']:.0f} s in all (mean per expert: "
        + ", ".join(f"{m} {s:.1f} s" for m, s in summary["training_seconds_mean"].items())
        + f"), {summary['machine']}; task embeddings not included.",
        "",
        "| expert | base | task | source test error | train s | adapter KB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['base']} | {r['task']} | {r['source_test_error']:.3f} | {r['training_seconds']:.1f} "
              f"| {r['adapter_bytes'] // 1024} |" for r in rows]
    (RESULTS / "zoo.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("image", "text"))
    parser.add_argument("--bases", nargs="*", help="base names or keys (lite0, lite1, lite2, mnv2, l6, l3)")
    parser.add_argument("--tasks", nargs="*", help="source task names")
    parser.add_argument("--limit", type=int, help="build at most this many (missing) experts")
    parser.add_argument("--index-only", action="store_true", help="only rewrite zoo.json, the indexes and results")
    parser.add_argument("--measure-git", action="store_true", help="measure the zoo's packed size in a fresh git repo")
    parser.add_argument("--keep-embeddings", action="store_true",
                        help="do not re-embed the source tasks of experts already built (by default their task "
                        "embeddings follow the library's current estimator; the adapters are not retrained)")
    parser.add_argument("--image-steps", type=int)
    parser.add_argument("--text-steps", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("hf_task2vec", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = Config()
    overrides = {k: v for k, v in (("image_steps", args.image_steps), ("text_steps", args.text_steps)) if v}
    if overrides:
        cfg = Config(**{**asdict(cfg), **overrides})
    torch.set_num_threads(cfg.threads)
    if not args.index_only:
        todo = [p for p in plan(args.only, args.bases, args.tasks) if not is_built(ZOO / p[0], cfg, p[2].modality)]
        if args.limit is not None:
            todo = todo[: args.limit]
        log.info("%d experts to build", len(todo))
        for name, base, source in todo:
            build_one(name, base, source, cfg)
    if not args.keep_embeddings and not args.index_only:  # --index-only rewrites outputs, never re-embeds
        refresh_embeddings(cfg, args.only, args.bases, args.tasks)
    summary = write_outputs(cfg, args.measure_git)
    log.info("zoo: %s", json.dumps({k: summary[k] for k in ("experts", "per_base", "zoo_bytes_on_disk")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
