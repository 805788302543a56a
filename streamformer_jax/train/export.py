"""Export the backbone of a run's latest training checkpoint in this project's checkpoint format.

    python -m streamformer_jax.train.export --workdir DIR [--out DIR/export]

Reads DIR/config.json (written by the trainer), restores the newest good checkpoint on this machine's devices
(any mesh) and writes `streamformer_config.json` + `params/` for `streamformer_jax.extract` / `FeatureExtractor`.
Single-process runs export automatically when they finish; use this for multi-host runs or any earlier step.
"""
from __future__ import annotations

import json
import pathlib
import sys

import ml_collections
from absl import logging

from streamformer_jax import cli
from streamformer_jax.train import loop


def export(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
    workdir = pathlib.Path(workdir)
    try:
        config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{workdir}: no config.json (not a training run directory)") from None
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
    path = loop.export_backbone(setup.trainer, state, out or workdir / "export")
    print(f"exported step {step} to {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m streamformer_jax.train.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="training run directory")
    cli.add_out(p, help="output directory (default: WORKDIR/export)", required=False, metavar="DIR")
    args = p.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    return cli.run(lambda: export(args.workdir, args.out) and 0)


if __name__ == "__main__":
    sys.exit(main())
