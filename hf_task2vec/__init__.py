"""hf_task2vec: Task2Vec task embeddings (Achille et al., ICCV 2019) for the Hugging Face ecosystem.

    >>> import hf_task2vec as t2v
    >>> emb = t2v.embed("offline:animal-mnist", classes=["cat", "dog"], image_size=64)
    >>> t2v.distance(emb, other, kind="asymmetric")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .distance import distance, distance_matrix, taxonomic_distance  # noqa: E402
from .distributed import DistributedTask2Vec, embed_distributed, run_batch  # noqa: E402
from .embedding import LayerSlice, TaskEmbedding  # noqa: E402
from .errors import (  # noqa: E402
    EmbeddingFileError,
    IncompatibleEmbeddingsError,
    ProbeError,
    Task2VecError,
    TaskError,
)
from .fisher import fisher_diagonal  # noqa: E402
from .hub import EmbeddingStore, HubError  # noqa: E402
from .probes import FilterGroup, Probe, list_probes, load_probe  # noqa: E402
from .selection import ExpertIndex, Model2Vec  # noqa: E402
from .task2vec import Task2Vec, domain_embedding, embed  # noqa: E402
from .tasks import Task, load_task, split_tasks  # noqa: E402

__all__ = [
    "__version__",
    "data",
    "embed",
    "Task2Vec",
    "TaskEmbedding",
    "LayerSlice",
    "Task",
    "load_task",
    "split_tasks",
    "Probe",
    "FilterGroup",
    "load_probe",
    "list_probes",
    "distance",
    "distance_matrix",
    "taxonomic_distance",
    "domain_embedding",
    "fisher_diagonal",
    "ExpertIndex",
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
