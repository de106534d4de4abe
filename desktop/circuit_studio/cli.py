"""The `circuit-studio` command line: one sub-command per module in `commands/`.

With no command (or `gui`) it opens the desktop window on the bundled demo.

Bad input ends with a one-line reason on stderr and exit status 2; Ctrl-C cancels cleanly (130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from .core.errors import Cancelled, CircuitStudioError
from .core.progress import CancelToken, Progress

COMMANDS = ("attribute", "attribute-batch", "heads", "intervene", "train-transcoders", "index-features")


class TerminalProgress:
    """A one-line progress bar on stderr when it is a terminal; phase changes only otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr  # looked up now: tests swap sys.stderr after import
        self.tty = self.stream.isatty()
        self.phase = ""
        self.started = time.perf_counter()

    def __call__(self, p: Progress) -> None:
        elapsed = time.perf_counter() - self.started
        if self.tty:
            width = 30
            filled = int(width * p.fraction)
            self.stream.write(f"\r{p.phase:<14} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{p.done}/{p.total} {elapsed:6.1f}s")
            if p.done >= p.total:
                self.stream.write("\n")
            self.stream.flush()
        elif p.phase != self.phase:
            self.stream.write(f"{p.phase}... ({elapsed:.1f}s)\n")
        self.phase = p.phase


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (a missing option, `--top abc`) as our one line; its default prints the usage first.
    The sub-command parsers are made of the same class."""

    def error(self, message: str):
        self.exit(2, f"circuit-studio: error: {message}. See `{self.prog} --help`.\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="circuit-studio", description="Attribution graphs for local language models.")
    sub = parser.add_subparsers(dest="command")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)
        before = set(sub.choices)
        module.add_parser(sub)
        for added in set(sub.choices) - before:
            sub.choices[added].set_defaults(run=module.run)
    gui = sub.add_parser("gui", help="open the desktop window (the default with no command)")
    gui.add_argument("--model", help="model folder (or a repo id in the local Hugging Face cache) to open "
                                     "instead of the bundled demo")
    gui.add_argument("--transcoders", help="transcoder folder, config.yaml or cached hub reference for --model")
    args = parser.parse_args(argv)
    if args.command in (None, "gui"):
        from .ui.app import run_app

        return run_app(getattr(args, "model", None), getattr(args, "transcoders", None))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # a path or token that the terminal's encoding cannot show must not turn a finished run into a traceback
    if hasattr(sys.stdout, "reconfigure"):  # not when a caller replaced it with a plain StringIO
        sys.stdout.reconfigure(errors="backslashreplace")
    cancel = CancelToken()
    try:
        return args.run(args, TerminalProgress(), cancel)
    except KeyboardInterrupt:
        print("\ncircuit-studio: cancelled; nothing was written.", file=sys.stderr)
        return 130
    except Cancelled:
        print("circuit-studio: cancelled; nothing was written.", file=sys.stderr)
        return 130
    except (CircuitStudioError, ValueError) as e:
        print(f"circuit-studio: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # one the command did not foresee (its outputs are written whole or not at all)
        where = f": {e.filename}" if e.filename else ""
        print(f"circuit-studio: error: {e.strerror or e}{where}.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
