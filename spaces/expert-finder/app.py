"""Expert finder: upload a labeled image dataset, get the pretrained experts that should transfer best.

Run locally (offline, on 127.0.0.1): ``python spaces/expert-finder/app.py`` (or ``make space``).
Environment: ``GRADIO_SERVER_PORT`` (default 7860), ``GRADIO_SERVER_NAME`` (default 127.0.0.1; a
Space sets 0.0.0.0), ``T2V_EXPERT_INDEX_REPO`` (a Hub dataset repo holding the expert index, or a local
index folder; default: ``./expert_index`` beside this file, else the local index of the
model-selection benchmark), ``T2V_SPACE_QUEUE_SIZE`` (waiting requests,
default 16) and ``T2V_SPACE_MAX_*`` limits (see `finder.Limits`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # `python spaces/expert-finder/app.py` from anywhere
    sys.path.insert(0, _HERE)

import finder  # noqa: E402
import gradio as gr  # noqa: E402
from finder import InputError, Limits  # noqa: E402

logger = logging.getLogger("expert_finder")

TITLE = "Task2Vec expert finder"
INTRO = """
# Task2Vec expert finder
Upload a small labeled image dataset and get the pretrained **experts** whose training task is
closest to yours - the ones that should transfer best (Achille et al., *Task2Vec*, ICCV 2019).
Your task is embedded once with a fixed probe network (the diagonal Fisher information of its
weights); no expert is run on your data.

**Input**: a `.zip` with one folder per class (`cat/001.png`, `dog/002.png`, ...), or a zip with a
`metadata.csv` (`file_name`, `label`) next to the images, or a `.parquet` / `.csv` holding the images
themselves (bytes or `data:image/...;base64` URIs) and a label column - or a Hub dataset id.
"""


def _text(value: Any) -> str:
    """A text box's value, stripped ('' for an empty box, which Gradio may send as None)."""
    return value.strip() if isinstance(value, str) else ""


def _token(text: str | None, oauth_token: Any) -> str | bool | None:
    """The visitor's token (typed, or from the Space login). Without one: on a Space ``False`` (send
    no token: never the Space owner's ``HF_TOKEN`` secret on a visitor's behalf); when run locally
    ``None`` (the machine's own credentials)."""
    if _text(text):
        return _text(text)
    if oauth_token is not None and getattr(oauth_token, "token", None):
        return oauth_token.token
    return False if os.environ.get("SPACE_ID") else None


def build_app(index: Any = None, *, limits: Limits | None = None, index_error: str | None = None) -> gr.Blocks:
    """The Gradio Blocks of the Space.

    Args:
        index: an expert index (`hf_task2vec.selection.ExpertIndex` or anything with ``select`` and
            ``experts``); loaded with `finder.load_expert_index` when ``None``. When none can be
            loaded the page still starts and says why.
        limits: per-request limits (default: `Limits.from_env`).
    """
    limits = limits or Limits.from_env()
    if index is None and index_error is None:
        try:
            index = finder.load_expert_index()
        except Exception as exc:  # the page must start anyway and explain
            index_error = (
                f"No expert index could be loaded ({type(exc).__name__}: {exc}). Build the offline one with "
                "`python benchmarks/model_selection.py --quick`, or set T2V_EXPERT_INDEX_REPO to a Hub dataset "
                "repo holding an index (ExpertIndex.push_to_hub)."
            )
            logger.warning(index_error)
    from hf_task2vec import list_probes
    from hf_task2vec.task2vec import METHODS

    settings: dict[str, str] = {}
    if index is not None:
        try:
            settings = finder.index_settings(index)
        except InputError as exc:
            index_error = str(exc)
    index_line = finder.describe_index(index) if index is not None and not index_error else f"**{index_error}**"
    probes = list_probes()
    default_probe = settings.get("probe") if settings.get("probe") in probes else probes[0]
    default_method = settings.get("method") if settings.get("method") in METHODS else "montecarlo"
    metrics = ["asymmetric", "symmetric"] + (["model2vec"] if getattr(index, "has_model2vec", False) else [])

    def find(
        upload: str | None,
        hub_id: str,
        hub_split: str,
        hub_config: str,
        mode: str,
        image_col: str,
        label_col: str,
        probe: str,
        method: str,
        max_samples: float,
        k: float,
        metric: str,
        projection: str,
        token_text: str,
        oauth_token: gr.OAuthToken | None = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ):
        if index is None or index_error:
            raise gr.Error(index_error or "no expert index is loaded")
        progress(0, desc="checking the input")
        outdir = finder.output_dir()
        try:
            with finder.scratch_dir() as work:
                kw = {"image_column": _text(image_col) or None, "label_column": _text(label_col) or None}
                if mode == "hub":
                    if not _text(hub_id):
                        raise InputError("type a Hub dataset id (user/name), or switch to the Upload tab")
                    prepared = finder.task_from_hub(
                        _text(hub_id), limits, split=_text(hub_split) or "train", config=_text(hub_config) or None,
                        token=_token(token_text, oauth_token), max_samples=int(max_samples), **kw,
                    )
                else:
                    if not upload:
                        raise InputError("upload a .zip of class folders (or a .csv / .parquet) first")
                    prepared = finder.task_from_upload(upload, work, limits, **kw)
                progress(0.1, desc="embedding your task")
                result = finder.search(
                    prepared, index, outdir, probe=probe, method=method, max_samples=int(max_samples), k=int(k),
                    metric=metric, projection=projection, limits=limits,
                )
        except InputError as exc:
            raise gr.Error(str(exc), title="Cannot use this input") from exc
        except gr.Error:
            raise
        except Exception as exc:
            logger.exception("search failed")
            raise gr.Error(f"Something went wrong on the server ({type(exc).__name__}); please try again.") from exc
        notes = "".join(f"\n- {n}" for n in result.notes)
        status = (
            f"{prepared.summary}  \nEmbedded with `{result.embedding.probe}` / `{result.embedding.method}` on "
            f"{result.embedding.meta.get('num_samples')} images and ranked in {result.seconds:.1f} s. "
            f"Best expert: **{result.table.iloc[0]['expert'] if len(result.table) else 'none'}** "
            f"(score = {metric} distance from the expert's training task to yours; lower is better).{notes}"
        )
        return (
            status,
            result.table,
            str(result.map_png),
            str(result.heatmap_png),
            str(result.embedding_path),
            str(result.embedding_path),
        )

    def push(emb_path: str | None, repo_id: str, token_text: str, oauth_token: gr.OAuthToken | None = None) -> str:
        if not emb_path or not Path(emb_path).is_file():
            raise gr.Error("run a search first: there is no embedding to push yet")
        from hf_task2vec import TaskEmbedding

        try:
            return finder.push_embedding(TaskEmbedding.load(emb_path), _text(repo_id), _token(token_text, oauth_token))
        except InputError as exc:
            raise gr.Error(str(exc), title="Cannot push") from exc

    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"**Expert index:** {index_line}", elem_id="index-line")
        mode = gr.State("upload")
        emb_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Upload", id="upload") as tab_upload:
                        upload = gr.File(
                            label="Dataset (.zip of class folders, .csv or .parquet)",
                            file_types=sorted(finder.UPLOAD_EXTENSIONS),
                            type="filepath",
                            elem_id="upload",
                        )
                    with gr.Tab("Hub dataset", id="hub") as tab_hub:
                        hub_id = gr.Textbox(label="Dataset id", placeholder="user/name", elem_id="hub-id")
                        with gr.Row():
                            hub_split = gr.Textbox(label="Split", value="train")
                            hub_config = gr.Textbox(label="Config (optional)")
                with gr.Accordion("Options", open=False):
                    with gr.Row():
                        image_col = gr.Textbox(label="image column", placeholder="auto")
                        label_col = gr.Textbox(label="label column", placeholder="auto")
                    probe = gr.Dropdown(probes, value=default_probe, label="probe network")
                    method = gr.Dropdown(list(METHODS), value=default_method, label="Fisher estimator")
                    max_samples = gr.Slider(
                        16, limits.max_samples, value=min(256, limits.max_samples), step=16, label="max samples"
                    )
                    k = gr.Slider(1, 20, value=5, step=1, label="experts to show")
                    metric = gr.Radio(metrics, value="asymmetric", label="ranking distance")
                    projection = gr.Radio(["mds", "tsne"], value="mds", label="map projection")
                run = gr.Button("Find experts", variant="primary", elem_id="find")
            with gr.Column(scale=3):
                status = gr.Markdown("Upload a dataset and press **Find experts**.", elem_id="status")
                table = gr.Dataframe(
                    headers=["rank", "expert", "score", "trained on"],
                    datatype=["number", "markdown", "number", "str"],
                    label="Best experts (lowest distance first)",
                    interactive=False,
                    wrap=True,
                    column_widths=["8%", "44%", "10%", "38%"],
                    elem_id="experts",
                )
                with gr.Row():
                    task_map = gr.Image(label="Your task among the experts' tasks", type="filepath", height=440,
                                        elem_id="task-map")
                    heatmap = gr.Image(label="Distance heatmap", type="filepath", height=440, elem_id="heatmap")
                emb_file = gr.File(label="Your task embedding (.safetensors)", interactive=False, elem_id="embedding")
                with gr.Accordion("Share the embedding on the Hub", open=False):
                    if os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"):
                        gr.LoginButton()
                    repo = gr.Textbox(label="Hub dataset repo", placeholder="user/task2vec-embeddings")
                    token = gr.Textbox(label="Hub token (write; or log in)", type="password")
                    push_btn = gr.Button("Push embedding")
                    push_status = gr.Markdown()
        tab_upload.select(lambda: "upload", None, mode)
        tab_hub.select(lambda: "hub", None, mode)
        run.click(
            find,
            [upload, hub_id, hub_split, hub_config, mode, image_col, label_col, probe, method, max_samples, k,
             metric, projection, token],
            [status, table, task_map, heatmap, emb_file, emb_state],
            concurrency_id="search",
        )
        push_btn.click(push, [emb_state, repo, token], push_status, concurrency_id="search")
    demo.queue(default_concurrency_limit=1, max_size=int(os.environ.get("T2V_SPACE_QUEUE_SIZE", "16")))
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = Limits.from_env()
    demo = build_app(limits=limits)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=limits.max_upload_bytes,
        show_error=True,
    )


if __name__ == "__main__":
    main()
