"""Checks the commands run on their options right after parsing, before any model is loaded, so that
a bad value is reported in a second, not after the slow work, as one line naming the option, the rule
and the value given."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..core.atomic_write import OutputError, check_output_path
from ..core.errors import CircuitStudioError


def check_option(args: argparse.Namespace, name: str, *, low: float | None = None, high: float | None = None,
                 above: float | None = None, hint: str = "") -> None:
    """Refuse `args.<name>` unless it is a finite number >= low (or > above) and <= high; None passes
    (the option was not given)."""
    value = getattr(args, name)
    if value is None:
        return
    ok = (math.isfinite(value) and (low is None or value >= low) and (above is None or value > above)
          and (high is None or value <= high))
    if not ok:
        raise CircuitStudioError(f"--{name.replace('_', '-')} must be {_rule(low, high, above)} (got {value}).",
                                 hint)


def _rule(low: float | None, high: float | None, above: float | None) -> str:
    if above is not None:
        return f"greater than {above}" + ("" if high is None else f" and at most {high}")
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def check_outputs(**outputs: Path | None) -> None:
    """Refuse output files that could never be written (missing or read-only folder, a folder given as a
    file) and two outputs given the same name; keyword = option name, e.g. check_outputs(out=args.out)."""
    given = {name: path for name, path in outputs.items() if path is not None}
    seen: dict[Path, str] = {}
    for name, path in given.items():
        option = f"--{name.replace('_', '-')}"
        check_output_path(path, option)
        resolved = path.expanduser().resolve()
        if resolved in seen:
            raise OutputError(f"{seen[resolved]} and {option} are the same file, {path}.",
                              "Give each output its own name.")
        seen[resolved] = option
