"""A solver sweep's Pareto front, re-measured against the baseline's per-step curve in one run.

``sweeps/solver.py`` searches JIIO's settings on a fixed model with two objectives (the
inner objective, i.e. attack strength or reconstruction loss, and the solve time) and
writes its non-dominated trials to ``pareto/sweep=NAME/``. Sweep timings come from trials
that ran at different moments, each on its own batches; this script puts the front on an
equal footing: it takes up to ``--top`` front configurations (spread over the front by
solve time) and runs them as ``--jiio-config`` variants of ``jiio bench attack`` (or
``latent``) on the sweep's checkpoint, beside the paper's settings and PGD-k (Adam-k), on
the same held-out samples, interleaved, re-scored by the same plain DEQ, with 95%
intervals (see ``orchestrator/bench/measure.py``). The bench's plot is the figure: the
baseline's per-step curve and every JIIO point, strength against time.

    python benchmarks/solver_front.py --results results --name solver-adv-jiio \\
        --checkpoint models/adv-jiio.pt --out docs/figures/front-adv-jiio -- --samples 256 --reps 2

Everything after ``--`` goes to the bench unchanged. Writes ``OUT.json`` (the bench's JSON
plus the front's sweep rows) and ``OUT.png``.

The baselines are the bench's: the paper's cold PGD (Adam) and the strong warm ones at every
step size of the grid; every front configuration is put against the fastest of them that
reaches its strength (``fastest``, by CE, margin loss and accuracy; by loss for latent).
When the sweep stored its own baseline reference (``sweeps/solver.py``, the same baselines
run once on the trials' batches), each front row also gets ``sweep_vs_fastest``: the fastest
baseline reaching its sweep ``inner_objective`` and that baseline's time over the trial's
``solve_s`` (the sweep's own timings, no interval).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from orchestrator.bench.reference import fastest_to
from orchestrator.bench.report import json_safe, render
from orchestrator.storage import ResultStore

#: the settings a solver sweep searches (sweeps/solver.py): a front row's configuration
SEARCHED = ("anderson_m", "max_iter", "alpha_z", "alpha_mu", "alpha_x", "init", "anderson_type")


def front_configs(results: str, name: str, top: int) -> list[dict[str, Any]]:
    """Up to ``top`` rows of the sweep's Pareto front, spread evenly by solve time."""
    store = ResultStore(results)
    front = store.read("pareto", name)
    if not len(front):
        raise SystemExit(
            f"no Pareto front for sweep {name!r} under {results} (has sweeps/solver.py finished?)"
        )
    front = front.sort_values("solve_s").reset_index(drop=True)
    n, k = len(front), min(top, len(front))
    picks = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in front.iloc[i].items() if k != "sweep"}
        for i in picks
    ]


def spec(row: dict[str, Any]) -> str:
    """The ``--jiio-config`` text of a front row: its searched fields."""
    parts = []
    for k in SEARCHED:
        if k not in row or row[k] is None:
            continue
        v = row[k]
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ",".join(parts)


def _reference(results: str, name: str) -> dict[str, Any] | None:
    """The sweep's stored baseline reference, or None (no file, or a sweep from before it)."""
    from orchestrator.bench.reference import reference_path
    from orchestrator.storage import load_bytes

    try:
        return json.loads(load_bytes(reference_path(results, name)))
    except (FileNotFoundError, OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="the sweep's storage root (default results)")
    p.add_argument("--name", required=True, help="the solver sweep's name")
    p.add_argument("--checkpoint", required=True, help="the checkpoint the sweep ran on")
    p.add_argument("--bench", choices=("attack", "latent"), default="attack")
    p.add_argument("--top", type=int, default=4, help="front configurations to re-measure (default 4)")
    p.add_argument("--out", required=True, help="output prefix: OUT.json and OUT.png")
    args = p.parse_args(own)
    if args.top < 1:
        p.error(f"--top must be an integer >= 1, got {args.top}")
    rows = front_configs(args.results, args.name, args.top)
    specs = [spec(r) for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from orchestrator import cli
    from orchestrator.bench import BenchInputError

    cmd = ["bench", args.bench, "--checkpoint", args.checkpoint, "--plot", f"{args.out}.png", *bench_args]
    for r, s in zip(rows, specs, strict=True):
        cmd += ["--jiio-config", f"front-{r['trial_id']}@{s}"]
    parsed = cli.build_parser(only="bench").parse_args(cmd)
    try:
        out = parsed.bench_run(parsed)
    except BenchInputError as err:
        raise SystemExit(f"solver_front: {err}") from None
    ref = _reference(args.results, args.name)
    out["front"] = []
    for r, s in zip(rows, specs, strict=True):
        label = f"front-{r['trial_id']}"
        fastest = {
            m: {k: f[k] for k in ("baseline", "step", "ratio", "range", "lower_bound")}
            for m, f in out["versus"][label]["fastest"].items()
        }
        row = {**r, "label": label, "jiio_config": s, "fastest": fastest}
        if ref is not None:
            hit = fastest_to(ref, float(r["inner_objective"]))
            row["sweep_vs_fastest"] = (
                None if hit is None else {**hit, "ratio": hit["seconds"] / float(r["solve_s"])}
            )
        out["front"].append(row)
    out["sweep_reference"] = ref is not None
    out["sweep"] = {"results": args.results, "name": args.name}
    with open(f"{args.out}.json", "w") as fh:
        json.dump(json_safe(out), fh, allow_nan=False)
    print(render(out))
    for r in out["front"]:
        sweep = r.get("sweep_vs_fastest")
        vs = (
            f"; sweep's fastest baseline to it: {sweep['baseline']}@{sweep['step']}, {sweep['ratio']:.2f}x"
            if sweep
            else ""
        )
        print(
            f"{r['label']}: {r['jiio_config']} (sweep: inner_objective {r['inner_objective']:.4g}, "
            f"solve_s {r['solve_s']:.3g}{vs})"
        )
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
