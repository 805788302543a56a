"""Export the backbone of a run's latest training checkpoint in this project's checkpoint format.

    python -m streamformer_jax.train.export --workdir DIR [--out DIR/export]

Reads DIR/config.json (written by the trainer), restores the newest good checkpoint on this machine's devices
(any mesh) and writes `streamformer_config.json` + `params/` for `streamformer_jax.extract` / `FeatureExtractor`.
Single-process runs export automatically when they finish; use this for multi-host runs or any earlier step.
"""
from __future__ import annotations

import json
import pathlib

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run directory.")
flags.DEFINE_string("out", "", "Output directory (default: WORKDIR/export).")
flags.mark_flag_as_required("workdir")


def export(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
    import ml_collections

    from streamformer_jax.train import loop

    workdir = pathlib.Path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
        config.mesh.rules = "dp"
        config.distributed.initialize = "no"
    setup = loop.Setup(config, workdir, log=lambda s: None)
    restored = setup.ckpt.restore_latest(setup.trainer.abstract_state())
    setup.ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no usable checkpoint")
    step, state, _ = restored
    path = loop.export_backbone(config, setup.trainer, state, out or workdir / "export")
    print(f"exported step {step} to {path}")
    return path


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    export(FLAGS.workdir, FLAGS.out or None)


if __name__ == "__main__":
    app.run(main)
