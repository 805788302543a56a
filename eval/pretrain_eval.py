"""Zero-shot evaluation during pretraining: every `config.eval_every` steps, on held-out records.

The trainer (`streamformer_jax.train.loop`) calls `make_evaluator(config, setup)` once and the evaluator after
every `config.eval_every`-th optimizer step (and the last); its flat metrics (`eval/<task>/<dataset>/<metric>`)
go to `metrics.jsonl` and TensorBoard with the training metrics. It evaluates the model of the current train
state, as `python -m eval.retrieval|grounding|localization` evaluates an export (same protocol, same metrics,
`eval.zero_shot`), on:

* `config.eval.data_dir`: converted held-out records, a root holding `retrieval/`, `grounding/`,
  `localization/` (e.g. the test splits converted with `python -m data_pipelines.convert`);
* or, when training on the built-in dataset and `eval.data_dir` is empty, held-out built-in clips
  (`eval.builtin_heldout.write_heldout_records`, written once beside the built-in dataset).

Config (`configs/common.py`): `eval_every` (0 = off), `eval.tasks` (comma-separated subset of retrieval,
grounding, localization), `eval.data_dir`, `eval.num_frames` (0 = the model's), `eval.batch_size` (0 = 2 per
device), `eval.max_items` (0 = all records).
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable

import numpy as np

from eval import zero_shot as Z
from eval.pretrained import ZERO_SHOT_TASKS, PretrainedModel


def _host_values(tree) -> dict:
    """Flat {name: numpy array} of a (possibly sharded, multi-host) parameter tree."""
    import jax

    from streamformer_jax.checkpoint import flatten

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return {k: np.asarray(v) for k, v in flatten(jax.device_get(tree)).items()}


class PeriodicEvaluator:
    def __init__(self, tm, mesh, data_dir: str | pathlib.Path, tasks, *, num_frames: int = 0, batch_size: int = 0,
                 max_items: int = 0, class_names: dict | None = None):
        from streamformer_jax.train.model import ModelDef

        self.tm, self.mesh = tm, mesh
        self.modeldef = ModelDef(tm.model)
        self.tasks = [t for t in tasks if t in tm.model.tasks]
        self.items, self.class_names = {}, {}
        for task in self.tasks:
            items, info = Z.find_items(data_dir, task, fmt="records")
            self.items[task] = items[:max_items] if max_items else items
            names = info["metadata"].get("class_names") or (class_names or {}).get(task) or []
            self.class_names[task] = list(names)
        self.num_frames = num_frames or None
        self.batch_size = batch_size or None
        self.runner: Z.FeatureRunner | None = None

    def __call__(self, step: int, state: dict) -> dict[str, float]:
        flat = {**_host_values(state["params"]), **_host_values(state["frozen"])}
        model = self.modeldef.merge(flat)
        pm = PretrainedModel(model=model, tokenizer=self.tm.tokenizer, label_sets=dict(self.class_names),
                             source=f"train step {step}")
        if self.runner is None:
            self.runner = Z.FeatureRunner(pm, mesh=self.mesh)
        else:
            self.runner.update(pm)
        row: dict[str, float] = {}
        for task in self.tasks:
            result = Z.evaluate(task, pm, self.items[task], num_frames=self.num_frames, batch_size=self.batch_size,
                                progress=False, class_names=self.class_names.get(task, ()), runner=self.runner)
            row.update({f"eval/{k}": float(v) for k, v in Z.flat_summary(task, result).items()})
            row[f"eval/{task}/num_failed"] = float(result["num_failed"])
        return row


def make_evaluator(config, setup, log: Callable[[str], None] = print) -> PeriodicEvaluator | None:
    """The run's periodic evaluator, or None when `config.eval_every` is 0 or the model has no zero-shot task."""
    every = int(config.get("eval_every", 0) or 0)
    if every <= 0:
        return None
    ev = config.get("eval") or {}
    tasks = [t.strip() for t in str(ev.get("tasks", ",".join(ZERO_SHOT_TASKS))).split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(ZERO_SHOT_TASKS))
    if unknown:
        raise ValueError(f"--config.eval.tasks: unknown tasks {unknown}; choose from {list(ZERO_SHOT_TASKS)}")
    tasks = [t for t in tasks if t in setup.tm.model.tasks]
    if not tasks:
        return None
    data_dir = ev.get("data_dir", "")
    if not data_dir:
        builtin = setup.data.get("builtin_dir", "")
        if not builtin:
            raise ValueError("--config.eval_every needs --config.eval.data_dir (held-out records with "
                             f"{', '.join(tasks)}/ sub-directories) when training on converted data")
        data_dir = pathlib.Path(builtin) / "heldout" / "records"
        _ensure_builtin_heldout(data_dir, tasks)
    class_names = {t: list(m.get("class_names", [])) for t, m in setup.meta.items()}
    log(f"zero-shot evaluation of {', '.join(tasks)} every {every} steps on {data_dir}")
    return PeriodicEvaluator(setup.tm, setup.mesh, data_dir, tasks, num_frames=int(ev.get("num_frames", 0) or 0),
                             batch_size=int(ev.get("batch_size", 0) or 0), max_items=int(ev.get("max_items", 0) or 0),
                             class_names=class_names)


def _ensure_builtin_heldout(records: pathlib.Path, tasks) -> None:
    """Write the held-out built-in records once (process 0), then every process reads them."""
    import jax

    from eval.builtin_heldout import write_heldout_records
    from streamformer_jax.train import distributed

    missing = [t for t in tasks if not (records / t / "metadata.json").is_file()]
    if missing and jax.process_index() == 0:
        write_heldout_records(records.parent, missing)
    distributed.sync("builtin_heldout")
