"""Run logs on process 0: `WORKDIR/metrics.jsonl` (one JSON object per logged step), TensorBoard event files
(tensorboardX, `WORKDIR/tensorboard/`) and a progress bar with ETA."""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm


class MetricWriter:
    def __init__(self, workdir: str | pathlib.Path, *, total_steps: int, start_step: int = 0,
                 progress_bar: bool = True, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = self._bar = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
        if progress_bar:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             smoothing=0.1)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row, sort_keys=False) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def note(self, text: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        self._file.close()


def _plain(v):
    """JSON-able scalars: bools stay bools, integers ints, other numbers floats."""
    if isinstance(v, (bool, np.bool_)) or getattr(v, "dtype", None) == np.bool_:
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


class StepTimer:
    """Wall time per optimizer step between log points, excluding the first (compiling) step."""

    def __init__(self):
        self._t = None
        self._steps = 0

    def start(self):
        self._t, self._steps = time.perf_counter(), 0

    def tick(self):
        self._steps += 1

    def read(self) -> float | None:
        """Seconds per step since the last `start` (and restart), or None before any measured step."""
        if self._t is None or self._steps == 0:
            return None
        dt = (time.perf_counter() - self._t) / self._steps
        self.start()
        return dt
