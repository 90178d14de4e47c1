"""hf_task2vec: Task2Vec task embeddings (Achille et al., ICCV 2019) for the Hugging Face ecosystem.

    >>> import hf_task2vec as t2v
    >>> emb = t2v.embed("offline:animal-mnist", classes=["cat", "dog"], image_size=64)
    >>> t2v.distance(emb, other, kind="asymmetric")
"""

from __future__ import annotations

from ._version import __version__
from .batch import run_batch
from .distance import distance, distance_matrix, taxonomic_distance
from .distributed import DistributedTask2Vec, embed_distributed
from .diversity import DiversityResult, cross_diversity, diversity  # the function shadows the module name
from .embedding import LayerSlice, TaskEmbedding
from .errors import (
    EmbeddingFileError,
    HubError,
    IncompatibleEmbeddingsError,
    ProbeError,
    Task2VecError,
    TaskError,
)
from .fisher import fisher_diagonal
from .hub import EmbeddingStore
from .model2vec import Model2Vec
from .probes import FilterGroup, Probe, list_probes, load_probe
from .rerank import ExpertSkippedWarning, Selection, expert_weights
from .selection import ExpertIndex
from .task2vec import Task2Vec, domain_embedding, embed
from .tasks import Task, TaskSpec, load_task, split_tasks
from .text_probes import TextProbe  # importing it registers the text probes with load_probe

__all__ = [
    "__version__",
    "data",
    "embed",
    "Task2Vec",
    "TaskEmbedding",
    "LayerSlice",
    "Task",
    "TaskSpec",
    "load_task",
    "split_tasks",
    "Probe",
    "FilterGroup",
    "load_probe",
    "list_probes",
    "TextProbe",
    "diversity",
    "cross_diversity",
    "DiversityResult",
    "distance",
    "distance_matrix",
    "taxonomic_distance",
    "domain_embedding",
    "fisher_diagonal",
    "ExpertIndex",
    "Selection",
    "ExpertSkippedWarning",
    "expert_weights",
    "Model2Vec",
    "Task2VecError",
    "TaskError",
    "ProbeError",
    "EmbeddingFileError",
    "IncompatibleEmbeddingsError",
    "EmbeddingStore",
    "HubError",
    "DistributedTask2Vec",
    "embed_distributed",
    "run_batch",
]


def __getattr__(name: str):
    # `hf_task2vec.data` imports `datasets` (slow, and absent on some GPU images): load it on first use.
    if name == "data":
        import importlib

        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module 'hf_task2vec' has no attribute {name!r}")
