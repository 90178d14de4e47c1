"""Exceptions raised by hf_task2vec. Every message names the input at fault and the fix."""

from __future__ import annotations


class Task2VecError(Exception):
    """Base class of every error raised on purpose by hf_task2vec."""


class TaskError(Task2VecError, ValueError):
    """A dataset cannot be used as a task (columns, labels, images, size)."""


class ProbeError(Task2VecError, ValueError):
    """A probe network cannot be loaded or used."""


class EmbeddingFileError(Task2VecError, ValueError):
    """A saved embedding is missing, truncated, tampered with or not an embedding."""


class IncompatibleEmbeddingsError(Task2VecError, ValueError):
    """Two embeddings were made with different probes or estimators and cannot be compared."""
