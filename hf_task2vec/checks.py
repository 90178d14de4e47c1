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

#: The smallest image side accepted: below it every probe layer sees a 1x1 map and the Fisher says
#: nothing about the images.
MIN_IMAGE_SIZE = 16


def check_int(name: str, value: Any, *, minimum: int | None = 1, allow_none: bool = False) -> int | None:
    """``value`` as an int (``None`` passes when ``allow_none``); refuses bools, fractions and
    strings, and values below ``minimum``."""
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
    """An image side of at least `MIN_IMAGE_SIZE` pixels, or ``None`` (the probe's own size)."""
    if value is None:
        return None
    size = check_int(name, value, minimum=None)
    if size is not None and size < MIN_IMAGE_SIZE:
        raise OptionError(
            f"{name} must be at least {MIN_IMAGE_SIZE} pixels (got {size}); use 32 or more, or leave it unset "
            "for the probe's pretrained size",
            option=name,
        )
    return size


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
        "n_samples": lambda v: check_int("n_samples", v),
        "batch_size": lambda v: check_int("batch_size", v, allow_none=True),
        "head_epochs": lambda v: check_int("head_epochs", v),
        "variational_epochs": lambda v: check_int("variational_epochs", v, minimum=0),
        "rank": lambda v: check_int("rank", v, allow_none=True),
        "prior_examples": lambda v: check_int("prior_examples", v, allow_none=True),
        "seed": lambda v: check_int("seed", v, minimum=0),
        "head_l2": lambda v: check_float("head_l2", v, minimum=0.0),
        "beta": lambda v: check_float("beta", v, positive=True),
        "image_size": check_image_size,
        "device": check_device,
        "method": lambda v: check_choice("method", v, ("montecarlo", "exact", "variational")),
        "precision": lambda v: check_choice("precision", v, ("fp32", "bf16")),
    }
    return {k: (rules[k](v) if k in rules else v) for k, v in options.items()}
