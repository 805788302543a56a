"""Multitask mixture (spec §5.4): one task per micro-batch, tasks visited in a fixed cycle.

The original sampler (`DistributedBatchTaskBalancedSampler`) walks the tasks in yaml order and gives task k
f_k = n_k // min(n) consecutive batches per cycle, after replicating small datasets (`balance_sample_num`).
Here the cycle is computed once and repeated forever, which is the original's steady state; the mixed dataset
stays a random-access `MapDataset`, so its iterator state is a single batch counter.
"""
from __future__ import annotations

import sys
from typing import Mapping, Sequence

import grain

from streamformer_jax.tasks import registry



def balanced_sizes(sizes: Mapping[str, int], scale: float = 2.0) -> dict[str, int]:
    """`MultiTaskDataset(balance_sample_num=True, scale)`: datasets smaller than max/scale are replicated
    max // len times."""
    largest = max(sizes.values())
    return {k: n * (largest // n) if n < largest / scale else n for k, n in sizes.items()}


def balanced_cycle_counts(sizes: Mapping[str, int], scale: float = 2.0) -> dict[str, int]:
    """Batches per cycle f_k = n_k // min(n) after balancing (with the 2x rule every f_k is 1 or 2)."""
    bal = balanced_sizes(sizes, scale)
    smallest = min(bal.values())
    return {k: max(1, n // smallest) for k, n in bal.items()}


def make_cycle(counts: Mapping[str, int], order: Sequence[str] | None = None) -> tuple[str, ...]:
    """Task of each micro-batch in one cycle: f_k consecutive batches of each task, in `order` (default: the
    registry's order, which is the original's: the concatenation order of scripts/dataset_metadata/all.yaml).

    Tasks missing from `order` follow in sorted order; a count of 0 drops the task.
    """
    order = registry.names() if order is None else order
    names = [t for t in order if t in counts] + sorted(set(counts) - set(order))
    cycle = []
    for name in names:
        n = int(counts[name])
        if n < 0:
            raise ValueError(f"task weight must be a non-negative integer, got {name}={counts[name]}")
        cycle += [name] * n
    if not cycle:
        raise ValueError("the task mixture is empty")
    return tuple(cycle)


class CycleMixMapDataset(grain.MapDataset):
    """Element i is the next unread batch of task cycle[i % len(cycle)].

    Parents are per-task `MapDataset`s of batches. Task t's j-th occurrence reads parents[t][j], so every task
    advances through its own stream independently of the others and of how batches are split over workers.
    """

    def __init__(self, parents: Mapping[str, grain.MapDataset], cycle: Sequence[str]):
        missing = sorted(set(cycle) - set(parents))
        if missing:
            raise ValueError(f"cycle names tasks without a dataset: {missing}")
        self._names = tuple(sorted(set(cycle)))
        super().__init__([parents[n] for n in self._names])
        self._by_name = {n: parents[n] for n in self._names}
        self._cycle = tuple(cycle)
        # Occurrence number of each cycle slot within its task, and occurrences per cycle.
        self._slot_rank = [self._cycle[:i].count(t) for i, t in enumerate(self._cycle)]
        self._per_cycle = {n: self._cycle.count(n) for n in self._names}

    @property
    def cycle(self) -> tuple[str, ...]:
        return self._cycle

    def __len__(self) -> int:
        # Number of whole cycles every task can fill, times the cycle length (infinite for repeated data).
        lengths = [len(self._by_name[n]) // self._per_cycle[n] for n in self._names]
        full = min(lengths)
        if full >= sys.maxsize // len(self._cycle):
            return sys.maxsize
        return full * len(self._cycle)

    def __str__(self) -> str:
        return f"CycleMixMapDataset(cycle={list(self._cycle)})"

    def task_of(self, index: int) -> tuple[str, int]:
        """(task, index into that task's batches) of mixed element `index`."""
        k, r = divmod(index, len(self._cycle))
        task = self._cycle[r]
        return task, k * self._per_cycle[task] + self._slot_rank[r]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        task, j = self.task_of(index)
        batch = self._by_name[task][j]
        if batch is None:
            return None
        return {"task": task, **batch}


__all__ = ["balanced_sizes", "balanced_cycle_counts", "make_cycle", "CycleMixMapDataset"]
