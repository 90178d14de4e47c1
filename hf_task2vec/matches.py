"""What an expert search returns (`ExpertMatch`) and what re-ranking needs of a search (`ExpertSearch`).

Shared by `hf_task2vec.selection` (``ExpertIndex.select`` returns matches) and `hf_task2vec.rerank`
(re-ranks a shortlist of them). Both import this module; `selection` imports `rerank` for
``select(..., rerank=...)``, and `rerank` never imports `selection` (tests/test_import_direction.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from .embedding import TaskEmbedding
    from .task2vec import Task2Vec

__all__ = ["ExpertMatch", "ExpertSearch"]


@dataclass(frozen=True)
class ExpertMatch:
    """One expert returned by `ExpertIndex.select`.

    Attributes:
        model_id: the expert's id (Hub id, timm name, path...).
        score: its distance to the query task under ``metric``: **lower is better**.
        rank: 1 for the best expert.
        metric: ``"asymmetric"``, ``"symmetric"`` or ``"model2vec"``.
        info: the expert's info (task, classes, dataset, error, ...), see `ExpertIndex.add`.
    """

    model_id: str
    score: float
    rank: int
    metric: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"ExpertMatch(rank={self.rank}, model_id={self.model_id!r}, score={self.score:.6f}, metric={self.metric})"
        )


class ExpertSearch(Protocol):
    """What `hf_task2vec.rerank.two_stage_select` needs of an expert index (`ExpertIndex` is one)."""

    @property
    def settings(self) -> dict[str, str]: ...

    def __len__(self) -> int: ...

    def embedder(self, **overrides: Any) -> Task2Vec: ...

    def select(self, task_embedding: TaskEmbedding, k: int | None = ..., metric: Any = ...,
               alpha: float | None = ...) -> list[ExpertMatch]: ...  # fmt: skip
