"""The ``jiio`` command line: one sub-command per entry of :data:`COMMANDS`.

``jiio bench attack|latent ...`` (JIIO against PGD / Adam, :mod:`orchestrator.bench`),
``jiio analyze PATH`` (:mod:`orchestrator.analyze`), ``jiio sweep alpha|solver ...`` (the
scripts in ``sweeps/``), ``jiio confirm PATH --name NAME`` (:mod:`orchestrator.commands.confirm`),
``jiio train --out FILE`` (:mod:`orchestrator.commands.train`), ``jiio export optuna PATH --name
NAME --to URL`` (:mod:`orchestrator.commands.export`).
Adding a sub-command is one entry in :data:`COMMANDS`: a help line, a function that adds
its arguments to an ``argparse`` parser, and a function that runs it from the parsed
namespace and returns the exit code.

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


def _analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="storage root of the results: a directory, s3://... or gs://...")
    parser.add_argument("--name", default=None, help="one sweep (default: every sweep under PATH)")
    parser.add_argument(
        "--out",
        default=None,
        help="directory for the PNG plots and the HTML report (default: PATH/analysis/<sweep> for a "
        "local PATH, ./analysis/<sweep> for object storage)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    parser.add_argument(
        "--sql",
        metavar="QUERY",
        default=None,
        help="run a DuckDB SQL query over the views trials, steps and traces (each with a sweep "
        "column; --name restricts them to one sweep) and print its rows",
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), default=None, help="two sweeps under PATH side by side"
    )


def _analyze_run(args: argparse.Namespace) -> int:
    from orchestrator import analyze

    if args.sql is not None and args.compare is not None:
        raise UsageError("--sql and --compare cannot be combined")
    try:  # 0, or 1 when no sweep has a trial to rank (its notes say why)
        if args.sql is not None:
            return analyze.sql(args.path, args.name, args.sql, args.json)
        if args.compare is not None:
            return analyze.compare(args.path, *args.compare, args.json)
        return analyze.run(
            args.path, args.name, args.out, args.json, plots=not args.no_plots, report=not args.no_report
        )
    except analyze.AnalyzeError as err:  # nothing to analyse: no such path or sweep, no readable row
        raise UsageError(str(err)) from None
    except (OSError, ValueError) as err:  # e.g. an object store that refuses access
        first = str(err).strip().splitlines()
        raise UsageError(first[0] if first else type(err).__name__) from None


_SWEEPS = ("alpha", "solver")


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("script", choices=_SWEEPS, help="which sweep: sweeps/<script>.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own flags (see its --help)")


def _sweep_run(args: argparse.Namespace) -> int:
    import importlib.util
    import os

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sweeps", f"{args.script}.py"
    )
    if not os.path.isfile(path):
        raise UsageError(f"{path} not found: jiio sweep needs the repository checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"_jiio_sweep_{args.script}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from orchestrator.commands.sweep import main as sweep_main

    sys.argv = [path, *args.args]  # the resume hint repeats this command line
    return sweep_main(module.SPEC, list(args.args))


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from orchestrator.commands import train as train_cli

    train_cli.add_arguments(parser)


def _train_run(args: argparse.Namespace) -> int:
    from orchestrator.commands import train as train_cli

    try:
        return train_cli.run(args)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _confirm_arguments(parser: argparse.ArgumentParser) -> None:
    from orchestrator.commands import confirm

    confirm.add_arguments(parser)


def _confirm_run(args: argparse.Namespace) -> int:
    from orchestrator.commands import confirm

    try:
        return confirm.run(args)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    from orchestrator.commands import export

    export.add_arguments(parser)


def _export_run(args: argparse.Namespace) -> int:
    from orchestrator.commands import export

    try:
        return export.run(args)
    except (ValueError, OSError) as err:  # ExportError, a storage that cannot be opened
        first = str(err).strip().splitlines()
        raise UsageError(first[0] if first else type(err).__name__) from None


#: sub-command name -> (help, add_arguments, run). Imports happen inside the functions, so
#: ``jiio --help`` stays fast and one command's dependencies never slow another down.
COMMANDS: dict[str, Command] = {
    "bench": Command(
        "time JIIO against PGD (attack) or Adam (latent) on one MDEQ, side by side",
        _bench_arguments,
        _bench_run,
    ),
    "analyze": Command(
        "a sweep's results: tables with confidence intervals, plots, an HTML report; --sql, --compare",
        _analyze_arguments,
        _analyze_run,
    ),
    "sweep": Command("run a sweep (same as python sweeps/<script>.py ...)", _sweep_arguments, _sweep_run),
    "train": Command(
        "train one model (clean / PGD / JIIO adversarial, or a decoder) and save its checkpoint",
        _train_arguments,
        _train_run,
    ),
    "confirm": Command(
        "re-run a sweep's top configurations and the paper's with new seeds; mean and spread",
        _confirm_arguments,
        _confirm_run,
    ),
    "export": Command(
        "write a sweep elsewhere: `export optuna` makes it an Optuna study (optuna-dashboard)",
        _export_arguments,
        _export_run,
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``jiio`` parser; with ``only``, the arguments of that command alone are added (each
    command's ``add_arguments`` imports its module: ``jiio analyze`` need not import torch)."""
    parser = _Parser(
        prog="jiio",
        description="Joint inference and input optimisation (JIIO) for deep equilibrium models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if only is None or name == only:
            cmd.add_arguments(p)
        p.set_defaults(command_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jiio`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
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
