r"""Quality evidence for action-recognition finetuning, on a CPU in about a minute.

Finetunes the tiny model with `configs/finetune_k400.py:tiny` on the built-in dataset (Kinetics task: 8 clips,
label = colour, 4 classes), then evaluates the finetuned model and the same model before training (identical
initialisation: the run's seed) on a held-out set of other clips (`eval.builtin_heldout`) with the original
K400 test protocol (4 temporal x 3 spatial views, softmax averaged per video) through
`python -m eval.action_recognition evaluate`. Chance is 1/4.

    python scripts/finetune_quality.py --workdir /tmp/sf_quality [--steps 40] [--per-class 4] [--seed 42]

Writes WORKDIR/run (the training run, its export), WORKDIR/untrained (the initial model exported the same way),
WORKDIR/heldout (videos + heldout.csv), WORKDIR/{untrained,finetuned}.json (per-video results) and
WORKDIR/summary.json (also printed).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout: `python scripts/...`
from eval import action_recognition  # noqa: E402
from eval.builtin_heldout import write_heldout_set  # noqa: E402
from streamformer_jax.checkpoint import save_checkpoint  # noqa: E402
from streamformer_jax.param_tree import flat_params  # noqa: E402
from streamformer_jax.train import loop  # noqa: E402
from streamformer_jax.train.config_files import load_config  # noqa: E402
from streamformer_jax.train.model_kinds import build_task_model  # noqa: E402
from streamformer_jax.train.task_model import ModelSettings  # noqa: E402


def export_initial(config, workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The model as the run starts (same build, same seed), exported as the trainer exports at the end."""
    meta = loop.read_metadata(loop.task_directories(loop.data_config(config, workdir)))
    tm = build_task_model(ModelSettings.from_config(config), {t: list(m.get("class_names", [])) for t, m in meta.items()})
    flat = {k: np.asarray(v) for k, v in flat_params(tm.model, None).items()}
    backbone = {k[len("backbone."):]: v for k, v in flat.items() if k.startswith("backbone.")}
    path = save_checkpoint(out, tm.backbone.replace(dtype="float32"), backbone, extra={"source": "untrained"})
    tm.export(flat, path)
    return path


def evaluate(export: pathlib.Path, val_list: pathlib.Path, out: pathlib.Path) -> dict:
    info = json.loads((export / "classifier.json").read_text())
    argv = ["evaluate", "--checkpoint", str(export), "--dataset", "k400", "--val-list", str(val_list),
            "--root", str(val_list.parent), "--head", str(export / info["head"]), "--out", str(out), "--no-progress"]
    if info["pooling"] == "official_bug":
        argv.append("--official-pooling-bug")
    elif info["pooling"] == "last":
        argv += ["--pooling", "last"]
    action_recognition.main(argv)
    return json.loads(out.read_text())


def run(workdir, *, steps: int = 0, per_class: int = 4, overrides: dict | None = None) -> dict:
    """Train, evaluate before/after on the held-out set; returns the summary. `overrides`: dotted config keys."""
    workdir = pathlib.Path(workdir).absolute()
    config = load_config("finetune_k400", "tiny")
    config.progress_bar = False
    config.builtin_dir = str(workdir / "builtin_data")
    if steps:
        config.total_steps = steps
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    val_list = write_heldout_set(workdir / "heldout", per_class=per_class)
    untrained = export_initial(config, workdir / "run", workdir / "untrained")
    summary = loop.train(config, workdir / "run", log=lambda s: None)
    before = evaluate(untrained, val_list, workdir / "untrained.json")
    after = evaluate(workdir / "run" / "export", val_list, workdir / "finetuned.json")
    return {"config": "configs/finetune_k400.py:tiny", "seed": int(config.seed), "steps": int(summary["step"]),
            "train_clips": 8, "heldout_videos": after["num_videos"], "views_per_video": 12,
            "chance_top1": 0.25, "untrained_top1": before["top1"], "finetuned_top1": after["top1"],
            "final_train_loss": summary["losses"][-1] if summary["losses"] else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (default: the tiny config's)")
    p.add_argument("--per-class", type=int, default=4, help="held-out clips per class")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (default: the config's, 42)")
    args = p.parse_args(argv)
    overrides = {} if args.seed is None else {"seed": args.seed}
    summary = json.dumps(run(args.workdir, steps=args.steps, per_class=args.per_class, overrides=overrides),
                         indent=2)
    (pathlib.Path(args.workdir) / "summary.json").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
