"""Validation shared by the Python API, the command line and batch configs.

Every check raises an exception of the `hf_task2vec.errors` hierarchy whose message names the value
at fault and the fix: `OptionError` (also a ``ValueError``) for options, `OutputError` (also an
``OSError``) for output locations. The checks run before any work starts, so a bad option or an
unwritable ``--out`` costs nothing.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import OptionError, OutputError
from .head import HEADS

#: The smallest image side accepted: below it every probe layer sees a 1x1 map and the Fisher says
#: nothing about the images.
MIN_IMAGE_SIZE = 16
#: The largest image side accepted: the probes are pretrained at 224-260 px, and one 1024-px image
#: already needs about 2.3 GB in the Fisher pass (`FISHER_BYTES_PER_PIXEL`).
MAX_IMAGE_SIZE = 1024
#: Memory of the Fisher pass per image pixel (activations and per-sample gradient buffers), measured
#: on the embedded probe at 224 px: 32 images peak at 4.53 GB and 8 at 1.96 GB, 107 MB per image
#: (benchmarks/results/fisher_memory.md). Used to refuse an image size / batch size that cannot fit.
FISHER_BYTES_PER_PIXEL = 2150
#: The most label draws per input (montecarlo): each draw is one more backward pass per example.
MAX_N_SAMPLES = 1000
#: The largest batch: a pass holds the activations of the whole batch.
MAX_BATCH_SIZE = 8192
#: Head-fit iterations and refinement epochs: each is a full pass over the cached features / the data.
MAX_HEAD_EPOCHS = 100_000
MAX_VARIATIONAL_EPOCHS = 1000
#: Seeds are taken by numpy and torch alike up to 2^32 - 1.
MAX_SEED = 2**32 - 1


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = 1,
    allow_none: bool = False,
    maximum: int | None = None,
    why: str = "",
) -> int | None:
    """``value`` as an int (``None`` passes when ``allow_none``); refuses bools, fractions and
    strings, values below ``minimum`` and above ``maximum`` (``why``: the reason for the maximum,
    shown in the message)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
        isinstance(value, float) and not value.is_integer()
    ):
        if hasattr(value, "__index__") and not isinstance(value, bool):  # numpy integers
            value = int(value)
        else:
            raise OptionError(f"{name} must be an integer, got {value!r}", option=name)
    value = int(value)
    if minimum is not None and value < minimum:
        raise OptionError(f"{name} must be at least {minimum} (got {value})", option=name)
    if maximum is not None and value > maximum:
        raise OptionError(f"{name} must be at most {maximum} (got {value}){': ' + why if why else ''}", option=name)
    return value


def check_float(
    name: str, value: Any, *, minimum: float | None = None, positive: bool = False, allow_none: bool = False
) -> float | None:
    """``value`` as a finite float (``None`` passes when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) and not hasattr(value, "__float__"):
        raise OptionError(f"{name} must be a number, got {value!r}", option=name)
    value = float(value)
    if not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value!r}", option=name)
    if positive and value <= 0:
        raise OptionError(f"{name} must be greater than 0 (got {value!r})", option=name)
    if minimum is not None and value < minimum:
        raise OptionError(f"{name} must be at least {minimum} (got {value!r})", option=name)
    return value


def check_image_size(value: Any, name: str = "image_size") -> int | None:
    """An image side of `MIN_IMAGE_SIZE` to `MAX_IMAGE_SIZE` pixels, or ``None`` (the probe's own size)."""
    if value is None:
        return None
    size = check_int(name, value, minimum=None)
    if size is not None and size < MIN_IMAGE_SIZE:
        raise OptionError(
            f"{name} must be at least {MIN_IMAGE_SIZE} pixels (got {size}); use 32 or more, or leave it unset "
            "for the probe's pretrained size",
            option=name,
        )
    if size is not None and size > MAX_IMAGE_SIZE:
        per_image = MAX_IMAGE_SIZE**2 * FISHER_BYTES_PER_PIXEL
        raise OptionError(
            f"{name} must be at most {MAX_IMAGE_SIZE} pixels (got {size}): the probes are pretrained at 224-260 px, "
            f"and the Fisher pass needs about {_gb(per_image)} per {MAX_IMAGE_SIZE}-px image "
            f"({_gb(size**2 * FISHER_BYTES_PER_PIXEL)} per {size}-px image); use 224 or leave it unset",
            option=name,
        )
    return size


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.0f} MB"


def memory_of(device: Any) -> tuple[int, str] | None:
    """(bytes, what) of the memory a Fisher pass on ``device`` can use: the GPU's memory, or the
    machine's RAM for the CPU; ``None`` when unknown."""
    try:
        import torch

        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(dev.index or 0).total_memory), f"GPU {dev}"
        if dev is None or dev.type == "cpu":
            if dev is None and torch.cuda.is_available():
                return int(torch.cuda.get_device_properties(0).total_memory), "GPU cuda:0"
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "machine (RAM)"
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    return None


# The automatic CPU batch size: DEFAULT_BATCH_SIZE images up to AUTO_BATCH_SIDE px, fewer above.
DEFAULT_BATCH_SIZE = 32
AUTO_BATCH_SIDE = 112


def auto_batch_size(image_side: int | None, device: Any = "cpu") -> int:
    """The batch size `Task2Vec` uses when none is given: on the CPU it shrinks with the pixel count
    (a 224-px pass of 32 images peaks at ~4.5 GB with the embedded probe, one of 8 at ~1.9 GB;
    benchmarks/results/fisher_memory.md); accelerators and text probes get `DEFAULT_BATCH_SIZE`."""
    import torch

    if torch.device(device).type != "cpu" or not image_side:
        return DEFAULT_BATCH_SIZE
    return max(1, min(DEFAULT_BATCH_SIZE, int(DEFAULT_BATCH_SIZE * (AUTO_BATCH_SIDE / image_side) ** 2)))


def check_pass_memory(image_size: int, batch_size: int | None, device: Any = None) -> None:
    """Refuse an ``image_size`` / ``batch_size`` whose Fisher pass cannot fit in the memory of
    ``device`` (estimate: `FISHER_BYTES_PER_PIXEL` per pixel of every image of a batch; ``None``:
    the automatic batch size)."""
    found = memory_of(device)
    if found is None:
        return
    available, what = found
    batch = batch_size or auto_batch_size(image_size, device if device is not None else "cpu")
    per_image = image_size**2 * FISHER_BYTES_PER_PIXEL
    need = batch * per_image
    if need > available:
        fit = available // per_image
        fix = f"lower batch_size to at most {fit}" if fit >= 1 else "lower image_size"
        raise OptionError(
            f"image_size {image_size} with batch_size {batch} needs about {_gb(need)} for the Fisher pass "
            f"({_gb(per_image)} per image, {FISHER_BYTES_PER_PIXEL} bytes per pixel measured on the embedded probe) "
            f"but the {what} has {_gb(available)}: {fix} (or image_size)",
            option="batch_size" if batch_size else "image_size",
        )


def text_position_limit(probe: Any) -> int | None:
    """The most tokens a text probe can read: its model's position table (``max_position_embeddings``,
    GPT-2's ``n_positions``) and its tokenizer's ``model_max_length``, whichever is smaller (RoBERTa's
    table has 2 extra rows); ``None`` for a probe that does not say."""
    limits: list[int] = []
    modules = probe.modules() if hasattr(probe, "modules") else []
    for module in modules:
        config = getattr(module, "config", None)
        for attr in ("max_position_embeddings", "n_positions"):
            value = getattr(config, attr, None) if config is not None else None
            if isinstance(value, int) and value > 0:
                limits.append(value)
                break
        if limits:
            break
    tokenizer_limit = getattr(getattr(probe, "tokenizer", None), "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def check_max_length(value: Any, probe: Any = None, name: str = "max_length") -> int | None:
    """A text truncation length: at least 2 tokens and, for a known ``probe``, at most its
    position limit (`text_position_limit`: 512 for MiniLM / BERT); ``None`` passes."""
    length = check_int(name, value, minimum=2, allow_none=True)
    if length is None or probe is None:
        return length
    limit = text_position_limit(probe)
    if limit is not None and length > limit:
        raise OptionError(
            f"{name} must be at most {limit} tokens for the probe {getattr(probe, 'name', probe)!r} (got {length}): "
            f"its model has {limit} positions, so longer texts cannot be read; use {limit} or less",
            option=name,
        )
    return length


def check_device(device: Any, name: str = "device") -> Any:
    """A usable ``torch.device`` for ``device`` (``None`` passes): refuses unknown names and CUDA
    devices this machine does not have, before any model is loaded."""
    if device is None:
        return None
    import torch

    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise OptionError(
                f"{name} {device!r} is not a device; use cpu, cuda, cuda:N (or mps on a Mac)", option=name
            ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"{name} {str(device)!r}: this machine has no CUDA GPU; use {name} cpu", option=name)
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise OptionError(
                f"{name} {str(device)!r}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})",
                option=name,
            )
    elif dev.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise OptionError(f"{name} {str(device)!r}: MPS is not available here; use {name} cpu", option=name)
    elif dev.type not in ("cpu", "meta", "xpu", "hpu", "xla"):
        raise OptionError(f"{name} {str(device)!r} is not supported; use cpu or cuda", option=name)
    return dev


def _nearest_existing(path: Path) -> Path:
    for p in [path, *path.parents]:
        if os.path.lexists(p):
            return p
    return Path(".")


_REASONS = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
    errno.ENOSPC: "has no space left",
    errno.EDQUOT: "is over its disk quota",
    errno.ENAMETOOLONG: "has a name that is too long",
}


def os_reason(exc: OSError) -> str:
    """A short human reason for an OS error on an output path."""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def check_output_file(path: str | os.PathLike[str], *, option: str = "output", expected_bytes: int = 0) -> Path:
    """Check, before the work, that a file can be written at ``path``: not a directory, its folder
    is (or can be created as) a writable directory, and it has ``expected_bytes`` (plus a margin)
    free. Nothing is left behind by the check."""
    path = Path(path)
    shown = f"{option} {str(path)!r}"
    if path.is_dir():
        raise OutputError(f"{shown} is a directory; give a file path (e.g. {str(path / 'task.safetensors')!r})")
    return _check_folder(path.parent, shown, option, expected_bytes)


def check_output_dir(path: str | os.PathLike[str], *, option: str = "output", expected_bytes: int = 0) -> Path:
    """Like `check_output_file` for a folder that will be created (or written into)."""
    path = Path(path)
    shown = f"{option} {str(path)!r}"
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{shown} exists and is not a directory; choose another {option}")
    _check_folder(path, shown, option, expected_bytes)
    return path


def _check_folder(folder: Path, shown: str, option: str, expected_bytes: int) -> Path:
    base = _nearest_existing(folder if str(folder) else Path("."))
    if not base.is_dir():
        raise OutputError(f"{shown}: {str(base)!r} is not a directory; choose another {option}")
    try:  # the real test: create (and remove) a file where the output will go
        fd, probe = tempfile.mkstemp(dir=base, prefix=".hf_task2vec-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{shown} {os_reason(exc)}; choose another location for {option}") from exc
    if expected_bytes:
        try:
            free = shutil.disk_usage(base).free
        except OSError:
            free = None
        need = int(expected_bytes * 1.1) + 64 * 1024
        if free is not None and free < need:
            raise OutputError(
                f"{shown}: only {free / 1e6:.2f} MB free on that file system and the output needs about "
                f"{need / 1e6:.2f} MB; free some space or choose another location for {option}"
            )
    return folder


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise OptionError(f"{name} must be one of {', '.join(choices)}; got {value!r}", option=name)
    return value


def check_embedder_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check the `Task2Vec` options present in ``options`` (a batch config's ``options:``, or the
    constructor's arguments); returns them normalised (ints as ints, the device as a torch.device).
    Unknown names pass through untouched (the caller decides about them)."""
    rules: dict[str, Any] = {
        "max_samples": lambda v: check_int("max_samples", v, allow_none=True),
        "n_samples": lambda v: check_int(
            "n_samples", v, maximum=MAX_N_SAMPLES,
            why=f"each label draw is one more backward pass per example, so {MAX_N_SAMPLES} draws already cost "
            f"{MAX_N_SAMPLES} times a one-draw pass; for a less noisy Fisher use more examples (max_samples) or "
            "method exact",
        ),
        "batch_size": lambda v: check_int(
            "batch_size", v, allow_none=True, maximum=MAX_BATCH_SIZE,
            why=f"a pass holds the activations of the whole batch (about {_gb(224**2 * FISHER_BYTES_PER_PIXEL)} "
            "per 224-px image); the embedding does not depend on the batch size, leave it unset for an automatic one",
        ),
        "head_epochs": lambda v: check_int(
            "head_epochs", v, maximum=MAX_HEAD_EPOCHS,
            why="L-BFGS iterations of the head fit, which converges in a few hundred",
        ),
        "variational_epochs": lambda v: check_int(
            "variational_epochs", v, minimum=0, maximum=MAX_VARIATIONAL_EPOCHS,
            why="each epoch is a full pass over the examples, and the closed form (0) is already the optimum",
        ),
        "rank": lambda v: check_int("rank", v, allow_none=True),
        "prior_examples": lambda v: check_int("prior_examples", v, allow_none=True),
        "seed": lambda v: check_int(
            "seed", v, minimum=0, maximum=MAX_SEED, why="numpy and torch take seeds up to 2^32 - 1"
        ),
        "max_length": lambda v: check_max_length(v),
        "head_l2": lambda v: v if v == "auto" else check_float("head_l2", v, minimum=0.0),
        "head": lambda v: check_choice("head", v, HEADS),
        "beta": lambda v: check_float("beta", v, positive=True),
        "image_size": check_image_size,
        "device": check_device,
        "method": lambda v: check_choice("method", v, ("relative", "variational", "exact", "montecarlo")),
        "precision": lambda v: check_choice("precision", v, ("fp32", "bf16")),
    }
    checked = {k: (rules[k](v) if k in rules else v) for k, v in options.items()}
    if checked.get("image_size"):  # the pass must fit in memory (estimate), before anything is loaded
        check_pass_memory(checked["image_size"], checked.get("batch_size"), checked.get("device"))
    return checked
