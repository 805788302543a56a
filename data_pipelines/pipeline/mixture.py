"""Multitask mixture (spec §5.4): one task per micro-batch, in the original sampler's epoch structure.

The original (`MultiTaskDataset(balance_sample_num=True, scale=2)` + `DistributedBatchTaskBalancedSampler`),
per epoch, over the samples n_k of each task (one per annotation row):

* balancing: a task with n_k < max(n) / 2 is replicated max(n) // n_k times: N_k = n_k * copies_k;
* each task's N_k positions are shuffled (a new permutation every epoch) and cut into b_k = N_k // G global
  batches of G = micro-batch x ranks clips; the partial last batch is dropped;
* the epoch's micro-batches are ordered in cycles: f_k = b_k // min(b) consecutive batches of each task, tasks in
  the metadata's order (kinetics, ssv2, retrieval, grounding, localization, vis); a task whose batches run out
  is skipped, so the epoch ends with shorter cycles. (The original's last group of a task can read past that
  task's batches; here it takes what is left.)

`original_plan` computes that structure once (`MixturePlan.order`: the task of each micro-batch of an epoch, the
same every epoch); `CycleMixMapDataset` over `order` then gives micro-batch m = batch (m // L) * b_k + i of its
task, and each task's stream (`samples.TaskStream`) reshuffles per epoch. Everything is a pure function of the
micro-batch index, so the iterator state is one counter and resuming is exact. The optimizer step groups
Σ f_k micro-batches (the cycle): the trainer derives `accum_steps` from `MixturePlan.cycle` or rejects another.

Explicit `task_weights` (finetuning, tests) keep a plain repeated cycle of weights, each task's stream walking
its samples epoch after epoch (`weighted_plan`).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Mapping, Sequence

import grain

from streamformer_jax.tasks import registry


@dataclasses.dataclass(frozen=True)
class MixturePlan:
    """How the tasks are mixed. `order`: the task of each micro-batch of one epoch (repeated every epoch);
    `cycle`: the steady-state cycle (f_k micro-batches of each task), whose length an optimizer step spans;
    `samples`: n_k; `copies`: the balancing's replication; `batches`: b_k per epoch (None: batches straddle
    epochs, explicit weights)."""

    order: tuple[str, ...]
    cycle: tuple[str, ...]
    samples: Mapping[str, int]
    copies: Mapping[str, int]
    batches: Mapping[str, int] | None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.order))

    def epoch_micro_batches(self) -> int | None:
        """Micro-batches per epoch (None for explicit weights)."""
        return len(self.order) if self.batches is not None else None

    def describe(self) -> str:
        return ", ".join(f"{t} {self.cycle.count(t)}" for t in self.tasks)


def _ordered(names, order: Sequence[str] | None) -> list[str]:
    order = registry.names() if order is None else tuple(order)
    return [t for t in order if t in names] + sorted(set(names) - set(order))


def original_plan(samples: Mapping[str, int], global_batch: int, order: Sequence[str] | None = None,
                  scale: float = 2.0) -> MixturePlan:
    """The original sampler's epoch over tasks with `samples` = {task: n_k} and global micro-batch G."""
    names = _ordered([t for t, n in samples.items() if n > 0], order)
    if not names:
        raise ValueError("the task mixture is empty")
    sizes = {t: int(samples[t]) for t in names}
    balanced = balanced_sizes(sizes, scale)
    batches = {t: balanced[t] // global_batch for t in names}
    short = [f"{t} ({balanced[t]} samples)" for t in names if batches[t] == 0]
    if short:
        raise ValueError(f"tasks with fewer samples than one global batch of {global_batch} clips: "
                         f"{', '.join(short)}; lower the batch size or leave them out (--config.tasks)")
    smallest = min(batches.values())
    factors = {t: batches[t] // smallest for t in names}
    left, order_out = dict(batches), []
    while any(left.values()):
        for t in names:
            take = min(factors[t], left[t])
            order_out += [t] * take
            left[t] -= take
    cycle = tuple(t for t in names for _ in range(factors[t]))
    return MixturePlan(tuple(order_out), cycle, sizes, {t: balanced[t] // sizes[t] for t in names}, batches)


def weighted_plan(samples: Mapping[str, int], weights: Mapping[str, int],
                  order: Sequence[str] | None = None) -> MixturePlan:
    """A repeated cycle of `weights[t]` consecutive micro-batches per task (no balancing, no epoch cut)."""
    cycle = make_cycle({t: w for t, w in weights.items() if t in samples}, order)
    tasks = set(cycle)
    return MixturePlan(cycle, cycle, {t: int(samples[t]) for t in tasks}, {t: 1 for t in tasks}, None)



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


__all__ = ["MixturePlan", "original_plan", "weighted_plan", "balanced_sizes", "balanced_cycle_counts", "make_cycle",
           "CycleMixMapDataset"]
