"""The ``jiio`` command line: one sub-command per entry of :data:`COMMANDS`.

``jiio bench attack|latent ...`` (JIIO against PGD / Adam, :mod:`orchestrator.bench`).
Adding a sub-command (``analyze``, ``sweep``) is one entry in :data:`COMMANDS`: a help
line, a function that adds its arguments to an ``argparse`` parser, and a function that
runs it from the parsed namespace and returns the exit code.

Errors in the user's input (a bad flag or value, a missing file, ``--device cuda`` without
CUDA) print one line, ``jiio <command>: error: <what>``, on stderr and exit with code 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "main"]


class UsageError(Exception):
    """Raised by a command's ``run`` for bad user input: one line on stderr, exit code 2."""


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    from orchestrator import bench

    bench.add_arguments(parser)


def _bench_run(args: argparse.Namespace) -> int:
    from orchestrator import bench

    try:
        return bench.run(args)
    except bench.BenchInputError as err:
        raise UsageError(str(err)) from None


#: sub-command name -> (help, add_arguments, run). Imports happen inside the functions, so
#: ``jiio --help`` stays fast and one command's dependencies never slow another down.
COMMANDS: dict[str, Command] = {
    "bench": Command(
        "time JIIO against PGD (attack) or Adam (latent) on one MDEQ, side by side",
        _bench_arguments,
        _bench_run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jiio",
        description="Joint inference and input optimisation (JIIO) for deep equilibrium models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(command_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jiio`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as stop:  # --help (0) or a parse error (2, already reported)
        return int(stop.code) if isinstance(stop.code, int) else 2
    prog = getattr(args, "command_prog", f"jiio {args.command}")  # a command may name itself
    try:
        return int(args.command_run(args))
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
