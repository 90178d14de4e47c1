"""Model2Vec (Achille et al., ICCV 2019, Sect. 3): a learned co-embedding of experts and tasks.

Each expert ``j`` gets a vector ``m_j = F_j + b_j`` (``F_j`` the Task2Vec embedding of its training
task) and a scale ``gamma`` is learned from a task x expert error matrix, so that
``p(j | t) = softmax_j(-gamma * d_asym(m_j -> t))`` predicts which expert transfers best. Also the
differentiable asymmetric distance it is trained with (`torch_asymmetric_distance`); the d_sym
kernels themselves live in `hf_task2vec.distance`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .distance import DEFAULT_ALPHA, PairwiseSymWorkspace, pairwise_symmetric_distance, torch_symmetric_distance
from .embedding import TaskEmbedding

logger = logging.getLogger(__name__)

__all__ = ["LeaveOneOutResult", "Model2Vec", "torch_asymmetric_distance"]


def torch_asymmetric_distance(
    sources: torch.Tensor,
    targets: torch.Tensor,
    source_trivial: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
) -> torch.Tensor:
    """``d_asym(source_i -> target_j) = d_sym(s_i, t_j) - alpha * d_sym(s_i, trivial_i)``, ``[n, m]``.

    Differentiable in ``sources`` (what Model2Vec learns); equal to
    ``hf_task2vec.distance.pairwise_distances(..., kind="asymmetric")``.

    Args:
        sources: ``[n, D]`` (e.g. the experts' training-task embeddings).
        targets: ``[m, D]`` (the new tasks).
        source_trivial: ``[n, D]`` or ``[1, D]``: the trivial embedding of each source.
        alpha: weight of the complexity term.
    """
    sym = pairwise_symmetric_distance(sources, targets)
    complexity = torch_symmetric_distance(sources, source_trivial.expand_as(sources))
    return sym - alpha * complexity[:, None]


def _as_matrix(x: Sequence[TaskEmbedding] | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(x, np.ndarray):
        arr = np.atleast_2d(np.asarray(x, np.float64))
        return arr, None
    embs = list(x)
    if not embs:
        raise ValueError(f"{what}: need at least one embedding")
    for e in embs[1:]:
        embs[0].check_compatible(e)  # the comparability rule of hf_task2vec.compat
    return np.stack([e.values for e in embs]).astype(np.float64), np.stack([e.trivial for e in embs]).astype(np.float64)


def _first_embedding(x: Sequence[TaskEmbedding] | np.ndarray) -> TaskEmbedding | None:
    if isinstance(x, np.ndarray):
        return None
    first = next(iter(x), None)
    return first if isinstance(first, TaskEmbedding) else None


def _check_against(reference: TaskEmbedding | None, tasks: Sequence[TaskEmbedding] | np.ndarray) -> None:
    """The tasks must be comparable with the experts (the rule of `hf_task2vec.compat`; the tasks agree
    among themselves already): the first expert against the first task, where both are embeddings."""
    task = _first_embedding(tasks)
    if reference is not None and task is not None:
        task.check_compatible(reference)


@dataclass
class LeaveOneOutResult:
    """Model2Vec evaluated leave-one-task-out.

    Attributes:
        distances: ``[T, J]``: row ``t`` holds the Model2Vec distances of task ``t`` to every expert,
            from a fit on the other ``T - 1`` tasks (lower = better).
        selected: ``[T]`` the expert chosen for each task (argmin of its row).
        selected_error: ``[T]`` the measured error of that expert.
        optimal_error: ``[T]`` the best measured error of the task.
        gammas: ``[T]`` the learned scale of each fit.
    """

    distances: np.ndarray
    selected: np.ndarray
    selected_error: np.ndarray
    optimal_error: np.ndarray
    gammas: np.ndarray

    @property
    def relative_error_increase(self) -> float:
        """``mean(selected error) / mean(optimal error) - 1``."""
        opt = float(np.mean(self.optimal_error))
        return float(np.mean(self.selected_error)) / opt - 1.0 if opt > 0 else float("nan")


class Model2Vec:
    """The paper's Model2Vec: a learned co-embedding of experts and tasks (DESIGN.md).

    Each expert ``j`` gets a vector ``m_j = F_j + b_j`` (``F_j`` the embedding of its training task),
    and a scale ``gamma`` is learned, so that ``p(j | t) = softmax_j(-gamma * d_asym(m_j -> t))``
    matches soft labels built from the measured errors, ``softmax_j(-a * zscore_j(error[t, j]))``
    (``a = 20``), by minimising the cross-entropy with Adam (lr 0.05, weight decay 5e-4).

    The offset is parametrised multiplicatively, ``m_j = F_j * exp(c_j + s_j)`` (so
    ``b_j = F_j (exp(c_j + s_j) - 1)``) with a per-filter ``c_j`` and a per-expert log-scale ``s_j``:
    ``m_j`` stays positive like a Fisher diagonal and the step size does not depend on the scale of
    the Fisher values. ``s_j`` is redundant with ``c_j`` (same family of ``m_j``) but lets Adam move an
    expert's overall Fisher magnitude in one coordinate: embeddings of tasks with different numbers
    of examples and classes differ in scale by orders of magnitude, and per-filter steps alone
    disagree in sign and stall (on the benchmark's data the in-sample loss stays near its start).
    The weight decay acts on ``c_j``, pulling the profile of ``m_j`` back to that of ``F_j``.

    Args:
        alpha: the asymmetric weight in ``d_asym``.
        a: the sharpness of the soft labels.
        lr, weight_decay: Adam settings.
        steps: full-batch optimisation steps.
        gamma_init: initial ``gamma`` (default: the inverse of the mean spread of the initial distances).
        dtype: ``torch.float32`` (default, fast) or ``torch.float64``.
        seed: unused by the deterministic full-batch fit; recorded for completeness.
        progress: show a tqdm bar over the steps.

    After `fit`: ``offsets_`` (``[J, D]`` the ``b_j``), ``gamma_``, ``loss_history_``.
    """

    def __init__(
        self,
        *,
        alpha: float = DEFAULT_ALPHA,
        a: float = 20.0,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        steps: int = 200,
        gamma_init: float | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.alpha = float(alpha)
        self.a = float(a)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = int(steps)
        self.gamma_init = gamma_init
        self.dtype = dtype
        self.seed = seed
        self.progress = progress
        self.expert_values_: np.ndarray | None = None
        self.expert_trivial_: np.ndarray | None = None
        self.log_scale_: np.ndarray | None = None
        self.gamma_: float | None = None
        self.loss_history_: list[float] = []
        self.reference_: TaskEmbedding | None = None  # the first expert, when fitted on TaskEmbeddings

    def __repr__(self) -> str:
        fitted = "unfitted" if self.gamma_ is None else f"gamma={self.gamma_:.4g}"
        return f"Model2Vec(alpha={self.alpha}, a={self.a}, steps={self.steps}, {fitted})"

    @staticmethod
    def soft_labels(errors: np.ndarray, a: float = 20.0) -> np.ndarray:
        """``softmax_j(-a * zscore_j(errors[t, j]))`` per task; NaN (unmeasured) entries get 0.
        A task whose measured errors are all equal gets uniform labels over them."""
        e = np.asarray(errors, np.float64)
        mask = np.isfinite(e)
        count = mask.sum(1, keepdims=True)
        mean = np.where(mask, e, 0).sum(1, keepdims=True) / np.maximum(count, 1)
        var = np.where(mask, (e - mean) ** 2, 0).sum(1, keepdims=True) / np.maximum(count, 1)
        std = np.sqrt(var)
        z = np.where(std > 0, (e - mean) / np.where(std > 0, std, 1), 0.0)
        logits = np.where(mask, -a * z, -np.inf)
        logits = logits - logits.max(1, keepdims=True)
        w = np.where(mask, np.exp(logits), 0.0)
        return w / w.sum(1, keepdims=True)

    # -- fitting -------------------------------------------------------------------------------
    def fit(
        self,
        experts: Sequence[TaskEmbedding] | np.ndarray,
        tasks: Sequence[TaskEmbedding] | np.ndarray,
        errors: np.ndarray,
        *,
        expert_trivial: np.ndarray | None = None,
    ) -> Model2Vec:
        """Fit the offsets and gamma.

        Args:
            experts: ``J`` training-task embeddings of the experts (or an array ``[J, D]``).
            tasks: ``T`` task embeddings with measured errors (or ``[T, D]``).
            errors: ``[T, J]`` error of expert ``j`` on task ``t``; NaN where not measured.
            expert_trivial: ``[J, D]`` or ``[1, D]`` trivial embeddings (taken from the embeddings
                when they are `TaskEmbedding`s; required with arrays).
        """
        f, triv = _as_matrix(experts, "experts")
        t, _ = _as_matrix(tasks, "tasks")
        reference = _first_embedding(experts)
        _check_against(reference, tasks)
        if expert_trivial is not None:
            triv = np.atleast_2d(np.asarray(expert_trivial, np.float64))
        if triv is None:
            raise ValueError("Model2Vec.fit with arrays needs expert_trivial=[J, D] or [1, D]")
        e = np.asarray(errors, np.float64)
        if e.shape != (t.shape[0], f.shape[0]):
            raise ValueError(f"errors must be [tasks, experts] = [{t.shape[0]}, {f.shape[0]}], got {list(e.shape)}")
        if f.shape[1] != t.shape[1]:
            raise ValueError(f"experts have dimension {f.shape[1]} but tasks {t.shape[1]}")
        if np.any(f < 0) or np.any(t < 0):
            raise ValueError("Model2Vec needs non-negative (Fisher) embeddings")
        usable = np.isfinite(e).sum(1) >= 2
        if not usable.any():
            raise ValueError("Model2Vec needs at least one task with measured errors for two or more experts")
        q = torch.from_numpy(self.soft_labels(e[usable], self.a)).to(self.dtype)
        mask = torch.from_numpy(np.isfinite(e[usable]))
        F = torch.from_numpy(f).to(self.dtype)
        T = torch.from_numpy(t[usable]).to(self.dtype)
        T0 = torch.from_numpy(triv).to(self.dtype)
        c = torch.zeros_like(F, requires_grad=True)
        scale = torch.zeros(F.shape[0], 1, dtype=self.dtype, requires_grad=True)  # per-expert log-scale
        with torch.no_grad():
            d0 = torch_asymmetric_distance(F, T, T0, self.alpha).T  # [T, J]
            spread = float(torch.nan_to_num(d0.std(1)).mean())
        g0 = self.gamma_init if self.gamma_init is not None else 1.0 / max(spread, 1e-6)
        log_gamma = torch.tensor(math.log(g0), dtype=self.dtype, requires_grad=True)
        opt = torch.optim.Adam(
            [{"params": [c], "weight_decay": self.weight_decay}, {"params": [scale, log_gamma], "weight_decay": 0.0}],
            lr=self.lr,
        )
        self.loss_history_ = []
        workspace = PairwiseSymWorkspace(T, F.shape[0])
        for _ in tqdm(range(self.steps), desc="Model2Vec", disable=not self.progress, leave=False):
            opt.zero_grad()
            m = F * torch.exp(c + scale)
            with torch.no_grad():
                sym = workspace.forward(m.detach()).requires_grad_(True)  # [J, T]
            complexity = torch_symmetric_distance(m, T0.expand_as(m))  # [J], through autograd
            loss = self._loss(sym - self.alpha * complexity[:, None], q, mask, log_gamma)
            loss.backward()
            with torch.no_grad():  # the big pairwise term: hand-written backward, then dm/dc = m
                grad_m, _ = workspace.backward(sym.grad)
                grad_c = grad_m * m.detach()
                c.grad += grad_c
                scale.grad += grad_c.sum(1, keepdim=True)
            opt.step()
            self.loss_history_.append(float(loss.detach()))
        del workspace
        self.expert_values_ = f
        self.expert_trivial_ = triv
        self.reference_ = reference
        self.log_scale_ = (c + scale).detach().to(torch.float64).numpy()
        self.gamma_ = float(torch.exp(log_gamma.detach()))
        logger.info(
            "Model2Vec: loss %.4f -> %.4f, gamma %.4g", self.loss_history_[0], self.loss_history_[-1], self.gamma_
        )
        return self

    def _loss(self, d_experts_tasks, q, mask, log_gamma) -> torch.Tensor:
        d = d_experts_tasks.T  # [T, J]
        logits = (-torch.exp(log_gamma) * d).masked_fill(~mask, float("-inf"))
        logp = torch.log_softmax(logits, dim=1).masked_fill(~mask, 0.0)
        return -(q * logp).sum(1).mean()

    # -- using the fit -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.log_scale_ is None:
            raise ValueError("this Model2Vec is not fitted yet: call fit(experts, tasks, errors) first")

    @property
    def expert_vectors_(self) -> np.ndarray:
        """``[J, D]``: the learned ``m_j = F_j + b_j``."""
        self._check_fitted()
        return self.expert_values_ * np.exp(self.log_scale_)

    @property
    def offsets_(self) -> np.ndarray:
        """``[J, D]``: the learned ``b_j = m_j - F_j``."""
        return self.expert_vectors_ - self.expert_values_

    def distances(self, tasks: Sequence[TaskEmbedding] | np.ndarray) -> np.ndarray:
        """``[T, J]`` ``d_asym(m_j -> t)`` (lower = better)."""
        self._check_fitted()
        t, _ = _as_matrix(tasks, "tasks")
        _check_against(self.reference_, tasks)
        with torch.no_grad():
            d = torch_asymmetric_distance(
                torch.from_numpy(self.expert_vectors_),
                torch.from_numpy(t),
                torch.from_numpy(self.expert_trivial_),
                self.alpha,
            )
        return d.T.numpy()

    def predict_proba(self, tasks: Sequence[TaskEmbedding] | np.ndarray) -> np.ndarray:
        """``[T, J]`` ``p(j | t) = softmax_j(-gamma * d_asym(m_j -> t))``."""
        logits = -self.gamma_ * self.distances(tasks)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def select(self, tasks: Sequence[TaskEmbedding] | np.ndarray) -> np.ndarray:
        """``[T]``: the best expert for each task (argmin of the distances)."""
        return np.argmin(self.distances(tasks), axis=1)

    @classmethod
    def leave_one_task_out(
        cls,
        experts: Sequence[TaskEmbedding] | np.ndarray,
        tasks: Sequence[TaskEmbedding] | np.ndarray,
        errors: np.ndarray,
        *,
        expert_trivial: np.ndarray | None = None,
        progress: bool = False,
        **options: Any,
    ) -> LeaveOneOutResult:
        """Evaluate Model2Vec honestly: for each task, fit on all the other tasks, then select for it.

        Arguments as in `fit`; ``options`` go to the constructor.
        """
        t, _ = _as_matrix(tasks, "tasks")
        _check_against(_first_embedding(experts), tasks)
        e = np.asarray(errors, np.float64)
        if t.shape[0] < 2:
            raise ValueError("leave-one-task-out needs at least two tasks")
        rows, gammas = [], []
        for i in tqdm(range(t.shape[0]), desc="Model2Vec leave-one-out", disable=not progress, leave=False):
            keep = np.arange(t.shape[0]) != i
            model = cls(**options).fit(experts, t[keep], e[keep], expert_trivial=expert_trivial)
            rows.append(model.distances(t[i : i + 1])[0])
            gammas.append(model.gamma_)
        d = np.stack(rows)
        selected = np.argmin(d, axis=1)
        return LeaveOneOutResult(
            distances=d,
            selected=selected,
            selected_error=e[np.arange(e.shape[0]), selected],
            optimal_error=np.nanmin(e, axis=1),
            gammas=np.asarray(gammas),
        )
