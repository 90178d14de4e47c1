"""Expert finder: upload a labeled dataset (images or texts), get the pretrained experts that should transfer best.

Run locally (offline, on 127.0.0.1): ``python spaces/expert-finder/app.py`` (or ``make space``).
Environment: ``GRADIO_SERVER_PORT`` (default 7860), ``GRADIO_SERVER_NAME`` (default 127.0.0.1; a
Space sets 0.0.0.0), ``T2V_EXPERT_INDEX_REPO`` (a Hub dataset repo holding the expert index, or a local
index folder; default: ``./expert_index`` beside this file, else the local index of the
model-selection benchmark), ``T2V_TEXT_EXPERT_INDEX_REPO`` (the same for the text expert index that ranks
text tasks; default ``./text_expert_index``, else ``benchmarks/results/text_expert_index``),
``T2V_SPACE_QUEUE_SIZE`` (waiting requests, default 16), ``T2V_EXPERT_ROOT`` (the folder relative expert
checkpoints are resolved against when the shortlist is re-ranked; default: the repository root),
``T2V_SPACE_EXAMPLES_DIR`` (where the example zips are written) and ``T2V_SPACE_MAX_*`` limits (see
`finder.Limits`).

Errors never raise ``gr.Error`` (whose toast fades after a few seconds and puts error badges over
every output): they are written into the one status area, with the fix, above the last good result,
which stays on the page.
"""

from __future__ import annotations

import html
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # `python spaces/expert-finder/app.py` from anywhere
    sys.path.insert(0, _HERE)

import examples as space_examples  # noqa: E402
import finder  # noqa: E402
import gradio as gr  # noqa: E402
from finder import HUB_UNREACHABLE, InputError, Limits  # noqa: E402

logger = logging.getLogger("expert_finder")

TITLE = "Task2Vec expert finder"
INTRO = """
# Task2Vec expert finder
**Which pretrained model should I fine-tune for my data?** Upload a small labeled dataset (images or texts),
or click an example: the experts are ranked by how close the task each was trained on is to yours.
"""
DETAILS = """
The closest expert should transfer best (Achille et al., *Task2Vec*, ICCV 2019). Your data is read once by a
fixed *probe* network; no expert is run on it, unless you choose to re-rank the shortlist (Options).

**Images**: a `.zip` with one folder per class (`cat/001.png`, `dog/002.png`, ...), a zip with a
`metadata.csv` (`file_name`, `label`), a `.parquet` / `.csv` holding the images (bytes or `data:image/...`
URIs) and labels, or a Hub dataset. **Texts**: a `.csv` / `.parquet` with a text column (`text`, `sentence`,
... or the one string column) and a `label` column, ranked among the **text experts** (MiniLM fine-tuned on
text tasks) with the text probe. The same files load in Python with `hf_task2vec.load_task("my.zip")` and
on the command line with `hf-task2vec embed my.zip`.

The first search after start-up takes about 20 s (it loads the network); later ones take a few seconds.
"""
START_STATUS = "Click an example or upload a dataset, then press **Find experts**."
CSS = """
#status { min-height: 3em; }
/* tables: fixed column widths in px (a phone scrolls the table sideways instead of squeezing a
   column); model ids break at '-' or '/', never in the middle of a word */
#experts [role=gridcell] *, #expert-list [role=gridcell] * { word-break: normal !important;
  overflow-wrap: break-word !important; }
#experts [data-col="0"], #experts [data-col="1"], #experts [data-col="3"] { white-space: nowrap; }
/* figures take the width they are given (Plotly autosize), a phone's included */
#task-map .js-plotly-plot, #heatmap .js-plotly-plot { width: 100%; }
@media (max-width: 480px) {
  #details { font-size: 14px; }
}
"""


# the result table's column types and widths (px: a phone scrolls the table sideways), Task2Vec ranking or re-ranked
TABLE_LAYOUTS = {
    finder.TABLE_COLUMNS: {
        "datatype": ["str", "number", "markdown", "str", "str"],
        "column_widths": ["72px", "52px", "210px", "130px", "240px"],
    },
    finder.RERANK_TABLE_COLUMNS: {
        "datatype": ["str", "str", "markdown", "number", "str", "str"],
        "column_widths": ["96px", "52px", "200px", "95px", "92px", "180px"],
    },
}


def measure_width(position: int) -> str:
    """The JavaScript a search starts with: it puts the width (px) the figures will be drawn at into input
    ``position`` (the heatmap's, else the status's above it, in the same column, before the first result)."""
    return f"""(...args) => {{
        const box = s => document.querySelector(s)?.getBoundingClientRect().width || 0;
        const width = box('#heatmap .js-plotly-plot') || box('#status');
        args[{position}] = width ? Math.round(width) : null;
        return args.slice(0, {position + 1}); }}"""


def table_layout(table: Any) -> dict[str, list[str]]:
    """The `TABLE_LAYOUTS` entry of a result table (by its columns)."""
    return TABLE_LAYOUTS[tuple(table.columns)]


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


def error_status(title: str, message: str, last_good: str | None) -> str:
    """The status area after an error: the message with its fix, then the last good result (kept)."""
    text = f"### Error: {html.escape(title)}\n\n{html.escape(message)}"
    if last_good:
        text += "\n\n---\n\n*The last result is still shown below:*\n\n" + last_good
    return text


def explain(exc: BaseException) -> tuple[str, str]:
    """``(title, message)`` for an error of a search: the user's input (with the fix), the Hub out of
    reach (retrying cannot help: upload instead), or a server fault."""
    if finder.hub_unreachable(exc):
        return "The Hub cannot be reached", f"{HUB_UNREACHABLE} — upload a zip instead (the Upload tab)."
    if isinstance(exc, InputError):
        return "Cannot use this input", str(exc)
    return (
        "Something went wrong on the server",
        f"{type(exc).__name__}: {str(exc)[:200]}. This is a bug, not your input; the server log has the details.",
    )


def _text_index_or_none() -> Any:
    """The default text expert index, or ``None`` (logged) when there is none: text search is then off."""
    try:
        return finder.load_text_expert_index()
    except Exception as exc:
        logger.warning("no text expert index (text tasks cannot be ranked): %s: %s", type(exc).__name__, exc)
        return None


def build_app(
    index: Any = None,
    *,
    text_index: Any = None,
    limits: Limits | None = None,
    index_error: str | None = None,
    examples_dir: str | os.PathLike[str] | None = None,
) -> gr.Blocks:
    """The Gradio Blocks of the Space.

    Args:
        index: an expert index (`hf_task2vec.selection.ExpertIndex` or anything with ``select`` and
            ``experts``); loaded with `finder.load_expert_index` when ``None``. When none can be
            loaded the page still starts and says why.
        text_index: the expert index that ranks text tasks; when both are ``None`` it is loaded with
            `finder.load_text_expert_index` (if there is one); with an explicit ``index`` only if given.
        limits: per-request limits (default: `Limits.from_env`).
        index_error: show this instead of an index (the page explains how to build one).
        examples_dir: where the example zips are written (default `examples.default_folder`).
    """
    limits = limits or Limits.from_env()
    if index is None and text_index is None and index_error is None:
        text_index = _text_index_or_none()
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
    opts: dict[str, Any] = {}
    if index is not None and not index_error:
        try:
            opts = finder.index_options(index, limits)
        except InputError as exc:
            index_error = str(exc)
    index_line = finder.describe_index(index) if opts else f"**{index_error}**"
    text_opts: dict[str, Any] = {}
    if text_index is not None and opts:
        try:
            text_opts = finder.index_options(text_index, limits)
        except InputError as exc:
            logger.warning("text expert index not used: %s", exc)
            text_index = None
    helps: dict[str, str] = opts.get("help", {})
    n_experts = int(opts.get("experts", 1))
    default_samples = int(opts.get("max_samples", min(500, limits.max_samples)))
    built_examples = space_examples.build_examples(examples_dir) if opts else []
    if text_opts:
        built_examples += space_examples.build_examples(examples_dir, text=True)

    def index_for(task: Any) -> Any:
        """The loaded index whose experts read the task's modality (else the main one: the search
        then says why it cannot rank the task)."""
        want = "text" if getattr(task, "is_text", False) else "image"
        for candidate in (index, text_index):
            if candidate is not None and finder.index_modality(candidate) == want:
                return candidate
        if want == "text":
            raise InputError(
                "this is a text task, and no text expert index is loaded: build one with `python "
                "benchmarks/build_text_experts.py`, or set T2V_TEXT_EXPERT_INDEX_REPO to a text expert index"
            )
        return index

    def find(
        upload: str | None,
        hub_id: str,
        hub_split: str,
        hub_config: str,
        mode: str,
        image_col: str,
        label_col: str,
        max_samples: float,
        k: float,
        metric: str,
        projection: str,
        token_text: str,
        last_good: str | None,
        rerank: str = finder.RERANK_OFF,
        shortlist: float = 4,
        figure_width: float | None = None,
        oauth_token: gr.OAuthToken | None = None,
        # not track_tqdm: it patches tqdm for the whole process, and a bar made before the patch then fails
        # when it closes ("'tqdm' object has no attribute '_progress'"); the search reports its steps itself
        progress: gr.Progress = gr.Progress(),
    ):
        keep = gr.skip()
        try:
            if index is None or index_error:
                raise InputError(index_error or "no expert index is loaded")
            progress(0.02, desc="Checking your data")
            outdir = finder.output_dir()
            with finder.scratch_dir() as work:
                kw = {"image_column": _text(image_col) or None, "label_column": _text(label_col) or None}
                if mode == "hub":
                    if not _text(hub_id):
                        raise InputError("type a Hub dataset id (user/name), or switch to the Upload tab")
                    progress(0.05, desc="Reading the Hub dataset")
                    prepared = finder.task_from_hub(
                        _text(hub_id),
                        limits,
                        split=_text(hub_split) or "train",
                        config=_text(hub_config) or None,
                        token=_token(token_text, oauth_token),
                        max_samples=int(max_samples),
                        **kw,
                    )
                else:
                    if not upload:
                        raise InputError(
                            "upload a .zip of class folders (or a .csv / .parquet) first, or click an example"
                        )
                    prepared = finder.task_from_upload(upload, work, limits, **kw)
                result = finder.search(
                    prepared,
                    index_for(prepared.task),
                    outdir,
                    max_samples=int(max_samples),
                    k=int(k),
                    metric=metric,
                    projection=projection,
                    limits=limits,
                    on_step=lambda f, t: progress(f, desc=t),
                    rerank=rerank,
                    shortlist=int(shortlist),
                    figure_width=figure_width or None,
                )
        except Exception as exc:
            if not isinstance(exc, InputError) and not finder.hub_unreachable(exc):
                logger.exception("search failed")
            title, message = explain(exc)
            return error_status(title, message, last_good), keep, keep, keep, keep, keep, keep, keep
        return (
            result.status,
            gr.Dataframe(result.table, visible=True, label=result.table_label, **table_layout(result.table)),
            result.map_figure,
            result.heatmap_figure,
            str(result.embedding_path),
            str(result.embedding_path),
            result.status,
            gr.Column(visible=True),
        )

    def push(emb_path: str | None, repo_id: str, token_text: str, oauth_token: gr.OAuthToken | None = None) -> str:
        if not emb_path or not Path(emb_path).is_file():
            return "**Error:** run a search first: there is no embedding to push yet."
        from hf_task2vec import TaskEmbedding

        try:
            return "**Done:** " + finder.push_embedding(
                TaskEmbedding.load(emb_path), _text(repo_id), _token(token_text, oauth_token)
            )
        except InputError as exc:
            return f"**Error: cannot push:** {html.escape(str(exc))}"
        except Exception as exc:
            logger.exception("push failed")
            return f"**Error: cannot push:** {type(exc).__name__}: {html.escape(str(exc)[:200])}"

    def on_upload(path: str | None):
        """Cap the *max examples* slider at the upload's size (and say how many examples it holds). The
        slider's value is not an input here: a stale value above the new maximum would be refused."""
        n = finder.count_examples(path, limits) if path else None
        if n is None:
            return gr.Slider(maximum=limits.max_samples, value=default_samples, info=helps.get("max_samples"))
        top = max(2, min(n, limits.max_samples))
        return gr.Slider(
            maximum=top,
            value=min(default_samples, top),
            info=f"{helps.get('max_samples', '')} Your upload holds {n} examples.",
        )

    def searching() -> str:
        """The status while a search runs: the old result is not left under the progress bar."""
        return "*Searching: reading your data, then embedding it (the bar below moves as it goes)...*"

    def runnable_note(score: str) -> str:
        """Before the run: which experts the re-ranking by ``score`` cannot run here (they keep their
        Task2Vec rank in the table)."""
        if not score or score == finder.RERANK_OFF:
            return ""
        lines = []
        for idx in (index, text_index):
            cannot = finder.cannot_run(idx, score) if idx is not None else {}
            if cannot:
                shown = "; ".join(f"{html.escape(m)} ({html.escape(w)})" for m, w in list(cannot.items())[:6])
                more = f"; and {len(cannot) - 6} more" if len(cannot) > 6 else ""
                lines.append(
                    f"**{len(cannot)} of {len(idx)} {finder.index_modality(idx)} experts cannot be run here** "
                    f"and keep their Task2Vec rank: {shown}{more}."
                )
        return "\n\n".join(lines) or f"Every expert can be run for {score}."

    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Accordion("How it works, what you can upload", open=False, elem_id="details"):
            gr.Markdown(DETAILS)
            gr.Markdown(f"**Expert index:** {index_line}", elem_id="index-line")
            if text_opts:
                gr.Markdown(f"**Text expert index:** {finder.describe_index(text_index)}", elem_id="text-index-line")
        mode = gr.State("upload")
        emb_state = gr.State(None)
        last_good = gr.State(None)
        figure_width = gr.Number(None, visible=False)  # measured in the browser when a search starts
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                with gr.Tabs() as tabs:
                    with gr.Tab("Upload", id="upload") as tab_upload:
                        upload = gr.File(
                            label="Dataset (.zip of class folders, .csv or .parquet)",
                            file_types=sorted(finder.UPLOAD_EXTENSIONS),
                            type="filepath",
                            elem_id="upload",
                        )
                    with gr.Tab("Hub dataset", id="hub") as tab_hub:
                        hub_id = gr.Textbox(
                            label="Dataset id",
                            placeholder="user/name",
                            elem_id="hub-id",
                            info="A dataset on the Hugging Face Hub with an image and a label column.",
                        )
                        with gr.Row():
                            hub_split = gr.Textbox(label="Split", value="train")
                            hub_config = gr.Textbox(label="Config (optional)")
                example_buttons = []
                if built_examples:
                    gr.Markdown("**Examples** (one click uploads the zip and runs the search):")
                    for i, (path, ex) in enumerate(built_examples):
                        example_buttons.append((gr.Button(ex.label, size="sm", elem_id=f"example-{i}"), path))
                with gr.Accordion("Options", open=False, elem_id="options"):
                    gr.Markdown(
                        f"Embedding settings, fixed by the index (the experts were embedded this way, and only "
                        f"embeddings made the same way can be compared): probe `{opts.get('probe', '?')}` · "
                        f"estimator `{opts.get('method', '?')}` · image size {opts.get('image_size') or 'default'}."
                        f"\n\n- **probe**: {helps.get('probe', '')}\n- **estimator**: {helps.get('method', '')}"
                        f"\n- **image size**: {helps.get('image_size', '')}"
                        + (
                            f"\n\nText tasks: probe `{text_opts.get('probe')}` · estimator `{text_opts.get('method')}` "
                            "(fixed by the text index)."
                            if text_opts
                            else ""
                        ),
                        elem_id="fixed-settings",
                    )
                    max_samples = gr.Slider(
                        2,
                        limits.max_samples,
                        value=default_samples,
                        step=1,
                        label="max examples",
                        info=helps.get("max_samples"),
                        elem_id="max-samples",
                    )
                    k = gr.Slider(
                        1,
                        max(2, n_experts),
                        value=min(5, n_experts),
                        step=1,
                        label="experts to show",
                        info=helps.get("k"),
                        elem_id="k",
                    )
                    metric = gr.Radio(
                        opts.get("metrics", ["asymmetric"]),
                        value="asymmetric",
                        label="ranking distance",
                        info=helps.get("metric"),
                    )
                    projection = gr.Radio(
                        list(finder.PROJECTIONS), value="mds", label="task map", info=helps.get("projection")
                    )
                    rerank = gr.Radio(
                        opts.get("reranks", [finder.RERANK_OFF]),
                        value=finder.RERANK_OFF,
                        label="re-rank the shortlist",
                        info=helps.get("rerank"),
                        elem_id="rerank",
                    )
                    runnable = gr.Markdown("", elem_id="runnable")
                    shortlist = gr.Slider(
                        1,
                        max(2, n_experts),
                        value=int(opts.get("shortlist", 1)),
                        step=1,
                        label="shortlist size",
                        info=helps.get("shortlist"),
                        elem_id="shortlist",
                    )
                    with gr.Row():
                        image_col = gr.Textbox(
                            label=finder.INPUT_BOX,
                            placeholder="auto",
                            info="For a table: the column with the images (found if usual), "
                            "or with the texts of a text task.",
                        )
                        label_col = gr.Textbox(
                            label=finder.LABEL_BOX,
                            placeholder="auto",
                            info="For a table: the column with the class labels.",
                        )
                run = gr.Button("Find experts", variant="primary", elem_id="find")
            with gr.Column(scale=3, min_width=320):
                status = gr.Markdown(START_STATUS, elem_id="status")
                with gr.Column(visible=False) as results:
                    table = gr.Dataframe(
                        headers=list(finder.TABLE_COLUMNS),
                        label=finder.TABLE_LABEL,
                        interactive=False,
                        wrap=True,
                        max_height=2000,
                        elem_id="experts",
                        **TABLE_LAYOUTS[finder.TABLE_COLUMNS],
                    )
                    task_map = gr.Plot(label="Your task among the experts' tasks", elem_id="task-map")
                    heatmap = gr.Plot(label="Distances used for the ranking", elem_id="heatmap")
                    emb_file = gr.File(
                        label="Your task embedding (.safetensors; hf_task2vec.TaskEmbedding.load)",
                        interactive=False,
                        elem_id="embedding",
                    )
                    with gr.Accordion("Share the embedding on the Hub", open=False):
                        if os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"):
                            gr.LoginButton()
                        repo = gr.Textbox(label="Hub dataset repo", placeholder="user/task2vec-embeddings")
                        token = gr.Textbox(label="Hub token (write; or log in)", type="password")
                        push_btn = gr.Button("Push embedding")
                        push_status = gr.Markdown(elem_id="push-status")
                if opts:
                    listing = finder.expert_table(index, text_index if text_opts else None)
                    n_text = int((listing["kind"] == "text").sum())
                    gr.Dataframe(
                        listing,
                        datatype=["markdown", "str", "str", "str", "str", "str"],
                        label=f"The {len(listing)} experts ({len(listing) - n_text} image, {n_text} text), the task "
                        "each was trained on, and whether the re-ranking can run it here",
                        interactive=False,
                        wrap=True,
                        max_height=560,
                        column_widths=["210px", "60px", "140px", "220px", "110px", "200px"],
                        show_search="search",
                        elem_id="expert-list",
                    )
        tab_upload.select(lambda: "upload", None, mode)
        tab_hub.select(lambda: "hub", None, mode)
        upload.change(on_upload, upload, max_samples, queue=False, show_progress="hidden")
        inputs = [
            upload,
            hub_id,
            hub_split,
            hub_config,
            mode,
            image_col,
            label_col,
            max_samples,
            k,
            metric,
            projection,
            token,
            last_good,
            rerank,
            shortlist,
            figure_width,
        ]
        outputs = [status, table, task_map, heatmap, emb_file, emb_state, last_good, results]
        search = dict(concurrency_id="search", show_progress_on=[status], js=measure_width(len(inputs) - 1))
        run.click(searching, None, status, queue=False).then(find, inputs, outputs, **search)
        rerank.change(runnable_note, rerank, runnable, queue=False)
        for button, path in example_buttons:
            button.click(
                lambda p=str(path): (p, "upload", gr.Tabs(selected="upload"), on_upload(p)),
                None,
                [upload, mode, tabs, max_samples],
                queue=False,
            ).then(searching, None, status, queue=False).then(find, inputs, outputs, **search)
        push_btn.click(push, [emb_state, repo, token], push_status, concurrency_id="search")
    demo.queue(default_concurrency_limit=1, max_size=int(os.environ.get("T2V_SPACE_QUEUE_SIZE", "16")))
    demo.t2v_examples = built_examples  # for tests and scripts
    return demo


def warm_up(index: Any) -> threading.Thread | None:
    """Load the index's probe in the background, so that the first search does not wait for it."""
    try:
        s = finder.index_settings(index)
    except Exception:
        return None
    thread = threading.Thread(
        target=finder.get_probe, args=(s["probe"], s.get("image_size", "")), daemon=True, name="probe-warm-up"
    )
    thread.start()
    return thread


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = Limits.from_env()
    try:
        index = finder.load_expert_index()
    except Exception:
        index = None
    text_index = _text_index_or_none()
    demo = build_app(index, text_index=text_index, limits=limits) if index is not None else build_app(limits=limits)
    if index is not None:
        warm_up(index)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_options(limits),
    )


def launch_options(limits: Limits | None = None) -> dict[str, Any]:
    """The ``demo.launch`` options the page needs (its CSS, the upload size limit)."""
    limits = limits or Limits.from_env()
    return {"css": CSS, "max_file_size": limits.max_upload_bytes, "show_error": True}


if __name__ == "__main__":
    main()
