"""Zero-shot evaluation during pretraining: every `config.eval_every` optimizer steps, on held-out records.

`train()` (`streamformer_jax.train.loop`) builds the run's evaluator with `make_evaluator(setup)` and calls it
after every `evaluator.every`-th step (and the last); its flat metrics (`eval/<task>/<dataset>/<metric>`) go to
`metrics.jsonl` and TensorBoard with the training metrics. It evaluates the model of the current train state
as `python -m eval.retrieval|grounding|localization` evaluates an export (same protocol, same metrics,
`streamformer_jax.zero_shot`), on:

* `config.eval.data_dir`: converted held-out records, a root holding `retrieval/`, `grounding/`,
  `localization/` (e.g. the test splits converted with `python -m data_pipelines.convert`);
* or, when training on the built-in dataset and `eval.data_dir` is empty, held-out built-in clips
  (`data_pipelines.pipeline.builtin.build_heldout_records`, written once beside the built-in dataset).

Config (`configs/common.py`): `eval_every` (0 = off), `eval.tasks` (comma-separated subset of the zero-shot
tasks), `eval.data_dir`, `eval.num_frames` (0 = the model's), `eval.batch_size` (0 = 2 per device),
`eval.max_items` (0 = all records).
"""
from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines.pipeline.builtin import build_heldout_records
from data_pipelines.pipeline.label_tables import label_sets
from streamformer_jax.param_tree import ModuleTemplate, flatten
from streamformer_jax.train import distributed
from streamformer_jax.train.task_model import TaskModel
from streamformer_jax.zero_shot.evaluate import ClassTables, ZeroShotModel, evaluate, flat_summary, tasks as zero_shot_tasks
from streamformer_jax.zero_shot.features import FeatureRunner
from streamformer_jax.zero_shot.items import find_items

HELDOUT_DIR = "heldout"  # beside the built-in dataset: heldout/records/<task>, heldout/videos


def _host_values(tree) -> dict[str, np.ndarray]:
    """Flat {name: numpy array} of a (possibly sharded, multi-host) parameter tree, on every process."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return {k: np.asarray(v) for k, v in flatten(jax.device_get(tree)).items()}


class PeriodicEvaluator:
    """`evaluator(step, state) -> {"eval/<task>/<dataset>/<metric>": value}` for the trainer's step loop; a
    collective call (every process calls it and gets the same row)."""

    def __init__(self, tm: TaskModel, mesh: jax.sharding.Mesh, data_dir: str | pathlib.Path, tasks, *, every: int,
                 num_frames: int = 0, batch_size: int = 0, max_items: int = 0,
                 class_names: Mapping[str, ClassTables] | None = None):
        self.tm, self.mesh, self.every = tm, mesh, int(every)
        self.template = ModuleTemplate(tm.model)
        self.tasks = [t for t in tasks if t in tm.model.tasks]
        self.items, self.class_names = {}, {}
        for task in self.tasks:
            items, info = find_items(data_dir, task, fmt="records")
            self.items[task] = items[:max_items] if max_items else items
            self.class_names[task] = label_sets(info["metadata"]) or (class_names or {}).get(task) or []
        self.num_frames = num_frames or None
        self.batch_size = batch_size or None
        self.runner: FeatureRunner | None = None

    def __call__(self, step: int, state: dict) -> dict[str, float]:
        model = self.template.merge({**_host_values(state["params"]), **_host_values(state["frozen"])})
        zs = ZeroShotModel(model=model, tokenizer=self.tm.tokenizer, label_sets=dict(self.class_names),
                           source=f"train step {step}")
        if self.runner is None:
            self.runner = FeatureRunner(model.backbone, mesh=self.mesh)
        else:
            self.runner.update(model.backbone)
        row: dict[str, float] = {}
        for task in self.tasks:
            result = evaluate(task, zs, self.items[task], num_frames=self.num_frames, batch_size=self.batch_size,
                              progress=False, class_names=self.class_names.get(task, ()), runner=self.runner)
            row.update({f"eval/{k}": float(v) for k, v in flat_summary(task, result).items()})
            row[f"eval/{task}/num_failed"] = float(result["num_failed"])
        return row


def make_evaluator(setup) -> PeriodicEvaluator | None:
    """The run's periodic evaluator (`setup`: the trainer's `loop.Setup`), or None when `config.eval_every` is 0
    or the model has none of the zero-shot tasks."""
    config = setup.config
    every = int(config.get("eval_every", 0) or 0)
    if every <= 0:
        return None
    ev = config.get("eval") or {}
    known = zero_shot_tasks()
    tasks = [t.strip() for t in str(ev.get("tasks", ",".join(known))).split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        raise ValueError(f"--config.eval.tasks: unknown tasks {unknown}; choose from {known}")
    tasks = [t for t in tasks if t in setup.tm.model.tasks]
    if not tasks:
        return None
    data_dir = ev.get("data_dir", "")
    if not data_dir:
        builtin_dir = setup.data.get("builtin_dir", "")
        if not builtin_dir:
            raise ValueError("--config.eval_every needs --config.eval.data_dir (held-out records with "
                             f"{', '.join(tasks)}/ sub-directories) when training on converted data")
        data_dir = pathlib.Path(builtin_dir) / HELDOUT_DIR / "records"
        _ensure_builtin_heldout(data_dir, tasks)
    class_names = {t: label_sets(m) for t, m in setup.meta.items()}
    setup.note(f"zero-shot evaluation of {', '.join(tasks)} every {every} steps on {data_dir}")
    return PeriodicEvaluator(setup.tm, setup.mesh, data_dir, tasks, every=every,
                             num_frames=int(ev.get("num_frames", 0) or 0), batch_size=int(ev.get("batch_size", 0) or 0),
                             max_items=int(ev.get("max_items", 0) or 0), class_names=class_names)


def _ensure_builtin_heldout(records: pathlib.Path, tasks) -> None:
    """Write the held-out built-in records once (process 0), then every process reads them."""
    missing = [t for t in tasks if not (records / t / "metadata.json").is_file()]
    if missing and jax.process_index() == 0:
        build_heldout_records(records.parent, missing)
    distributed.sync("builtin_heldout")
