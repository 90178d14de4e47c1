"""Expert indexes on the Hub (`hf_task2vec.selection.ExpertIndex.push_to_hub` / ``from_hub``) and
the training dataset a Hub model's card names (`ExpertIndex.add_hub_models`). Every call goes
through `hf_task2vec.gateway` (retries, `HubError`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from ..gateway import HubTarget, hub_call

logger = logging.getLogger(__name__)


def _repo_target(repo_id: str, endpoint: str = "", revision: str | None = None, token: Any = None) -> HubTarget:
    return HubTarget(f"Hub dataset repo {repo_id!r}", endpoint=endpoint, revision=revision, token=token)


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    message: str,
) -> str:
    """Upload ``folder`` to the dataset repo ``repo_id`` (created if missing) in one commit; the commit url."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    target = _repo_target(repo_id, api.endpoint, revision, token)
    hub_call("push", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True), target)
    info = hub_call(
        "push",
        lambda: api.upload_folder(
            folder_path=os.fspath(folder),
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message=message,
        ),
        target,
    )
    return str(getattr(info, "commit_url", info))


def download_files(
    repo_id: str,
    patterns: Sequence[str],
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The local snapshot folder of the files ``patterns`` of the dataset repo ``repo_id``."""
    from huggingface_hub import snapshot_download

    return hub_call(
        "download",
        lambda: snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            allow_patterns=list(patterns),
        ),
        _repo_target(repo_id, revision=revision, token=token),
    )


def expert_index_card(repo_id: str, num_experts: int, settings: Mapping[str, str], rows: list[dict[str, Any]]) -> str:
    """The dataset card (``README.md``) of an expert index repo."""
    s = settings
    lines = [
        "---",
        "tags:",
        "- task2vec",
        "- hf_task2vec",
        "- expert-index",
        "---",
        f"# {repo_id}",
        "",
        f"An [hf_task2vec](https://github.com/) expert index: {num_experts} experts embedded with probe "
        f"`{s.get('probe')}` ({s.get('method')}, image size {s.get('image_size')}).",
        "",
        "```python",
        "from hf_task2vec import ExpertIndex",
        f'index = ExpertIndex.from_hub("{repo_id}")',
        "```",
        "",
        "| model_id | task | dataset |",
        "|---|---|---|",
    ]
    lines += [f"| {r['model_id']} | {r.get('task', '')} | {r.get('dataset', '')} |" for r in rows]
    return "\n".join(lines) + "\n"


def read_model_card(model_id: str, *, token: str | bool | None = None) -> dict[str, Any]:
    """The training dataset named by a Hub model's card metadata, and a few facts about the repo."""
    from huggingface_hub import HfApi

    api = HfApi()
    target = HubTarget(f"Hub model {model_id!r}", token=token)
    info = hub_call("read the model card", lambda: api.model_info(model_id, token=token), target)
    card = info.card_data
    datasets_field = getattr(card, "datasets", None) if card is not None else None
    if card is None:
        try:  # the API answer may omit cardData: read the README itself
            from huggingface_hub import ModelCard

            card_file = hub_call("read the model card", lambda: ModelCard.load(model_id, token=token), target)
            datasets_field = card_file.data.datasets
        except Exception as exc:  # no README: handled as "names no dataset"
            logger.info("%s has no readable model card (%s)", model_id, exc)
    if isinstance(datasets_field, str):
        datasets_field = [datasets_field]
    names = [str(d) for d in (datasets_field or []) if d]
    if len(names) > 1:
        logger.warning(
            "%s names several datasets %s in its card; embedding the first. Pass mapping= to choose.", model_id, names
        )
    return {
        "dataset": names[0] if names else None,
        "datasets_in_card": names,
        "sha": info.sha or "",
        "pipeline_tag": getattr(info, "pipeline_tag", None) or "",
        "library_name": getattr(info, "library_name", None) or getattr(card, "library_name", None) or "",
    }


def add_hub_models(
    index: Any,
    model_ids: Iterable[str],
    probe: Any = None,
    mapping: Mapping[str, str] | None = None,
    *,
    split: str = "train",
    token: str | bool | None = None,
    replace: bool = False,
    progress: bool = True,
    **embed_options: Any,
) -> list[str]:
    """`ExpertIndex.add_hub_models`: embed the training dataset named by each model's card and add
    the model to ``index`` as an expert (see there)."""
    from ..errors import Task2VecError
    from ..task2vec import Task2Vec
    from ..tasks import load_task


    model_ids = list(model_ids)
    mapping = dict(mapping or {})
    if len(index):
        embedder = index.embedder(probe=probe, **embed_options)
    else:
        embedder = Task2Vec(probe if probe is not None else "embedded", **embed_options)
    embedder.progress = embedder.progress and progress
    cache: dict[tuple[str, str], Any] = {}
    added: list[str] = []
    for model_id in tqdm(model_ids, desc="experts", unit="model", disable=not progress or len(model_ids) < 2):
        if model_id in index and not replace:
            raise ValueError(f"expert {model_id!r} is already in the index; pass replace=True to re-embed it")
        card_info = read_model_card(model_id, token=token)
        dataset = mapping.get(model_id) or card_info.get("dataset")
        if not dataset:
            raise Task2VecError(
                f"the model card of {model_id!r} names no training dataset (no `datasets:` entry in its README "
                f"metadata); pass mapping={{{model_id!r}: '<dataset id or path>'}} "
                f"(CLI: --dataset {model_id}=<dataset>)"
            )
        key = (str(dataset), split)
        if key not in cache:
            logger.info("embedding %s (split %s), the training data of %s", dataset, split, model_id)
            cache[key] = embedder.embed(load_task(dataset, split=split))
        emb = cache[key]
        info = {
            "source": "hub",
            "dataset": str(dataset),
            "dataset_revision": emb.meta.get("task_revision", ""),
            "split": split,
            "model_revision": card_info.get("sha", ""),
        }
        for k in ("pipeline_tag", "library_name", "datasets_in_card"):
            if card_info.get(k):
                info[k] = card_info[k]
        # where the expert's weights come from (what `select(..., rerank=...)` loads)
        spec = f"hf-hub:{model_id}" if card_info.get("library_name") == "timm" else model_id
        info["weights"] = {"load_probe": spec, "hub_revision": card_info.get("sha", "")}
        index.add(model_id, emb, replace=replace, **info)
        added.append(model_id)
    return added

