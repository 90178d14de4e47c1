"""Exceptions raised by hf_task2vec: one hierarchy. Every message names the input at fault and the fix.

Errors of the ``huggingface_hub`` client are translated into `HubError` (or `HubDatasetError`) in one
place, `hf_task2vec.gateway`; ``reason`` says what kind of failure it was, so that callers (the CLI,
the Space) can choose their own wording without parsing messages.
"""

from __future__ import annotations

from typing import Literal

HubReason = Literal["not_found", "revision", "gated", "auth", "forbidden", "unavailable", "offline", "error"]


class Task2VecError(Exception):
    """Base class of every error raised on purpose by hf_task2vec."""


class TaskError(Task2VecError, ValueError):
    """A dataset cannot be used as a task (columns, labels, images, size)."""


class UploadError(TaskError):
    """An uploaded file (zip of class folders, CSV, parquet) is refused: unsafe, over a limit or unreadable
    (`hf_task2vec.uploads`); the message names the file and the fix and shows no server path."""


class ProbeError(Task2VecError, ValueError):
    """A probe network cannot be loaded or used."""


class EmbeddingFileError(Task2VecError, ValueError):
    """A saved embedding is missing, truncated, tampered with or not an embedding."""


class IncompatibleEmbeddingsError(Task2VecError, ValueError):
    """Two embeddings were made with different probes or estimators and cannot be compared."""


class HubError(Task2VecError):
    """A Hub or store operation failed. The message names the repo (or folder) and the fix.

    Attributes:
        reason: ``"not_found"`` (repo or file missing, or private without access), ``"revision"``,
            ``"gated"``, ``"auth"`` (401), ``"forbidden"`` (403), ``"unavailable"`` (unreachable or
            failing after the retries), ``"offline"`` (``HF_HUB_OFFLINE`` and not cached) or ``"error"``.
        status: the HTTP status, when there was one.
    """

    def __init__(self, message: str = "", *, reason: HubReason = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.reason: HubReason = reason
        self.status = status


class HubDatasetError(HubError, TaskError):
    """A Hub dataset cannot be read as a task (missing, private, gated, unknown revision)."""


class EmbeddingNotFoundError(HubError, KeyError):
    """No embedding with that key in the store."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, reason="not_found")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OptionError(Task2VecError, ValueError):
    """An option has a bad value (a count below 1, a non-finite number, an unknown device...).

    Attributes:
        option: the option's name as the Python API spells it (``max_samples``); the CLI shows
            its flag (``--max-samples``) instead.
    """

    def __init__(self, message: str = "", *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class OutputError(Task2VecError, OSError):
    """An output location cannot be written (a directory, read-only, no space left, no permission)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)

    def __str__(self) -> str:  # OSError would prefix "[Errno ...]" when built with two args
        return str(self.args[0]) if self.args else ""


class StoreLockedError(HubError):
    """A local store is being written by another process (its lock file names the owner)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, reason="error")


ExpertReason = Literal["not_an_expert", "missing_base", "base_revision", "adapter_shape", "corrupt"]


class ExpertError(ProbeError):
    """An expert repo (base + PEFT adapter + head + card, see `hf_task2vec.experts`) cannot be loaded.

    Attributes:
        reason: ``"not_an_expert"`` (no card / adapter / head, or an unreadable card), ``"missing_base"``
            (the base network the card names is unknown or not installed), ``"base_revision"`` (the installed
            base has other weights than the ones the adapter was trained on), ``"adapter_shape"`` (the adapter
            does not fit the base's layers) or ``"corrupt"`` (a file differs from the hash its card records).
    """

    def __init__(self, message: str = "", *, reason: ExpertReason = "not_an_expert") -> None:
        super().__init__(message)
        self.reason: ExpertReason = reason
