r"""Train and evaluate the LSTR online-action-detection head on extracted features (spec §7.2), in JAX.

    python -m eval.oad_train --features FEATURES --annotations data/THUMOS --config configs/oad_lstr.py \
        --workdir W [--config.key=value] [--eval_only]

From videos to an OAD mAP with this package:
    python -m eval.oad_extract --checkpoint CKPT --videos /data/thumos/videos --out FEATURES   # 4 features/s
    python -m eval.oad_train --features FEATURES --annotations data/THUMOS --config configs/oad_lstr.py --workdir W
    cat W/results.json                                                    # per-frame mAP (THUMOS) / mcAP (TVSeries)
`data/THUMOS` is LSTR's dataset folder (target_perframe/ + data_info.json, see `eval.oad_data`).

Training: windows of the work memory with a random per-session offset each epoch, long memory sampled over the
preceding 256 s, MCE loss without the ambiguous class, Adam + warm-up cosine per iteration (`configs/oad_lstr.py`).
Evaluation is online: every test frame is predicted from a window that ends at it (its past only), softmax
scores, then per-frame mAP (THUMOS, ambiguous frames removed) or calibrated mAP (TVSeries) with the original's
rules (`eval.metrics.perframe_map`). Checkpoints (orbax) every epoch (and every `checkpoint_every_steps`);
running the command again resumes exactly where the last checkpoint stopped. Outputs in W: `metrics.jsonl` and
`tensorboard/` (loss, lr, eval), `checkpoints/`, `results.json`, `config.json`.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import numpy as np

from eval import metrics as M
from eval import oad_data as D
from eval import oad_lstr as L


# ------------------------------------------------------------------------------------------- optimiser
def lr_schedule(optim, iters_per_epoch: int, epochs: int):
    """The original `WarmupCosineLR`: lr(k) = lr * w(k) * (1 + cos(pi k / K)) / 2, K = epochs x iterations,
    w(k) = f (1 - k / W) + k / W for k < W = int(warmup_epochs x iterations), 1 after."""
    import jax.numpy as jnp

    total = max(1, int(epochs * iters_per_epoch))
    warm = int(optim.warmup_epochs * iters_per_epoch)

    def schedule(k):
        k = jnp.asarray(k, jnp.float32)
        alpha = k / max(warm, 1)
        factor = jnp.where(k < warm, optim.warmup_factor * (1 - alpha) + alpha, 1.0)
        return optim.lr * factor * 0.5 * (1.0 + jnp.cos(jnp.pi * k / total))

    return schedule


def make_optimizer(optim, schedule):
    """torch.optim.Adam with weight decay: the decay is added to the gradient (L2) before the moments."""
    import optax

    return optax.chain(optax.add_decayed_weights(optim.weight_decay),
                       optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
                       optax.scale_by_learning_rate(schedule))


# -------------------------------------------------------------------------------------------- training
_COMPILED: dict = {}  # (model/optim settings, schedule length, ignore index) -> (schedule, tx, step, predict)


class OADTrainer:
    def __init__(self, config, info: D.DataInfo, train: list[D.Session], test: list[D.Session], workdir):
        import jax

        self.config, self.info, self.train_sessions, self.test_sessions = config, info, train, test
        self.workdir = pathlib.Path(workdir)
        model = config.model
        with model.unlocked():
            model.fps = info.fps
        self.sizes = L.memory_sizes(model)
        self.heads = int(model.num_heads)
        self.feature_dim = train[0].features.shape[1]
        probe = D.epoch_windows(train, self.sizes["work_len"], np.random.default_rng([config.seed, 0]))
        if not probe:
            raise D.OADDataError(f"no training session is longer than the work memory ({self.sizes['work_len']} "
                                 "frames)")
        self.iters_per_epoch = -(-len(probe) // int(config.batch_size))
        self.total_steps = self.iters_per_epoch * int(config.epochs)
        key = (config.model.to_json(), config.optim.to_json(), int(config.epochs), self.iters_per_epoch,
               info.ignore_index)
        if key not in _COMPILED:  # later runs of the same setup (a resume, tests) reuse the compiled programs
            _COMPILED[key] = self._compile(config, info.ignore_index)
        self.schedule, self.tx, self._step, self._predict = _COMPILED[key]

    def _compile(self, config, ignore):
        import jax

        schedule = lr_schedule(config.optim, self.iters_per_epoch, int(config.epochs))
        tx = make_optimizer(config.optim, schedule)
        heads = self.heads

        def loss_fn(params, lx, lm, wx, y, w):
            logits = L.forward(params, lx, lm, wx, num_heads=heads)
            c = logits.shape[-1]
            return L.mce_loss(logits.reshape(-1, c), y.reshape(-1, c), w.reshape(-1), ignore)

        def step(state, lx, lm, wx, y, w):
            import optax

            loss, grads = jax.value_and_grad(loss_fn)(state["params"], lx, lm, wx, y, w)
            updates, opt = tx.update(grads, state["opt"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            return {"params": params, "opt": opt, "step": state["step"] + 1}, {
                "loss": loss, "lr": schedule(state["step"])}

        predict = jax.jit(lambda p, lx, lm, wx: jax.nn.softmax(L.forward(p, lx, lm, wx, num_heads=heads), axis=-1))
        return schedule, tx, jax.jit(step, donate_argnums=(0,)), predict

    def init_state(self) -> dict:
        import jax
        import jax.numpy as jnp

        params = jax.tree_util.tree_map(jnp.asarray, L.init_params(self.config.model, self.feature_dim,
                                                                   self.info.num_classes, self.config.seed))
        return {"params": params, "opt": self.tx.init(params), "step": jnp.zeros((), jnp.int32)}

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The epoch's batches of (session, work start), a pure function of (seed, epoch)."""
        rng = np.random.default_rng([int(self.config.seed), int(epoch)])
        windows = D.epoch_windows(self.train_sessions, self.sizes["work_len"], rng)
        b = int(self.config.batch_size)
        return [windows[i:i + b] for i in range(0, len(windows), b)]

    def batch_arrays(self, batch: list[tuple[int, int]]):
        """Inputs of one batch, padded to the batch size (padding rows weigh 0 in the loss)."""
        b, nw = int(self.config.batch_size), self.sizes["work_len"]
        lx, lm, wx, y = [], [], [], []
        for k, start in batch:
            s = self.train_sessions[k]
            a, m, w = L.window_inputs(s.features, [start], self.sizes, train=True)
            lx.append(a[0]), lm.append(m[0]), wx.append(w[0]), y.append(s.targets[start:start + nw])
        weight = np.zeros((b, nw), np.float32)
        weight[:len(batch)] = 1
        pad = b - len(batch)
        if pad:
            lx += [lx[-1]] * pad
            lm += [lm[-1]] * pad
            wx += [wx[-1]] * pad
            y += [y[-1]] * pad
        return np.stack(lx), np.stack(lm), np.stack(wx), np.stack(y), weight

    def train_step(self, state, batch):
        return self._step(state, *self.batch_arrays(batch))

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self, params, sessions: list[D.Session] | None = None) -> dict:
        """Online per-frame (c)mAP over the test sessions."""
        sessions = self.test_sessions if sessions is None else sessions
        predict = lambda lx, lm, wx: self._predict(params, lx, lm, wx)  # noqa: E731
        scores, targets, short = [], [], []
        for s in sessions:
            if len(s.features) < self.sizes["work_len"]:
                short.append(s.name)  # no window fits: the original writes no prediction for it either
                continue
            scores.append(L.online_scores(predict, s.features, self.sizes, int(self.config.eval_batch)))
            targets.append(s.targets)
        if not scores:
            raise D.OADDataError("no test session is longer than the work memory")
        ignore = self.info.ignore_index
        # float64 rows like the original (it writes float32 softmax rows into float64 arrays)
        res = M.perframe_map(np.concatenate(targets), np.concatenate(scores).astype(np.float64),
                             metric=self.info.metric, background=0, ambiguous=ignore,
                             class_names=self.info.class_names)
        res["metric"] = "mAP" if self.info.metric == "AP" else "mcAP"
        res["sessions"] = len(scores)
        res["too_short"] = short
        return res


# ----------------------------------------------------------------------------------------- checkpoints
class Checkpoints:
    def __init__(self, directory: pathlib.Path, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(directory.absolute(), item_names=("state", "progress"),
                                             options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                                                  enable_async_checkpointing=False))

    def save(self, step: int, state, progress: dict) -> None:
        ocp = self._ocp
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        progress=ocp.args.JsonSave(progress)), force=True)

    def restore_latest(self, abstract_state) -> tuple[Any, dict] | None:
        ocp = self._ocp
        step = self.manager.latest_step()
        if step is None:
            return None
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 progress=ocp.args.JsonRestore()))
        return out["state"], dict(out["progress"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def train(config, features, annotations, workdir, *, eval_only: bool = False, stop_after_steps: int | None = None,
          log=print) -> dict:
    """Train (resuming from WORKDIR/checkpoints) and evaluate; returns the results (also WORKDIR/results.json).
    `stop_after_steps`: stop after that many optimizer steps of this call, checkpointing first (tests)."""
    import jax

    from streamformer_jax.train.metrics import MetricWriter

    info = D.load_data_info(annotations, config.dataset or None)
    train_s, train_rep = D.load_sessions(info, features, "train")
    test_s, test_rep = D.load_sessions(info, features, "test")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = OADTrainer(config, info, train_s, test_s, workdir)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    ckpt = Checkpoints(workdir / "checkpoints", int(config.keep_checkpoints))
    state = trainer.init_state()
    restored = ckpt.restore_latest(jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
    progress = {"epoch": 0, "batch": 0}
    if restored is not None:
        state, progress = restored
        log(f"resumed from {workdir}/checkpoints at step {int(state['step'])} (epoch {progress['epoch']}, "
            f"batch {progress['batch']})")
    writer = MetricWriter(workdir, total_steps=trainer.total_steps, start_step=int(state["step"]),
                          progress_bar=bool(config.progress_bar) and not eval_only)
    history = []
    done_here = 0
    try:
        epoch = int(progress["epoch"])
        while not eval_only and epoch < int(config.epochs):
            batches = trainer.epoch_batches(epoch)
            for b in range(int(progress["batch"]) if epoch == progress["epoch"] else 0, len(batches)):
                state, m = trainer.train_step(state, batches[b])
                done_here += 1
                writer.advance()
                step = int(state["step"])
                writer.write(step, {"loss": float(m["loss"]), "lr": float(m["lr"]), "epoch": epoch})
                every = int(config.checkpoint_every_steps)
                stop = stop_after_steps is not None and done_here >= stop_after_steps
                if (every and step % every == 0) or stop:
                    ckpt.save(step, state, {"epoch": epoch, "batch": b + 1})
                if stop:
                    ckpt.close()
                    return {"stopped": "after_steps", "step": step}
            epoch += 1
            ckpt.save(int(state["step"]), state, {"epoch": epoch, "batch": 0})
            if config.eval_every_epochs and epoch % int(config.eval_every_epochs) == 0 and epoch < config.epochs:
                res = trainer.evaluate(state["params"])
                history.append({"epoch": epoch, "mean_AP": res["mean_AP"]})
                writer.write(int(state["step"]), {f"eval/{res['metric']}": res["mean_AP"]})
        res = trainer.evaluate(state["params"])
        writer.write(int(state["step"]), {f"eval/{res['metric']}": res["mean_AP"]})
    finally:
        writer.close()
        ckpt.close()
    chance = chance_map(np.concatenate([s.targets for s in test_s]), info)
    result = {"dataset": info.name, "metric": res["metric"], "mean_AP": res["mean_AP"],
              "per_class_AP": res["per_class_AP"], "num_frames": res["num_frames"], "test_sessions": res["sessions"],
              "too_short": res["too_short"], "chance_mean_AP": chance, "step": int(state["step"]),
              "epochs": int(config.epochs), "history": history, "data": {"train": train_rep, "test": test_rep},
              "sizes": trainer.sizes}
    tmp = workdir / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(workdir / "results.json")
    return result


def chance_map(targets: np.ndarray, info: D.DataInfo, draws: int = 10, seed: int = 0) -> float:
    """The metric of random scores (mean over `draws` draws): the chance level the trained head must beat."""
    rng = np.random.default_rng(seed)
    vals = [M.perframe_map(targets, rng.random(targets.shape), metric=info.metric, background=0,
                           ambiguous=info.ignore_index)["mean_AP"] for _ in range(draws)]
    return float(np.mean(vals))


# ------------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    from absl import app, flags
    from ml_collections import config_flags

    args = sys.argv if argv is None else ["eval.oad_train", *argv]
    fl = flags.FlagValues()
    # (the --config.key=value overrides are found in the argument list when the flag is defined)
    config_flags.DEFINE_config_file("config", None, "configs/oad_lstr.py[:variant]", flag_values=fl,
                                    lock_config=True, sys_argv=args)
    flags.DEFINE_string("features", None, "feature folder (<session>.npy [N, D], 4 per second)", flag_values=fl)
    flags.DEFINE_string("annotations", None, "LSTR dataset folder (target_perframe/ + data_info.json) or "
                        "data_info.json", flag_values=fl)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, results.json)", flag_values=fl)
    flags.DEFINE_string("dataset", "", "data_info.json entry (THUMOS / TVSeries); default: the folder's name",
                        flag_values=fl)
    flags.DEFINE_bool("eval_only", False, "evaluate the latest checkpoint (or the initial model) only",
                      flag_values=fl)
    flags.DEFINE_bool("traceback", False, "show Python tracebacks for errors", flag_values=fl)
    try:
        fl(args)
        missing = [n for n in ("config", "features", "annotations", "workdir") if fl[n].value is None]
        if missing:
            raise ValueError("missing required flags: " + ", ".join(f"--{n}" for n in missing))
    except (flags.Error, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    config = fl.config
    if fl.dataset:
        with config.unlocked():
            config.dataset = fl.dataset
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        res = train(config, fl.features, fl.annotations, fl.workdir, eval_only=fl.eval_only,
                    log=lambda s: print(s, file=sys.stderr))
    except (FileNotFoundError, D.OADDataError, ValueError) as e:
        if fl.traceback:
            raise
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{res['dataset']} online {res['metric']} = {res['mean_AP']:.4f} (chance {res['chance_mean_AP']:.4f}) over "
          f"{res['num_frames']} frames of {res['test_sessions']} sessions -> {fl.workdir}/results.json",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
