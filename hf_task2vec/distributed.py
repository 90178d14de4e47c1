"""Accelerate: the Fisher of one task across processes and GPUs.

The same code runs in one process, in N CPU processes (gloo) or on N GPUs across machines, under
``accelerate launch`` (or ``torchrun``). `DistributedTask2Vec` / `embed_distributed` embed **one**
task with its examples sharded over the processes. Every process draws the same class-balanced
sample; process ``r`` of ``W`` takes the examples at positions ``r, r + W, r + 2W, ...`` of it. The
pooled features of all shards are gathered (in the original order) so that every process fits the
same linear head on the full sample; the head is then broadcast from the main process so that it is
bit-identical everywhere. Each process accumulates the per-filter Fisher sums of its shard and the
sums are added across processes (``fisher_diagonal(reduce=...)``). For ``method="exact"`` the result
equals the one-process result up to the order of floating-point sums. For ``method="montecarlo"``
each process draws the labels of its own examples (the main process with ``seed``, process ``r``
with a seed derived from ``(seed, r)``): an equally valid Monte Carlo estimate, but not the same
draws as one process. The ``variational`` estimator is an optimisation over the whole sample: it
runs on the main process (exactly as `Task2Vec` would) and its result is broadcast; only the
feature pass is sharded.

Batch runs over many tasks (``hf-task2vec batch CONFIG``) are `hf_task2vec.batch`.

Launch on the CPU with two real processes (``--cpu`` alone starts only one)::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no -m hf_task2vec batch cfg.yaml

Without GPUs this module creates the Accelerate state with ``cpu=True``, so both ranks use gloo.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .embedding import TaskEmbedding
from .errors import Task2VecError
from .fisher import FisherResult
from .probes import Probe
from .task2vec import DEFAULT_METHOD, Method, Task2Vec, _task_and_options
from .tasks import Task, TaskSpec

logger = logging.getLogger(__name__)

__all__ = ["DistributedTask2Vec", "embed_distributed", "shard_indices", "rank_seed"]


# -- the process group -------------------------------------------------------------------------
class _Comm:
    """Rank, world size, device and the few collectives this module needs, over an Accelerate
    ``Accelerator`` / ``PartialState`` (or a plain single process when Accelerate is absent)."""

    def __init__(self, accelerator: Any = None, *, cpu: bool | None = None, timeout_minutes: float | None = None):
        self.state: Any = None
        env_world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if accelerator is None:
            try:
                from accelerate import PartialState
            except ImportError as exc:
                if env_world > 1:
                    raise Task2VecError(
                        f"WORLD_SIZE={env_world} but accelerate is not installed: "
                        "pip install 'hf_task2vec[distributed]'"
                    ) from exc
                self.rank, self.world = 0, 1
                self.device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
                return
            use_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
            kwargs: dict[str, Any] = {}
            if timeout_minutes is not None:
                kwargs["timeout"] = _dt.timedelta(minutes=timeout_minutes)
            try:
                accelerator = PartialState(cpu=use_cpu, **kwargs)
            except ValueError:  # the process already set Accelerate up on a GPU
                accelerator = PartialState()
                if accelerator.num_processes > 1:
                    raise Task2VecError(
                        "cpu=True was asked for, but this process already set Accelerate up on "
                        f"{accelerator.device}; pass cpu=True to the first Accelerator/PartialState instead"
                    ) from None
        self.state = accelerator
        self.rank = int(accelerator.process_index)
        self.world = int(accelerator.num_processes)
        self.device = torch.device(accelerator.device)
        if cpu and self.world == 1:
            self.device = torch.device("cpu")
        group_world = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        if max(env_world, group_world) != self.world:
            raise Task2VecError(
                f"the launcher started {max(env_world, group_world)} processes but Accelerate reports "
                f"{self.world} ({getattr(accelerator, 'distributed_type', '?')}): the work would silently not be "
                "split. On a machine without GPUs create Accelerator(cpu=True) (or set ACCELERATE_USE_CPU=true) "
                "and launch with `accelerate launch --multi_gpu --num_processes N ...` (not `--cpu`)."
            )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed_type(self) -> str:
        return str(getattr(self.state, "distributed_type", "NO")).split(".")[-1]

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        from accelerate.utils import reduce

        return reduce(t.to(self.device), reduction="sum")

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast from the main process (returns the tensor, on the caller's device)."""
        if self.world == 1:
            return t
        from accelerate.utils import broadcast

        return broadcast(t.to(self.device).contiguous(), from_process=0).to(t.device)

    def gather_rows(self, local: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
        """All ranks' ``[n_r, ...]`` tensors (``n_r = counts[r]``, may differ by rank), on every rank."""
        if self.world == 1:
            return [local]
        from accelerate.utils import gather

        m = max(counts)
        padded = local.new_zeros((m, *local.shape[1:]))
        padded[: local.shape[0]] = local
        full = gather(padded.to(self.device)).cpu()
        return [full[r * m : r * m + counts[r]] for r in range(self.world)]

    def gather_objects(self, obj: Any) -> list[Any]:
        """One picklable object per rank, in rank order, on every rank (small metadata only)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def barrier(self) -> None:
        """Wait for every process. (Not ``wait_for_everyone``: it passes ``device_ids=[local rank]``
        to ``torch.distributed.barrier``, which fails on CPU processes of a machine that has fewer
        GPUs than processes.)"""
        if self.world > 1:
            self.reduce_sum(torch.zeros(1, device=self.device))


def shard_indices(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The examples process ``rank`` of ``world`` takes: positions ``rank, rank + world, ...``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    return np.asarray(indices)[rank::world]


def rank_seed(seed: int, rank: int) -> int:
    """The label-draw seed of process ``rank``: ``seed`` itself on the main process (so that one
    process reproduces `Task2Vec`), a seed derived from ``(seed, rank)`` elsewhere."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


# -- one task, examples sharded over the processes -----------------------------------------------
class DistributedTask2Vec(Task2Vec):
    """`Task2Vec` with the examples of each task sharded over the processes of an Accelerate run.

    Every process must call `embed` with the same task and options (a collective operation);
    every process returns the same embedding. In a single process it computes exactly what
    `Task2Vec` computes.

    Args:
        probe: as for `Task2Vec`.
        accelerator: an ``accelerate.Accelerator`` or ``PartialState``; default: a ``PartialState``
            created with ``cpu=True`` when CUDA is not available (so that N CPU processes use gloo).
        **options: `Task2Vec` options (``method``, ``max_samples``, ``image_size``, ``seed``...).
            ``device`` defaults to the process's Accelerate device; progress bars show on the main
            process only.
    """

    def __init__(self, probe: Probe | str | nn.Module = "embedded", *, accelerator: Any = None, **options: Any):
        self.comm = accelerator if isinstance(accelerator, _Comm) else _Comm(accelerator)
        options.setdefault("device", self.comm.device)
        options["progress"] = bool(options.get("progress", True)) and self.comm.is_main
        super().__init__(probe, **options)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", processes={self.comm.world})"

    @torch.no_grad()
    def features(self, task: Task, indices: np.ndarray) -> torch.Tensor:
        """Pooled features of all ``indices`` (in order), each process computing its own shard."""
        comm = self.comm
        if comm.world == 1:
            return super().features(task, indices)
        mine = shard_indices(indices, comm.rank, comm.world)
        if len(mine):
            local = super().features(task, mine)
        else:  # fewer examples than processes: learn the feature width from one example
            local = super().features(task, indices[:1])[:0]
        counts = [len(range(r, len(indices), comm.world)) for r in range(comm.world)]
        parts = comm.gather_rows(local, counts)
        out = local.new_empty((len(indices), *local.shape[1:]))
        for r, part in enumerate(parts):
            out[r :: comm.world] = part
        return out

    def _sync_head(self, probe: Probe) -> None:
        """Make the head of this call's probe bit-identical on every process (the main process's wins)."""
        head = probe.head
        if head is None or self.comm.world == 1:
            return
        with torch.no_grad():
            for p in (head.weight, head.bias):
                p.copy_(self.comm.broadcast_(p.detach()))

    def _fisher(self, probe: Probe, task: Task, indices: np.ndarray) -> FisherResult:
        comm = self.comm
        self._sync_head(probe)
        if comm.world == 1:
            return super()._fisher(probe, task, indices)
        if self.method == "variational" and self.variational_epochs > 0:
            # An optimisation over the whole sample: run it on the main process, broadcast the result.
            dim = probe.dim
            packed = torch.zeros(2 * dim + 2, dtype=torch.float64)
            options: dict[str, str] = {}
            if comm.is_main:
                res = super()._fisher(probe, task, indices)
                trivial = res.trivial if res.trivial is not None else np.full(dim, np.nan)
                packed = torch.from_numpy(np.concatenate([res.values, trivial, [res.num_inputs, res.num_draws]]))
                options = res.options
            packed = comm.broadcast_(packed)
            options = comm.broadcast_object(options)
            values, trivial = packed[:dim].numpy(), packed[dim : 2 * dim].numpy()
            return FisherResult(
                values.copy(),
                int(packed[-2]),
                int(packed[-1]),
                dict(options),
                trivial=None if np.isnan(trivial).all() else trivial.copy(),
            )
        mine = shard_indices(indices, comm.rank, comm.world)
        batches = self.batches(task, mine, desc=f"fisher {task.name}")
        result = self.fisher_pass(probe, batches, reduce=comm.reduce_sum, seed=rank_seed(self.seed, comm.rank))
        if self.method in ("relative", "variational"):  # closed forms of the summed sums: the same on every rank
            result = self.robust(probe, result, len(indices))
        result.options["seed_per_process"] = "seed on the main process, SeedSequence([seed, rank]) elsewhere"
        return result

    def embed(self, task: Task | Any, **load_kwargs: Any) -> TaskEmbedding:
        emb = super().embed(task, **load_kwargs)
        emb.meta["fisher_processes"] = str(self.comm.world)
        if self.comm.world == 1:
            sharding = "none"
        elif self.method == "variational" and self.variational_epochs > 0:
            sharding = "features sharded; variational optimisation on the main process"
        else:
            sharding = "examples sharded, Fisher sums reduced"
        emb.meta["fisher_sharding"] = sharding
        return emb


def embed_distributed(
    source: Task | TaskSpec | Any,
    probe: Probe | str | nn.Module = "embedded",
    method: Method = DEFAULT_METHOD,
    *,
    accelerator: Any = None,
    spec: TaskSpec | None = None,
    **options: Any,
) -> TaskEmbedding:
    """`hf_task2vec.embed` with the task's examples sharded over the processes of an Accelerate
    run (call it on every process; every process returns the same embedding)::

        # accelerate launch --multi_gpu --num_processes 2 script.py
        emb = embed_distributed("offline:animal-mnist", classes=["cat", "dog"], max_samples=2000)

    Options are split as by `hf_task2vec.embed`: `TaskSpec` fields describe the task, the others go
    to `DistributedTask2Vec`.
    """
    task, options = _task_and_options(source, spec, options)
    return DistributedTask2Vec(probe, method=method, accelerator=accelerator, **options).embed(task)
