"""The Space's glue over the library's expert search: the expert index (where it is loaded from, what
the page may offer), the probe kept between requests, and a search's result as the page shows it (the
table, the status, the figures).

The search itself is `hf_task2vec.expert_search.find_experts` (embed like the experts, rank, the
stability over resamples, the re-ranking with unloadable experts kept); the figures are
`hf_task2vec.plots.expert_task_map` / `expert_distance_heatmap`; uploads are read by
`hf_task2vec.uploads` (see `inputs`). This module only chooses the words.
"""

from __future__ import annotations

import html
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ranking
from inputs import (  # noqa: F401  (re-exported: the app and the tests use finder.*)
    HUB_UNREACHABLE,
    INPUT_BOX,
    LABEL_BOX,
    UPLOAD_EXTENSIONS,
    InputError,
    Limits,
    PreparedTask,
    count_examples,
    for_text,
    hub_unreachable,
    output_dir,
    public_text,
    push_embedding,
    safe_task_name,
    scratch_dir,
    task_from_hub,
    task_from_upload,
    unit,
)

from hf_task2vec.expert_search import index_modality, unloadable_experts
from hf_task2vec.plots import classical_mds  # noqa: F401  (re-exported)

logger = logging.getLogger("expert_finder")
PROJECTIONS = ("mds", "tsne")
_HUB_ID = re.compile(r"^(?!.*\.\.)(?!.*--)[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


# -- the expert index ---------------------------------------------------------------------------------
def index_settings(index: Any) -> dict[str, str]:
    """How the index's experts were embedded: ``probe``, ``probe_revision``, ``method``, ``image_size``."""
    if len(index) == 0:
        raise InputError("the expert index is empty: add experts first")
    return dict(index.settings)


def _load_index(source: str | os.PathLike[str] | None, token: str | None, env: str, folder: str) -> Any:
    """``source``, else ``$env`` (a folder or a Hub dataset repo id), else the first local ``folder``
    of `_index_paths` that exists (the benchmark's when none does)."""
    from hf_task2vec.selection import ExpertIndex

    if source is None:
        paths = _index_paths(folder)
        source = os.environ.get(env) or next((p for p in paths if p.is_dir()), paths[-1])
    if _looks_remote(source):
        return ExpertIndex.from_hub(os.fspath(source), token=token)
    return ExpertIndex.load(source)


def _index_paths(folder: str) -> list[Path]:
    """Local places searched for an index folder: beside the app, then the repository's default index of
    that modality (`hf-task2vec select`'s: built from the expert zoo's cards, every expert loadable)."""
    from hf_task2vec.commands.selection import default_index_path

    here = Path(__file__).resolve().parent
    return [here / folder, default_index_path("text" if folder.startswith("text") else "image")]


def load_text_expert_index(source: str | os.PathLike[str] | None = None, *, token: str | None = None) -> Any:
    """The text expert index: ``source``, else ``$T2V_TEXT_EXPERT_INDEX_REPO`` (a folder or a Hub
    dataset repo id), else a ``text_expert_index`` folder next to this file, else the repository's text
    index of the expert zoo, ``benchmarks/results/zoo_text_index``."""
    return _load_index(source, token, "T2V_TEXT_EXPERT_INDEX_REPO", "text_expert_index")


def load_expert_index(source: str | os.PathLike[str] | None = None, *, token: str | None = None) -> Any:
    """Load the expert index (`hf_task2vec.selection.ExpertIndex`) from ``source`` (a folder or a Hub
    dataset repo id), else ``$T2V_EXPERT_INDEX_REPO`` (either of those), else an ``expert_index``
    folder next to this file (a Space can ship one), else the repository's image index of the expert
    zoo, ``benchmarks/results/zoo_index`` (the offline default; every expert loads for re-ranking)."""
    return _load_index(source, token, "T2V_EXPERT_INDEX_REPO", "expert_index")


def default_index_paths() -> list[Path]:
    """Local places searched for an index: ``./expert_index`` beside the app, then the benchmark's."""
    return _index_paths("expert_index")


def _looks_remote(source: str | os.PathLike[str]) -> bool:
    s = os.fspath(source)
    return not Path(s).exists() and "/" in s and bool(_HUB_ID.match(s)) and not s.startswith((".", "/"))


_PROBES: dict[tuple[str, str], Any] = {}
_PROBES_LOCK = threading.Lock()


def get_probe(name: str, image_size: str = "") -> Any:
    """A probe, loaded once per (name, image size) and kept for later requests."""
    from hf_task2vec import list_probes, load_probe

    base = name.removesuffix("-random-init")
    if base not in list_probes():
        raise InputError(f"unknown probe {name!r}; choose one of {list_probes()}")
    key = (name, image_size)
    with _PROBES_LOCK:  # the start-up warm-up and a first request may ask at once: load once
        if key not in _PROBES:
            size = int(image_size) if image_size.isdigit() else None
            _PROBES[key] = load_probe(base, pretrained=base == name, image_size=size)
        return _PROBES[key]


def probe_loaded(name: str, image_size: str = "") -> bool:
    """Whether `get_probe` already holds this probe (the first search after start-up loads it)."""
    return (name, image_size) in _PROBES


def hub_url(model_id: str) -> str:
    """The Hub page of a model (honours ``HF_ENDPOINT``)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{model_id}"


def expert_link(model_id: str, info: dict[str, Any] | None = None) -> str:
    """The expert's id as markdown: a link to ``info["url"]`` when given (http/https), else to its
    Hub page when the index says it comes from the Hub (``source: "hub"``, as
    `ExpertIndex.add_hub_models` records), else plain text (local or benchmark experts)."""
    info = info or {}
    text = re.sub(r"([\\`*_{}\[\]()#+!|<>])", r"\\\1", model_id)
    url = info.get("url")
    if not (isinstance(url, str) and re.match(r"^https?://[^\s()<>]+$", url)):
        url = hub_url(model_id) if info.get("source") == "hub" and _HUB_ID.match(model_id) else None
    return f"[{text}]({url})" if url else text


def _trained_on(info: dict[str, Any], max_classes: int | None = 6) -> str:
    task = str(info.get("task") or info.get("dataset") or "")
    classes = info.get("classes")
    if isinstance(classes, list) and classes:
        cut = classes if max_classes is None else classes[:max_classes]
        shown = ", ".join(str(c) for c in cut) + (", ..." if len(cut) < len(classes) else "")
        task = f"{task} ({shown})" if task else shown
    return task


TABLE_COLUMNS = ("score", "rank", "expert", "rank in resamples", "trained on")
RERANK_TABLE_COLUMNS = ("re-rank score", "rank", "expert", "Task2Vec rank", "distance", "trained on")
TABLE_LABEL = (
    "Best experts, lowest score first (rank in resamples: the ranks each expert takes when your data is resampled)"
)
RERANK_OFF = "off"


def rerank_scores() -> list[str]:
    """The transferability scores the Task2Vec shortlist can be re-ranked by (`hf_task2vec.rerank`)."""
    from hf_task2vec.transferability import TRANSFERABILITY_METRICS

    return list(TRANSFERABILITY_METRICS)


def expert_root() -> Path:
    """The folder relative expert checkpoints are resolved against: ``$T2V_EXPERT_ROOT``, else the
    repository root (the benchmark's index records its checkpoints as ``benchmarks/cache/...``), else
    the app's folder (a deployed Space)."""
    if os.environ.get("T2V_EXPERT_ROOT"):
        return Path(os.environ["T2V_EXPERT_ROOT"])
    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    return repo if (repo / "hf_task2vec").is_dir() else here


def skip_reason(reason: str, score: str = "") -> str:
    """One short line for the page saying why an expert could not be re-ranked (from the library's
    `hf_task2vec.rerank` reason), with the fix where there is one."""
    text = re.sub(r"^expert '[^']*': ", "", str(reason))
    if "checkpoint" in text and text.endswith("not found"):
        if "benchmarks/cache/" in text:
            return "checkpoint not found: run `python benchmarks/model_selection.py` to build it"
        return "checkpoint not found on this server"
    if "the file changed since it was indexed" in text:
        return "its checkpoint changed since the index was built (sha256 differs): rebuild the index"
    if "records no weights" in text or "must be a mapping" in text or "needs 'load_probe' or" in text:
        return "the index does not record how to load it"
    if "source classifier" in text:
        return (
            f"{score or 'this score'} needs the expert's source classifier, which it lacks: choose logme, sfda or knn"
        )
    return public_text(Exception(text))


METHOD_WORDS = {
    "montecarlo": "Monte Carlo Fisher (labels drawn from the probe's own predictions)",
    "exact": "exact Fisher (the expectation over every label, no sampling)",
    "variational": "robust (variational) Fisher of the paper",
    "relative": "robust Fisher, prior at the task's own level",
}


def index_options(index: Any, limits: Limits | None = None) -> dict[str, Any]:
    """What the page may offer, all derived from the index: the ``probe``, ``method`` and
    ``image_size`` its experts were embedded with (the only ones that can be compared with them),
    the ``max_samples`` they used (the default for a query, capped by ``limits``), the ``metrics``
    it supports and the number of ``experts``; plus one-line ``help`` texts."""
    limits = limits or Limits()
    s = index_settings(index)
    opts = dict(getattr(index, "embedding_options", {}) or {})
    try:
        used = int(opts.get("max_samples") or 0)
    except ValueError:
        used = 0
    default_samples = min(limits.max_samples, used or 500)
    metrics = ["asymmetric", "symmetric"] + (["model2vec"] if getattr(index, "has_model2vec", False) else [])
    size = s.get("image_size") or "the probe's own"
    method = s.get("method", "")
    return {
        "probe": s.get("probe", ""),
        "method": method,
        "image_size": s.get("image_size", ""),
        "max_samples": default_samples,
        "metrics": metrics,
        "experts": len(index),
        "reranks": [RERANK_OFF, *rerank_scores()],
        "shortlist": min(4, len(index)),
        "help": {
            "probe": f"The network that reads your data. Fixed: the {len(index)} experts were embedded with it.",
            "method": f"How the Fisher information is estimated: {METHOD_WORDS.get(method, method)}. Fixed by the "
            "index, like the probe.",
            "image_size": f"Images are resized to {size} px, as for the experts.",
            "max_samples": "At most this many of your examples are used (class-balanced); more is slower and surer.",
            "k": "How many experts the table and the heatmap show.",
            "metric": "asymmetric: the paper's rule (recommended); symmetric: plain distance"
            + ("; model2vec: learned from the experts' fine-tuning errors." if "model2vec" in metrics else "."),
            "projection": "How the task map is drawn: MDS keeps distances as faithfully as 2-D allows; t-SNE "
            "keeps only neighbours.",
            "rerank": "Run the Task2Vec shortlist's experts on your images and re-rank them by this score (higher "
            "is better): one forward pass per expert. leep and nce need the expert's source classifier.",
            "shortlist": "How many of the best Task2Vec experts are re-ranked (and run).",
        },
    }


EXPERT_LIST_COLUMNS = ("expert", "kind", "training task", "classes", "data", "can be run")


def expert_table(*indexes: Any) -> Any:
    """Every expert of the indexes (images, then texts) with its training task and whether the
    re-ranking can run it here (``can be run``: ``yes``, or why not) - shown before any search."""
    import pandas as pd

    rows = []
    for index in indexes:
        if index is None:
            continue
        kind = index_modality(index)
        cannot = unloadable_experts(index, index.model_ids, root=expert_root())
        for row in index.rows():
            classes = row.get("classes")
            mid = row["model_id"]
            rows.append(
                {
                    "expert": expert_link(mid, row),
                    "kind": kind,
                    "training task": str(row.get("task") or ""),
                    "classes": ", ".join(str(c) for c in classes) if isinstance(classes, list) else "",
                    "data": str(row.get("dataset") or row.get("source") or "").removeprefix("offline:"),
                    "can be run": "no: " + skip_reason(cannot[mid]) if mid in cannot else "yes",
                }
            )
    return pd.DataFrame(rows, columns=list(EXPERT_LIST_COLUMNS))


def cannot_run(index: Any, rerank: str | None = None) -> dict[str, str]:
    """The experts of ``index`` the re-ranking cannot run here, in page words (before any search)."""
    if index is None or len(index) == 0:
        return {}
    found = unloadable_experts(index, index.model_ids, rerank=rerank, root=expert_root())
    return {mid: skip_reason(why, rerank or "") for mid, why in found.items()}


def describe_index(index: Any) -> str:
    """One line about the index for the page."""
    try:
        s = index_settings(index)
    except InputError as exc:
        return str(exc)
    if index_modality(index) == "text":
        length = (getattr(index, "embedding_options", {}) or {}).get("max_length") or "the probe default"
        return f"{len(index)} text experts · probe `{s['probe']}` · estimator `{s['method']}` · max length {length}"
    return (
        f"{len(index)} image experts · probe `{s['probe']}` · estimator `{s['method']}` · image size "
        f"{s['image_size'] or 'the probe default'}"
    )


# -- a search, as the page shows it -----------------------------------------------------------------------
@dataclass
class SearchResult:
    """Everything the app shows after a search: ``table`` (`TABLE_COLUMNS`, or `RERANK_TABLE_COLUMNS`
    after a re-ranking: every shortlisted expert, those that could not be run with their Task2Vec rank),
    ``records`` (`ExpertMatch`, as ranked in the table), ``confidence`` (`Confidence`), the Plotly
    ``map_figure`` / ``heatmap_figure`` (``heatmap_values``: the matrix drawn, unscaled), the saved
    ``embedding_path``, the ``status`` markdown and the table's ``table_label``."""

    embedding: Any
    table: Any
    records: list[Any]
    confidence: Any
    metric: str
    map_figure: Any
    heatmap_figure: Any
    heatmap_values: np.ndarray
    embedding_path: Path
    notes: list[str]
    seconds: float
    status: str = ""
    rerank: str | None = None
    selection: Any = None
    skipped: dict[str, str] = field(default_factory=dict)
    table_label: str = ""
    scale: tuple[float, str] = (1.0, "")


def search(
    prepared: PreparedTask,
    index: Any,
    outdir: str | os.PathLike[str],
    *,
    probe: str | None = None,
    method: str | None = None,
    max_samples: int = 256,
    k: int = 5,
    metric: str = "asymmetric",
    projection: str = "mds",
    limits: Limits | None = None,
    progress: bool = False,
    resamples: int | None = None,
    on_step: Any = None,
    rerank: str | None = None,
    shortlist: int | None = None,
    figure_width: float | None = None,
) -> SearchResult:
    """Rank the experts for ``prepared`` (`hf_task2vec.expert_search.find_experts`) and put the result
    in the page's words. ``probe`` / ``method`` other than the index's are refused; ``rerank``
    (``"off"`` / ``None``: Task2Vec only) re-ranks the ``shortlist`` nearest experts. ``figure_width``:
    the width (px) the page draws the figures at (the heatmap writes its values in the cells only where
    they fit); ``None``: not known."""
    from hf_task2vec import Task2VecError
    from hf_task2vec.expert_search import check_settings, find_experts
    from hf_task2vec.plots import expert_distance_heatmap, expert_task_map

    limits = limits or Limits()
    step = on_step or (lambda fraction, text: None)
    start = time.perf_counter()
    try:
        settings = check_settings(index, prepared.task, probe=probe, method=method)
    except Task2VecError as exc:
        raise InputError(str(exc)) from exc
    if projection not in PROJECTIONS:
        raise InputError(f"unknown map {projection!r}; choose one of {PROJECTIONS}")
    if not 2 <= int(max_samples) <= limits.max_samples:
        raise InputError(f"max examples must lie in 2..{limits.max_samples}, got {max_samples}")
    size = settings.get("image_size", "")
    if not probe_loaded(settings["probe"], size):
        step(0.12, "Loading the probe network (only the first search after start-up; about 20 s)")
    probe_obj = get_probe(settings["probe"], size)
    rerank = rerank if rerank and rerank != RERANK_OFF else None
    try:
        found = find_experts(
            prepared.task, index, probe=probe_obj, max_samples=int(max_samples), k=int(k), metric=metric,
            resamples=ranking.RESAMPLES if resamples is None else int(resamples), rerank=rerank,
            shortlist=shortlist, root=expert_root(), progress=progress, on_step=step,
        )
    except Task2VecError as exc:
        raise InputError(f"cannot rank the experts: {exc}") from exc
    except ValueError as exc:
        raise InputError(f"cannot rank the experts: {exc}") from exc
    step(0.9, "Drawing the figures")
    conf, task, emb = found.confidence, prepared.task, found.embedding
    pos = {mid: i for i, mid in enumerate(index.model_ids)}
    scale = ranking.score_scale(conf.scores[0].tolist())
    skipped = {mid: skip_reason(why, rerank or "") for mid, why in found.skipped.items()}
    compared = _compared(found)
    if compared:
        records, table, label = _rerank_table(found, index, scale)
    else:
        records = found.records
        table = _task2vec_table(records, conf, pos, scale)
        label = TABLE_LABEL + (f"; scores {scale[1]}" if scale[1] else "")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    emb_path = emb.save(out / f"{safe_task_name(task.name)}.safetensors")
    top = [r.model_id for r in records]
    map_fig, _ = expert_task_map(emb, index, top, projection=projection)
    heat_fig, heat = expert_distance_heatmap(
        emb, index, top[: int(k)] or top, metric=metric, scale=scale[0], unit=scale[1], width=figure_width
    )
    seconds = time.perf_counter() - start
    notes = list(prepared.notes)
    status = _status(prepared, found, index, records, skipped, notes, scale, seconds - found.rerank_s)
    return SearchResult(
        embedding=emb, table=table, records=records, confidence=conf, metric=metric, map_figure=map_fig,
        heatmap_figure=heat_fig, heatmap_values=heat, embedding_path=emb_path, notes=notes, seconds=seconds,
        status=status, rerank=rerank, selection=found.selection if compared else None, skipped=skipped,
        table_label=label, scale=scale,
    )


def _compared(found: Any) -> bool:
    """Whether the re-ranking compared experts: at least two of the shortlist were run. With one, the
    page shows the Task2Vec ranking (one expert is not crowned for being the only one that could run)."""
    return bool(found.reranked and len(found.selection) >= 2)


def _task2vec_table(records: list[Any], conf: Any, pos: dict[str, int], scale: tuple[float, str]) -> Any:
    import pandas as pd

    rows = [
        {
            "score": ranking.fmt(r.score, scale[0]),
            "rank": r.rank,
            "expert": expert_link(r.model_id, dict(r.info)),
            "rank in resamples": conf.label(pos[r.model_id]),
            "trained on": _trained_on(dict(r.info)),
        }
        for r in records
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _rerank_table(found: Any, index: Any, scale: tuple[float, str]) -> tuple[list[Any], Any, str]:
    """Every shortlisted expert: those run, best re-rank score first, then those that could not be run,
    in their Task2Vec order (``not run``)."""
    import pandas as pd

    sel = found.selection
    stage1 = {m.model_id: m for m in sel.shortlist}
    run = list(sel)
    not_run = [stage1[mid] for mid in found.shortlist if mid not in {r.model_id for r in run} and mid in stage1]
    rows = [
        {
            "re-rank score": ranking.fmt(r.rerank_score),
            "rank": i + 1,
            "expert": expert_link(r.model_id, dict(r.info)),
            "Task2Vec rank": r.stage1_rank,
            "distance": ranking.fmt(r.score, scale[0]),
            "trained on": _trained_on(dict(r.info)),
        }
        for i, r in enumerate(run)
    ] + [
        {
            "re-rank score": "not run",
            "rank": "–",
            "expert": expert_link(m.model_id, dict(m.info)),
            "Task2Vec rank": m.rank,
            "distance": ranking.fmt(m.score, scale[0]),
            "trained on": _trained_on(dict(m.info)),
        }
        for m in not_run
    ]
    c = sel.cost
    label = (
        f"The {len(found.shortlist)} nearest experts by Task2Vec, re-ranked by {sel.rerank} (higher is better); "
        f"{len(not_run)} could not be run here and keep their Task2Vec rank"
        + (f"; distances {scale[1]}" if scale[1] else "")
        + f". Cost: {c.forward_passes} expert forward pass{'es' if c.forward_passes != 1 else ''}, {c.total_s:.1f} s"
    )
    return run + not_run, pd.DataFrame(rows, columns=list(RERANK_TABLE_COLUMNS)), label


def _status(
    prepared: PreparedTask, found: Any, index: Any, records: list[Any], skipped: dict[str, str], notes: list[str],
    scale: tuple[float, str], seconds: float,
) -> str:
    task, conf, emb = prepared.task, found.confidence, found.embedding
    what = unit(task)
    t2v_best = found.records[0].model_id if found.records else "none"
    lines = [prepared.summary]
    if found.rerank is None:
        lines.append(f"**Best expert: {html.escape(t2v_best)}** ({ranking.score_meaning(found.metric, scale[1])}).")
    else:
        lines += _rerank_lines(found, index, skipped, t2v_best, what, scale[1])
    lines.append(ranking.measured(index_modality(index), found.metric))
    lines.append(ranking.verdict(conf, html.escape(t2v_best), what, scale))
    lines += [f"**Warning:** {w}" for w in ranking.warnings(conf, what)]
    lines += [f"**Look also at:** {w}" for w in ranking.class_flags(task.label_names, index, conf)]
    lines.append(
        f"Embedded with probe `{emb.probe}` and the `{emb.method}` estimator on {emb.meta.get('num_samples')} {what} "
        f"(plus {conf.resamples - 1} resamples for the stability) in {seconds:.1f} s."
    )
    lines += [f"- {n}" for n in notes]
    return "\n\n".join(lines)


def _rerank_lines(
    found: Any, index: Any, skipped: dict[str, str], t2v_best: str, what: str, unit: str = ""
) -> list[str]:
    """The headline and the lines of a re-ranking: it never crowns an expert for being the only one
    that could be run."""
    m, score = len(found.shortlist), found.rerank
    meaning = ranking.score_meaning(found.metric, unit)
    skip_lines = "\n".join(f"- Not run: **{html.escape(mid)}**: {html.escape(why)}" for mid, why in skipped.items())
    if found.rerank_error:
        return [
            f"**Best expert: {html.escape(t2v_best)}** by Task2Vec ({meaning}).",
            f"**Re-ranking by {html.escape(score)} failed** ({html.escape(public_text(Exception(found.rerank_error)))})"
            ": the table shows the Task2Vec ranking.",
        ]
    ran = len(found.selection) if found.reranked else 0
    if not _compared(found):
        head = (
            f"**Best expert: {html.escape(t2v_best)}** by Task2Vec ({meaning}). "
            f"**Re-ranking by {score} was not possible:** only {ran} of the {m} shortlisted experts could be run here, "
            "so there is nothing to compare: the Task2Vec ranking stands."
        )
        return [head, skip_lines] if skip_lines else [head]
    best = found.selection[0]
    c = found.selection.cost
    among = f"among the {ran} of {m} shortlisted experts that could be run" if skipped else f"among the {m} shortlisted"
    lines = [
        f"**Best expert by {score}: {html.escape(best.model_id)}** {among} (Task2Vec rank #{best.stage1_rank}; best "
        f"by Task2Vec: {html.escape(t2v_best)}).",
        ranking.rerank_meaning(score) + ".",
        f"Re-ranked the Task2Vec shortlist of {m} of {len(index)} experts by **{score}**: {c.forward_passes} expert "
        f"forward pass{'es' if c.forward_passes != 1 else ''} over {c.examples} {what}, {c.total_s:.1f} s "
        f"({c.forward_fraction:.0%} of the forward passes of running all {c.experts_in_index} experts).",
    ]
    return lines + ([skip_lines] if skip_lines else [])
