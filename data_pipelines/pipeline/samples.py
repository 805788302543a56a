"""Samples as the original counts them, and the original sampler's epochs, as random-access grain datasets.

A record holds one video; a sample is one annotation row of it (a caption row for retrieval, a query for
grounding, a (video, class) row for localization; one per record for the other tasks). `SampleSource` turns
a task's records into its samples: element s is `(record bytes, row)`.

`TaskStream` is the order in which one task's samples are drawn, epoch after epoch, as the original's
`MultiTaskDataset(balance_sample_num=True)` + `DistributedBatchTaskBalancedSampler` draw them: the task's list of
samples (replicated `copies` times by the balancing) is shuffled anew every epoch, and each epoch uses the first
`epoch_elements` of that permutation (a whole number of global batches: the sampler drops the partial one).
Element u of the stream is a pure function of (seed, task, u), so the mixed dataset stays random access and a
resumed run continues exactly.
"""
from __future__ import annotations

import sys
from typing import Sequence

import grain
import numpy as np


class SampleSource:
    """Random access over the samples of a record source: sample s -> (record bytes, row within the record).

    `record_samples[r]` is the number of samples of record r (None: one each). Picklable for grain workers.
    """

    def __init__(self, records, record_samples: Sequence[int] | None = None):
        counts = np.ones(len(records), np.int64) if record_samples is None else np.asarray(record_samples, np.int64)
        if counts.shape != (len(records),) or np.any(counts < 1):
            raise ValueError(f"record_samples must give one count >= 1 per record ({len(records)} records), "
                             f"got {counts.shape[0]} entries")
        self._records = records
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._total = int(counts.sum())

    def __len__(self) -> int:
        return self._total

    def locate(self, index: int) -> tuple[int, int]:
        """(record, row) of sample `index`."""
        if not 0 <= index < self._total:
            raise IndexError(f"sample {index} out of range [0, {self._total})")
        r = int(np.searchsorted(self._starts, index, side="right")) - 1
        return r, int(index - self._starts[r])

    def __getitem__(self, index: int):
        r, row = self.locate(int(index))
        return self._records[r], row


def _seed(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


class TaskStream(grain.MapDataset):
    """Element u = the sample drawn u-th (infinitely many epochs) from `parent` (a MapDataset of samples).

    Epoch e shuffles the `len(parent) * copies` balanced positions with a permutation seeded by (seed, e) and
    uses its first `epoch_elements` (default: all of them, i.e. batches may straddle epochs); position p is
    sample p % len(parent) (the balancing's list repetition).
    """

    def __init__(self, parent: grain.MapDataset, *, seed: int, copies: int = 1, epoch_elements: int | None = None):
        super().__init__(parent)
        n = len(parent)
        if n < 1:
            raise ValueError("a task with no samples cannot be drawn from")
        self._n, self._balanced = n, n * int(copies)
        self._epoch = int(epoch_elements or self._balanced)
        if not 0 < self._epoch <= self._balanced:
            raise ValueError(f"epoch_elements must be in [1, {self._balanced}], got {epoch_elements}")
        self._seed = int(seed)

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f"TaskStream(samples={self._n}, balanced={self._balanced}, per_epoch={self._epoch})"

    def permutation(self, epoch: int) -> np.ndarray:
        """The shuffled balanced positions of `epoch` (the last two are cached: an epoch is read in order)."""
        cache = self.__dict__.setdefault("_perms", {})
        if epoch not in cache:
            if len(cache) >= 2:
                cache.pop(min(cache))
            perm = _seed(self._seed, epoch).permutation(self._balanced)
            cache[epoch] = perm.astype(np.int32) if self._balanced < 2**31 else perm  # half the memory
        return cache[epoch]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_perms", None)  # rebuilt where it is used
        return state

    def sample_index(self, index: int) -> int:
        epoch, pos = divmod(int(index), self._epoch)
        return int(self.permutation(epoch)[pos]) % self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.sample_index(index)]
