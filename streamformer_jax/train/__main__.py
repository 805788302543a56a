r"""`python -m streamformer_jax.train --config configs/pretrain_multitask.py[:VARIANT] --workdir DIR [--config.k=v]`

The config file's `get_config(arg)` builds the config; it is locked, so overriding a key that does not exist is
an error. Running the same command again resumes from the latest checkpoint in DIR/checkpoints (with a larger
`--config.total_steps=N` it trains on to N).

Errors follow `streamformer_jax.cli`: a bad flag, config or input is one `error: ...` line and exit status 2
(`--traceback` shows the traceback); a loss that is no longer finite stops the run with exit status 3.
"""
from __future__ import annotations

import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from streamformer_jax import cli
from streamformer_jax.train import loop

NON_FINITE = 3

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: metrics.jsonl, tensorboard/, checkpoints/.")
flags.DEFINE_bool("traceback", False, "Show the Python traceback of a user error.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    error = cli.parse_absl_flags(argv)
    if error:
        return cli.fail(error)
    logging.set_verbosity(logging.WARNING)  # orbax/grain INFO lines drown the progress bar
    try:
        summary = loop.train(FLAGS.config, FLAGS.workdir)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return NON_FINITE
    except (ValueError, OSError) as e:
        if FLAGS.traceback:
            raise
        return cli.fail(cli.message(e))
    # Every process reports how it ended ("done" or "preempted"); process 0's line starts with "finished:" (the
    # launch scripts look for it).
    line = f"finished: step {summary['step']}/{summary['total_steps']} ({summary['stopped']})"
    if jax.process_index() == 0:
        print(f"{line}; workdir {FLAGS.workdir}", flush=True)
    else:
        print(f"process {jax.process_index()}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
