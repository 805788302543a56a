r"""`python -m streamformer_jax.train --config configs/pretrain_multitask.py[:VARIANT] --workdir DIR [--config.k=v]`

The config file's `get_config(arg)` builds the config; it is locked, so overriding a key that does not exist is
an error. Running the same command again resumes from the latest checkpoint in DIR/checkpoints (with a larger
`--config.total_steps=N` it trains on to N).
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: metrics.jsonl, tensorboard/, checkpoints/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax/grain INFO lines drown the progress bar
    from streamformer_jax.train import loop

    try:
        summary = loop.train(FLAGS.config, FLAGS.workdir)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as e:  # a user error (config, data, checkpoint): one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    import jax

    # Every process reports how it ended ("done" or "preempted"); process 0's line starts with "finished:" (the
    # launch scripts look for it).
    line = f"finished: step {summary['step']}/{summary['total_steps']} ({summary['stopped']})"
    if jax.process_index() == 0:
        print(f"{line}; workdir {FLAGS.workdir}", flush=True)
    else:
        print(f"process {jax.process_index()}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
