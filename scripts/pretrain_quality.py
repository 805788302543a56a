r"""Quality evidence for multitask pretraining: zero-shot retrieval, grounding and localization on held-out
built-in clips, and an online-action-detection head on built-in streams, each against its chance baseline.

    python scripts/pretrain_quality.py --workdir /tmp/sf_pretrain_quality [--steps 300] [--seed 42]

1. Pretrains the tiny model on the built-in dataset (`configs/pretrain_multitask.py:tiny`, 8 frames per clip,
   `--steps` optimizer steps, the zero-shot tasks retrieval + grounding + localization, one micro-batch of each per
   step) with a stand-in text tower (random, frozen) that tells the built-in captions apart: 4 layers x 8 heads
   at 25x SigLIP's init scale (`TEXT_TOWER`). The tiny config's own stand-in (one layer at SigLIP's scale) gives
   every caption nearly the same embedding (cosine >= 0.999): its pooled vector is that of the last position, a
   pad token, whose own embedding dominates. At 25x the attention is sharp and picks a few tokens, and 2 layers x 4
   heads pick too few: "a red square moving left to right" and "a blue square moving left to right" got the same
   embedding and retrieval stayed at chance. The same model before training (the run's seed) is exported too.
2. Writes held-out built-in records (`python -m eval.builtin_heldout`: other sizes, lengths, shades, windows) and runs
   `python -m eval.retrieval|grounding|localization` on them for the trained and the untrained model.
3. Baselines on the same held-out data: retrieval chance R@1 = 1 / (videos); grounding: windows with two
   uniform random end points in [0, duration] (R@0.5 with the original IoU, mean over 1000 draws);
   localization: per video and class three uniform random windows with uniform random scores (mean mAP over 50
   draws).
4. Online action detection: built-in streams (`eval.builtin_oad`), features from the pretrained backbone
   (`eval.oad_extract`), the LSTR head trained with `configs/oad_lstr.py:tiny` (`eval.oad_train`), per-frame
   mAP against random scores.
Writes WORKDIR/summary.json (also printed) and the per-run JSON files beside it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# The stand-in text tower of these runs (config.text.random; see the module docstring and tests/test_tiny_text_tower.py)
TEXT_TOWER = {"num_layers": 4, "num_heads": 8, "init_scale": 25.0}


def load_config(steps: int, num_frames: int, seed: int | None = None, tasks: str = "",
                text_init_scale: float | None = None, text_layers: int | None = None, text_heads: int | None = None):
    """The tiny pretraining config of these runs: `configs/pretrain_multitask.py:tiny` with `TEXT_TOWER` (each of
    its values overridable) and the given steps, frames, seed and tasks."""
    spec = importlib.util.spec_from_file_location("_sf_pretrain", REPO / "configs" / "pretrain_multitask.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.total_steps = steps
    config.model.overrides.num_frames = num_frames
    tower = dict(TEXT_TOWER)
    for key, value in (("init_scale", text_init_scale), ("num_layers", text_layers), ("num_heads", text_heads)):
        if value is not None:
            tower[key] = value
    config.text.random.update(tower)
    config.progress_bar = False
    config.log_every = 20
    config.checkpoint.every_steps = 100
    if seed is not None:
        config.seed = seed
    if tasks:
        config.tasks = tasks
        config.accum_steps = 0  # derived: one cycle of the chosen tasks (one micro-batch each) per optimizer step
    return config


def export_initial(config, workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The model as the run starts (same build, same seed), exported as the trainer exports at the end."""
    from data_pipelines.pipeline.label_tables import label_sets
    from streamformer_jax.checkpoint import save_checkpoint
    from streamformer_jax.param_tree import flat_params
    from streamformer_jax.train import loop
    from streamformer_jax.train.model_kinds import build_task_model
    from streamformer_jax.train.task_model import ModelSettings

    meta = loop.read_metadata(loop.task_directories(loop.data_config(config, workdir)))
    tm = build_task_model(ModelSettings.from_config(config), {t: label_sets(m) for t, m in meta.items()})
    flat = {k: np.asarray(v) for k, v in flat_params(tm.model, None).items()}
    backbone = {k[len("backbone."):]: v for k, v in flat.items() if k.startswith("backbone.")}
    path = save_checkpoint(out, tm.backbone.replace(dtype="float32"), backbone, extra={"source": "untrained"})
    tm.export(flat, path)
    return path


def zero_shot(task: str, checkpoint: pathlib.Path, data: pathlib.Path, out: pathlib.Path) -> dict:
    module = importlib.import_module(f"eval.{task}")
    if module.main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--no-progress"]):
        raise RuntimeError(f"eval.{task} failed")
    return json.loads(out.read_text())


def grounding_random_baseline(data: pathlib.Path, draws: int = 1000, seed: int = 0) -> dict:
    from streamformer_jax.zero_shot import metrics as M
    from streamformer_jax.zero_shot.items import find_items

    rng = np.random.default_rng(seed)
    items, _ = find_items(data, "grounding")
    r5, miou = [], []
    for it in items:
        duration = float(it.load().duration)
        for w in np.asarray(it.fields["windows"]).reshape(-1, 2):
            ends = np.sort(rng.uniform(0, duration, (draws, 2)), axis=1)
            iou = np.array([M.original_iou(w, e) for e in ends])
            r5.append(np.mean(iou >= 0.5))
            miou.append(iou.mean())
    return {"R@1,IoU=0.5": float(np.mean(r5)), "mIoU": float(np.mean(miou))}


def localization_random_baseline(data: pathlib.Path, num_classes: int, draws: int = 50, per_class: int = 3,
                                 seed: int = 0) -> dict:
    from streamformer_jax.zero_shot import metrics as M
    from streamformer_jax.zero_shot.items import find_items

    rng = np.random.default_rng(seed)
    items, _ = find_items(data, "localization")
    durations = {it.index: float(it.load().duration) for it in items}
    gts = [(it.index, int(c), float(s), float(e)) for it in items
           for (s, e), c in zip(np.asarray(it.fields["segments"]).reshape(-1, 2), it.fields["segment_labels"])]
    avg, at5 = [], []
    for _ in range(draws):
        preds = []
        for it in items:
            for c in range(num_classes):
                for _ in range(per_class):
                    s, e = np.sort(rng.uniform(0, durations[it.index], 2))
                    preds.append((it.index, c, float(s), float(e), float(rng.random())))
        res = M.localization_map(preds, gts)
        avg.append(res["average_mAP"])
        at5.append(res["mAP@0.5"])
    return {"average_mAP": float(np.mean(avg)), "mAP@0.5": float(np.mean(at5))}


def oad(export: pathlib.Path, workdir: pathlib.Path) -> dict:
    from eval import oad_extract, oad_train
    from eval.builtin_oad import write_builtin_oad
    from streamformer_jax.api import FeatureExtractor

    folder = write_builtin_oad(workdir)
    videos = sorted(str(p) for p in (workdir / "videos").glob("*.mp4"))
    fx = FeatureExtractor.from_checkpoint(export)
    oad_extract.extract_all(fx, videos, workdir / "features", progress=False)
    argv = ["--features", str(workdir / "features"), "--annotations", str(folder), "--config",
            str(REPO / "configs" / "oad_lstr.py") + ":tiny", "--workdir", str(workdir / "run"),
            "--config.progress_bar=False"]
    if oad_train.main(argv):
        raise RuntimeError("eval.oad_train failed")
    return json.loads((workdir / "run" / "results.json").read_text())


def run(workdir, *, steps: int = 300, num_frames: int = 8, seed: int | None = None,
        tasks: str = "retrieval,grounding,localization", text_init_scale: float | None = None,
        text_layers: int | None = None, text_heads: int | None = None) -> dict:
    from data_pipelines.pipeline.builtin import build_heldout_records
    from streamformer_jax.train import loop

    workdir = pathlib.Path(workdir).absolute()
    config = load_config(steps, num_frames, seed, tasks, text_init_scale, text_layers, text_heads)
    config.builtin_dir = str(workdir / "builtin_data")
    untrained = export_initial(config, workdir / "run", workdir / "untrained")
    summary = loop.train(config, workdir / "run", log=lambda s: None)
    trained = workdir / "run" / "export"
    heldout = build_heldout_records(workdir / "heldout", ["retrieval", "grounding", "localization"])
    data = heldout["retrieval"].parent
    r = config.text.random
    out: dict = {"config": "configs/pretrain_multitask.py:tiny", "seed": int(config.seed),
                 "steps": int(summary["step"]), "num_frames": num_frames, "tasks": tasks or "all six",
                 "text_tower": {"num_layers": int(r.num_layers), "num_heads": int(r.num_heads),
                                "init_scale": float(r.init_scale)}}
    for name, ckpt in (("untrained", untrained), ("trained", trained)):
        r = zero_shot("retrieval", ckpt, data, workdir / f"{name}_retrieval.json")["datasets"]["builtin"]
        g = zero_shot("grounding", ckpt, data, workdir / f"{name}_grounding.json")["datasets"]["builtin"]
        loc = zero_shot("localization", ckpt, data, workdir / f"{name}_localization.json")["datasets"]["builtin"]
        out[name] = {"retrieval_t2v_R@1": r["t2v"]["R@1"], "retrieval_v2t_R@1": r["v2t"]["R@1"],
                     **{f"grounding_R@0.5_factor_{f}": g[f"factor_{f}"]["R@1,IoU=0.5"] for f in (0.5, 0.6, 0.7)},
                     **{f"grounding_mIoU_factor_{f}": g[f"factor_{f}"]["mIoU"] for f in (0.5, 0.6, 0.7)},
                     "localization_average_mAP": loc["average_mAP"], "localization_mAP@0.5": loc["mAP@0.5"]}
        out["heldout"] = {"retrieval_videos": r["num_videos"], "grounding_queries": g["num_queries"],
                          "localization_videos": loc["num_videos"]}
    out["baseline"] = {"retrieval_R@1": 1.0 / out["heldout"]["retrieval_videos"],
                       **{f"grounding_{k}": v for k, v in grounding_random_baseline(heldout["grounding"]).items()},
                       **{f"localization_{k}": v for k, v in
                          localization_random_baseline(heldout["localization"], 4).items()}}
    res = oad(trained, workdir / "oad")
    out["oad"] = {"mAP": res["mean_AP"], "chance_mAP": res["chance_mean_AP"], "test_frames": res["num_frames"],
                  "per_class_AP": res["per_class_AP"]}
    t, b = out["trained"], out["baseline"]
    out["margins"] = {
        "retrieval_t2v_R@1": t["retrieval_t2v_R@1"] - b["retrieval_R@1"],
        **{f"grounding_R@0.5_factor_{f}": t[f"grounding_R@0.5_factor_{f}"] - b["grounding_R@1,IoU=0.5"]
           for f in (0.5, 0.6, 0.7)},
        "localization_average_mAP": t["localization_average_mAP"] - b["localization_average_mAP"],
        "oad_mAP": out["oad"]["mAP"] - out["oad"]["chance_mAP"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=300, help="pretraining optimizer steps (default 300)")
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (default: the config's, 42)")
    p.add_argument("--tasks", default="retrieval,grounding,localization",
                   help="pretraining tasks, comma-separated (default: the three zero-shot tasks; '' = all six)")
    p.add_argument("--text-init-scale", type=float, default=None,
                   help="init scale of the stand-in text tower (default 25; 1 = SigLIP's std 0.02)")
    p.add_argument("--text-layers", type=int, default=None,
                   help="layers of the stand-in text tower (default 4)")
    p.add_argument("--text-heads", type=int, default=None,
                   help="attention heads of the stand-in text tower (default 8)")
    args = p.parse_args(argv)
    summary = json.dumps(run(args.workdir, steps=args.steps, num_frames=args.num_frames, seed=args.seed,
                             tasks=args.tasks, text_init_scale=args.text_init_scale, text_layers=args.text_layers,
                             text_heads=args.text_heads),
                         indent=2)
    (pathlib.Path(args.workdir) / "summary.json").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
