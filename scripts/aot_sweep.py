r"""Sweep of ahead-of-time TPU compiles (`streamformer_jax.train.aot`): one JSON report per run, resumable.

    python scripts/aot_sweep.py --plan sizing --out_dir aot_reports      # ViT-B recipe on 4-chip slices + pods
    python scripts/aot_sweep.py --plan layers --out_dir aot_reports      # compile time vs depth, dp vs fsdp
    python scripts/aot_sweep.py --plan sizing --only v5e4_dp_b16_full    # one run of a plan
    python scripts/aot_sweep.py --summary aot_reports                    # the table of docs/training.md
    python scripts/aot_sweep.py --plan remat --out_dir aot_reports       # remat policies at 1 and 2 blocks
    python scripts/aot_sweep.py --remat_table aot_reports                # ... extrapolated to 12 blocks

Runs one compile at a time in this process (a ViT-B step takes minutes and 1.5-4 GB of RAM on two cores) and
skips runs whose report exists, so a stopped sweep continues where it was. Each run records what it compiled;
the summary marks which pod figures were compiled at full size and which were carried over from a 4-chip slice
(per-chip memory and FLOPs of data parallelism do not depend on the number of chips; the gradient all-reduce's
wire bytes per chip are 2 (n-1)/n x the gradient bytes, scaled from the compiled n).
"""
from __future__ import annotations

import json
import pathlib
import re
import sys
import time
import traceback

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS
flags.DEFINE_string("plan", "sizing", "Which plan: sizing | layers | depth | remat | stream | stream_v5e.")
flags.DEFINE_string("out_dir", "aot_reports", "Directory of the JSON reports.")
flags.DEFINE_string("only", "", "Comma-separated run names of the plan to run (default: all).")
flags.DEFINE_string("summary", "", "Print the markdown table of the reports in this directory and exit.")
flags.DEFINE_bool("list", False, "List the plan's runs and exit.")
flags.DEFINE_string("remat_table", "", "Print the remat comparison at full depth from the reports in this directory "
                                       "(plans remat and sizing) and exit.")

CONFIG = "configs/pretrain_multitask.py"
# Per-chip clips of a 4-chip slice -> micro_batch_size 4 x that.
SLICES = {"v5e4": "v5e:2x2", "v5p4": "v5p:2x2x1", "v44": "v4:2x2x1",
          "v5e256": "v5e:16x16", "v5p64": "v5p:4x4x4", "v464": "v4:4x4x4"}
REMAT = {"none": "none", "full": "full", "dots": "dots_with_no_batch_dims_saveable",
         "names": "names:temporal_qkv,temporal_attended,spatial_qkv,spatial_attended,spatial_residual"}


def _run(slice_key, preset, per_chip, remat, tasks, **overrides):
    topo = SLICES[slice_key]
    chips = 1
    for g in topo.split(":")[1].split("x"):
        chips *= int(g)
    name = f"{slice_key}_{preset}_b{per_chip}_{remat}" + "".join(f"_{k.split('.')[-1]}{v}" for k, v in overrides.items())
    return name, {"topology": topo, "preset": preset, "tasks": tasks, "overrides": {
        "micro_batch_size": per_chip * chips, "model.remat_policy": REMAT[remat], **overrides}}


def plan(name: str) -> dict[str, dict]:
    runs = {}
    if name == "layers":  # compile time against depth, dp vs fsdp (kinetics micro-step, 16 clips per chip)
        for layers in (1, 2, 4):
            for preset in ("dp", "fsdp"):
                runs.update([_run("v5e4", preset, 16, "full", ["kinetics"], **{"model.overrides.num_layers": layers})])
    elif name == "depth":  # the same at small clips (8 frames of 64²): program structure, not tensor sizes
        small = {"model.overrides.num_frames": 8, "model.overrides.image_size": 64}
        for layers in (1, 12):
            for preset in ("dp", "fsdp"):
                runs.update([_run("v5e4", preset, 4, "none", ["kinetics"],
                                  **small, **{"model.overrides.num_layers": layers})])
        for preset in ("dp", "fsdp", "fsdp_tp"):
            runs.update([_run("v5e4", preset, 4, "none", ["kinetics"], **small, **{"model.scan_layers": True})])
        for spec in runs.values():
            spec["apply"] = False  # the micro-step only: the update's compile does not depend on depth
    elif name == "sizing":  # in priority order: this machine compiles a ViT-B step in tens of minutes
        scan = {"model.scan_layers": True}
        k = ["kinetics"]
        order = [("v5e4", "dp", 16, "none", k, True), ("v5e4", "dp", 16, "full", k, False),
                 ("v5p4", "dp", 16, "none", k, True), ("v44", "dp", 16, "none", k, True),
                 ("v5e256", "dp", 16, "full", k, False), ("v5e4", "dp", 16, "dots", k, False),
                 ("v5e4", "dp", 8, "none", k, False), ("v5e4", "dp", 16, "full", ["vis", "retrieval"], False),
                 ("v5p64", "dp", 16, "none", k, False), ("v464", "dp", 16, "none", k, False),
                 ("v5p4", "dp", 32, "none", k, False), ("v5e4", "fsdp", 16, "full", k, False)]
        for slice_key, preset, per_chip, remat, tasks, apply in order:
            name, spec = _run(slice_key, preset, per_chip, remat, tasks, **scan)
            if tasks != k:
                name += "_" + "_".join(tasks)
            spec["apply"] = apply
            runs[name] = spec
    elif name == "remat":  # the remat policies at 1 and 2 unrolled blocks (memory and FLOPs per block, exact)
        for remat in ("none", "full", "names"):
            for layers in (1, 2):
                runs.update([_run("v5e4", "dp", 16, remat, ["kinetics"], **{"model.overrides.num_layers": layers})])
        # VIS (loss at the input resolution since issue #10) beside kinetics: its head and loss at the same depth
        # the by-name policy at full depth on v4 (the slice it is chosen for): exact memory of the real program
        runs.update([_run("v44", "dp", 16, "names", ["kinetics"], **{"model.scan_layers": True})])
        vis_name, vis_spec = _run("v5e4", "dp", 16, "full", ["vis"], **{"model.overrides.num_layers": 1})
        runs[vis_name + "_vis"] = vis_spec
        for spec in runs.values():
            spec["apply"] = False
    elif name == "stream":
        runs = {f"stream_{s}": {"topology": SLICES[s], "stream": True} for s in ("v5e4", "v5p4", "v44")}
    elif name == "stream_v5e":
        runs = {"stream_v5e4": {"topology": SLICES["v5e4"], "stream": True}}
    else:
        raise SystemExit(f"error: unknown plan {name!r}; choose from sizing, layers, depth, remat, stream, stream_v5e")
    return runs


def load_config(overrides: dict, preset: str):
    from streamformer_jax.train import aot
    from streamformer_jax.train.config_files import load_config as load_config_file, set_overrides

    config = load_config_file(CONFIG)
    aot.apply_preset(config, preset)
    with config.unlocked():
        set_overrides(config, overrides)
    return config


def run_one(name: str, spec: dict, out_dir: pathlib.Path) -> None:
    from streamformer_jax.train import aot

    out = out_dir / f"{name}.json"
    if out.exists():
        print(f"[skip] {name}: {out} exists", flush=True)
        return
    print(f"[run] {name}: {spec}", flush=True)
    t0 = time.perf_counter()
    try:
        if spec.get("stream"):
            config = load_config({}, "dp")
            report = {"topology": spec["topology"], "window": 16,
                      **aot.search_streams(config, spec["topology"], window=16, start=32,
                                           log=lambda s: print(s, flush=True))}
        else:
            config = load_config(spec["overrides"], spec["preset"])
            report = aot.compile_training(config, spec["topology"], tasks=spec["tasks"],
                                          include_apply=spec.get("apply", True), log=lambda s: print(s, flush=True))
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the sweep; its error is the report
        report = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    report.update(run=name, spec=spec, wall_s=round(time.perf_counter() - t0, 1))
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    tmp.replace(out)
    print(f"[done] {name} in {report['wall_s']:.0f} s", flush=True)


def summary(out_dir: pathlib.Path) -> str:
    rows = ["| run | slice | preset | remat | clips/chip | HBM used / capacity (GiB) | fits | flops / analytic | "
            "wire MiB/chip/micro-step | est. step s | est. MFU | bound | compile s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted(out_dir.glob("*.json")):
        r = json.loads(path.read_text())
        if "steps" not in r:
            continue
        c = r["config"]
        micro = [s for k, s in r["steps"].items() if k.startswith("micro_")]
        worst = max(micro, key=lambda s: s.get("hbm_bytes", 0))
        used = max((s.get("hbm_bytes", 0) for s in r["steps"].values()), default=0)
        cap = worst.get("hbm_capacity") or r["chip"]["hbm_bytes"]
        fits = all(s.get("fits") for s in r["steps"].values())
        k = r["steps"].get("micro_kinetics", micro[0])
        ratio = f"{k['flops_ratio']:.2f}" if k.get("flops_ratio") else "-"
        wire = sum(v["wire_bytes"] for v in k.get("collectives", {}).values()) / 2**20 if "collectives" in k else 0
        est = r["estimate"]
        step = f"{est['step_s']:.2f}" if est.get("step_s") else "-"
        mfu = f"{est['mfu']:.2f}" if est.get("mfu") else "-"
        comp = sum(s["compile_s"] for s in r["steps"].values())
        rows.append(f"| {r.get('run', path.stem)} | {r['topology']} | {c['rules']} | {c['remat_policy']} | "
                    f"{c['clips_per_device']:g} | {used / 2**30:.1f} / {cap / 2**30:.1f} | {'yes' if fits else 'no'} | "
                    f"{ratio} | {wire:.0f} | {step} | {mfu} | {est.get('bound') or '-'} | {comp:.0f} |")
    return "\n".join(rows)


def _micro(path: pathlib.Path, task: str = "kinetics") -> dict:
    return json.loads(path.read_text())["steps"][f"micro_{task}"]


def remat_table(out_dir: pathlib.Path, layers: int = 12, accum: int = 7) -> str:
    """The remat policies at full depth, from the plan `remat` (1- and 2-block compiles, XLA counting every op)
    and the scanned full-depth compiles of the plan `sizing` (exact memory), extrapolated and labelled so.

    FLOPs and bytes accessed: remat wraps the blocks only, so the non-block work (embedding, head, loss) is the
    same under every policy: non-block = 2 F(1 block) - F(2 blocks) of the `names` policy; per block under a
    policy P = F_P(1 block) - non-block; at full depth F_P = non-block + layers x per block. Memory: the scanned
    full-depth compile where there is one (exact), else M(1) + (layers - 1) x (M(2) - M(1)) (extrapolated).
    Step: accum x max(FLOPs / peak, bytes / HBM bandwidth) + the update (the v5p compile's bytes accessed; dp's
    update reads and writes the same per-chip state on every slice); MFU = analytic FLOPs / (step x peak)."""
    from streamformer_jax.train.tpu_chips import CHIPS

    one = {p: _micro(out_dir / f"v5e4_dp_b16_{p}_num_layers1.json") for p in ("none", "full", "names")}
    two = _micro(out_dir / "v5e4_dp_b16_names_num_layers2.json")
    nb_flops = 2 * one["names"]["flops"] - two["flops"]
    nb_bytes = 2 * one["names"]["bytes_accessed"] - two["bytes_accessed"]
    analytic_block = two["analytic_flops"] - one["names"]["analytic_flops"]
    analytic = one["names"]["analytic_flops"] + (layers - 1) * analytic_block
    apply_bytes = json.loads((out_dir / "v5p4_dp_b16_none_scan_layersTrue.json").read_text())["steps"]["apply"][
        "bytes_accessed"]
    memory = {}
    for p in ("none", "full", "names"):
        scanned = out_dir / f"v5e4_dp_b16_{p}_scan_layersTrue.json"
        if scanned.exists():
            s = _micro(scanned)
            need = re.search(r"temporaries \(([\d.]+G)\)", s.get("error", ""))
            memory[p] = (s.get("hbm_bytes"), "compiled" if "hbm_bytes" in s else
                         f"does not fit: the compiler needs {need.group(1) if need else '?'} of temporaries")
        elif p == "names":
            memory[p] = (one[p]["hbm_bytes"] + (layers - 1) * (two["hbm_bytes"] - one[p]["hbm_bytes"]),
                         "extrapolated")
    rows = [f"Per chip, {layers} blocks, 16 clips per chip, kinetics micro-step (compiled for v5e:2x2; "
            "FLOPs and bytes extrapolated from 1 and 2 blocks):", "",
            "| remat | HBM (GiB) | how | FLOPs / micro-step | / analytic | HBM traffic / micro-step | "
            + " | ".join(f"{c} step s (MFU)" for c in ("v5e", "v5p", "v4")) + " |",
            "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in range(3)) + " |"]
    for p in ("none", "full", "names"):
        flops = nb_flops + layers * (one[p]["flops"] - nb_flops)
        traffic = nb_bytes + layers * (one[p]["bytes_accessed"] - nb_bytes)
        cells = []
        for c in ("v5e", "v5p", "v4"):
            chip = CHIPS[c]
            micro = max(flops / chip.peak_bf16_flops, traffic / chip.hbm_bytes_per_s)
            step = accum * micro + apply_bytes / chip.hbm_bytes_per_s
            cells.append(f"{step:.2f} ({accum * analytic / (step * chip.peak_bf16_flops):.2f})")
        mem, how = memory.get(p, (None, "-"))
        rows.append(f"| {p} | {mem / 2**30:.1f} | {how} | " if mem else f"| {p} | - | {how} | ")
        rows[-1] += (f"{flops / 1e12:.1f} TFLOP | {flops / analytic:.2f} | {traffic / 1e9:.0f} GB | "
                     + " | ".join(cells) + " |")
    rows.append("")
    rows.append(f"non-block: {nb_flops / 1e12:.2f} TFLOP, {nb_bytes / 1e9:.1f} GB; analytic {analytic / 1e12:.1f} "
                f"TFLOP per chip per micro-step; update {apply_bytes / 1e9:.1f} GB accessed")
    return "\n".join(rows)


def main(argv):
    del argv
    if FLAGS.summary:
        print(summary(pathlib.Path(FLAGS.summary)))
        return
    if FLAGS.remat_table:
        print(remat_table(pathlib.Path(FLAGS.remat_table)))
        return
    runs = plan(FLAGS.plan)
    if FLAGS.only:
        wanted = [r for r in FLAGS.only.split(",") if r]
        unknown = sorted(set(wanted) - set(runs))
        if unknown:
            raise SystemExit(f"error: runs {unknown} are not in plan {FLAGS.plan!r}: {sorted(runs)}")
        runs = {k: runs[k] for k in wanted}
    if FLAGS.list:
        for k, v in runs.items():
            print(k, json.dumps(v))
        return
    out_dir = pathlib.Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, spec in runs.items():
        run_one(name, spec, out_dir)


if __name__ == "__main__":
    app.run(main)
