"""The command-line convention every entry point follows (`python -m streamformer_jax.{convert,extract,train}`,
`python -m data_pipelines.convert`, `python -m eval.*`, `scripts/*.py`).

* The same flag names for the same things: `--checkpoint` (a model checkpoint to read: ours or an official Hugging
  Face directory), `--out` (what the command writes), `--workers` (parallel worker processes), `--format` (the
  output format). Earlier spellings stay accepted as aliases (`--src`, `--dst`).
* A user error (a missing or malformed file, a bad option value, a usage mistake) is reported as
  `error: <what>: <why>` on stderr, without a traceback, with exit status 2 (`USAGE_ERROR`). Ctrl-C says what
  was kept and exits with 130.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from absl import app as absl_app, flags as absl_flags

USAGE_ERROR = 2
INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error line for usage errors (exit 2): `error: <message> (see PROG --help)`."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def add_checkpoint(parser: argparse.ArgumentParser, *aliases: str, required: bool = True,
                   help: str = "our checkpoint directory or an official Hugging Face directory (detected)") -> None:
    parser.add_argument("--checkpoint", *aliases, dest="checkpoint", required=required, metavar="CKPT", help=help)


def add_out(parser: argparse.ArgumentParser, *aliases: str, help: str, required: bool = True,
            metavar: str = "OUT", default=None) -> None:
    parser.add_argument("--out", *aliases, dest="out", required=required, metavar=metavar, help=help, default=default)


def add_workers(parser: argparse.ArgumentParser, default: int = 1, help: str = "worker processes") -> None:
    parser.add_argument("--workers", type=int, default=default, help=f"{help} (default {default})")


def add_format(parser: argparse.ArgumentParser, choices: Sequence[str], default: str, help: str = "output format"
               ) -> None:
    parser.add_argument("--format", choices=tuple(choices), default=default, help=f"{help} (default {default})")


def positive(kind: type = int) -> Callable[[str], int | float]:
    """An argparse `type`: a number of `kind` that must be > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def message(err: BaseException) -> str:
    """The user-facing text of an error: its message, naming the file of an OSError."""
    msg = str(err)
    if isinstance(err, OSError) and err.filename and str(err.filename) not in msg:
        msg = f"{err.filename}: {err.strerror or msg}"
    return msg or type(err).__name__


def parse_absl_flags(argv: Sequence[str]) -> str | None:
    """Parse the absl flags of a command that takes a config file (`--config FILE[:ARG] --config.k=v`); the
    one-line error (None when they parse). config_flags embeds the config file's traceback in its message."""
    absl_app.define_help_flags()
    try:
        rest = absl_flags.FLAGS(list(argv))
    except (absl_flags.Error, ValueError, AttributeError, KeyError) as err:  # AttributeError: a misspelt override
        lines = [line for line in str(err).replace("\\n", "\n").splitlines() if line.strip()]
        if any(line.startswith("Traceback") for line in lines):
            return f"{lines[0].rstrip(':')}: {lines[-1]} (see --help)"
        text = " ".join(line.strip(" '\"\\") for line in lines)
        text = f"unknown config field: {text}" if isinstance(err, (AttributeError, KeyError)) else text
        return f"{text} (see --help)"
    if len(rest) > 1:
        return f"unexpected arguments: {rest[1:]} (see {argv[0]} --help)"
    return None


def fail(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return USAGE_ERROR


def run(command: Callable[[], int | None], *, errors: tuple[type[BaseException], ...] = (ValueError, OSError),
        traceback: bool = False, interrupted: str = "interrupted") -> int:
    """Run a command; the `errors` it raises are user errors (`error: ...`, exit 2) unless `traceback`."""
    try:
        return command() or 0
    except errors as err:
        if traceback:
            raise
        return fail(message(err))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED
