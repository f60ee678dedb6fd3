"""Analysis at scale: ``jiio analyze`` against a plain pyarrow read of every table.

Generates a sweep of ``--trials`` trials x ``--epochs`` epochs in the per-epoch layout
that sweeps write today (``trials/<id>.parquet``, ``steps/<id>-e<epoch>.parquet``,
``traces/<id>-e<epoch>.parquet``, a record per trial in ``pending/``, ``meta/``): each
epoch has ``--steps`` training step rows and one eval row, and ``--traced`` traced steps
of ``--iters`` solver iterations (the defaults, 1,000 x 10 epochs, give 10M trace rows
in 21,000 Parquet files). The trial rows have the columns a real trial row has (searched
alphas, fixed settings, metrics, provenance) and ``eval_n``; trials with a large
alpha_x * alpha_z diverge (a planted region).

Then, on that sweep, each measurement in a fresh child process, repeated ``--reps``
times and interleaved (plain, analyze, plain, analyze, ...; a first unmeasured read
warms the page cache for both):

- ``plain``: ``pyarrow.parquet.read_table`` of each table directory (trials, steps,
  traces), every row and column;
- ``analyze``: ``orchestrator.analyze.run`` in-process (summary, intervals, importance,
  every plot, the HTML report), stdout discarded;
- ``cli``: ``python -m orchestrator.cli analyze ... --json``, the whole console script in
  its own process (it also pays for what the ``jiio`` parser imports for other commands);
- ``baseline`` (with ``--baseline-rev REV``): ``run`` of ``orchestrator/analyze.py`` as it
  was at git revision REV (the single-module version before ``orchestrator/analysis``).

Each child reports its wall time (from before its imports to the end) and its peak
resident memory (``ru_maxrss``). Prints a table of medians (and ``--json`` writes all
figures):

    python benchmarks/analyze_scale.py --trials 50 --epochs 3        # quick, ~20 s
    python benchmarks/analyze_scale.py --baseline-rev 516a63e         # full size, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = "bench"


def generate(root: str, trials: int, epochs: int, steps: int, traced: int, iters: int, seed: int = 0) -> dict:
    """Write the sweep; returns its sizes (files, rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    dirs = {t: f"{root}/{t}/sweep={SWEEP}" for t in ("trials", "steps", "traces", "pending", "meta")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    space = {
        "alpha_z": {"kind": "loguniform", "low": 0.2, "high": 1.0, "choices": []},
        "alpha_mu": {"kind": "loguniform", "low": 0.1, "high": 1.0, "choices": []},
        "alpha_x": {"kind": "loguniform", "low": 0.05, "high": 2.0, "choices": []},
    }
    ids = [f"{i:012x}" for i in range(trials)]
    meta = {
        "name": SWEEP,
        "kind": "train",
        "metrics": ["robust_acc"],
        "modes": ["max"],
        "space": space,
        "fixed": {"task": "adversarial"},
        "data": {"dataset": "digits"},
        "trials": trials,
        "seed": 0,
        "paper_trial_ids": [ids[0]],
        "created_at": time.time(),
    }
    with open(f"{dirs['meta']}/sweep.json", "w") as f:
        json.dump(meta, f)
    n_files = 1
    total = {"trials": 0, "steps": 0, "traces": 0}
    per_epoch = steps // max(1, traced)
    for i, tid in enumerate(ids):
        p = {k: float(np.exp(rng.uniform(np.log(d["low"]), np.log(d["high"])))) for k, d in space.items()}
        if i == 0:
            p = {"alpha_z": 0.8, "alpha_mu": 0.6, "alpha_x": 0.6}
        diverged = p["alpha_x"] * p["alpha_z"] > 0.9
        acc = float(np.clip(0.55 - 0.3 * abs(np.log(p["alpha_x"] / 0.5)) + rng.normal(0, 0.02), 0, 1))
        eval_n = 1000
        row = {
            "trial_id": tid,
            "status": "diverged" if diverged else "completed",
            **p,
            "task": "adversarial",
            "dataset": "digits",
            "seed": 0,
            "mode": "jiio",
            "solver": "anderson",
            "anderson_m": 10,
            "max_iter": iters,
            "tol": 1e-4,
            "epochs": epochs,
            "batch_size": 64,
            "lr": 5e-3,
            "robust_acc": None if diverged else round(acc * eval_n) / eval_n,
            "eval_n": eval_n,
            "clean_acc": None if diverged else min(1.0, acc + 0.3),
            "loss": float(rng.uniform(0.2, 2)),
            "wall_s": float(rng.uniform(30, 300)),
            "attempts": 1,
            "started_at": time.time(),
            "finished_at": time.time() + i,
            "error": None,
            "torch": "2.x",
            "ray": "2.x",
            "git_sha": "0" * 40,
            "device": "cpu",
            "steps": epochs * steps,
        }
        pq.write_table(pa.Table.from_pylist([row]), f"{dirs['trials']}/{tid}.parquet")
        total["trials"] += 1
        with open(f"{dirs['pending']}/{tid}.json", "w") as f:
            json.dump(
                {"params": p, "trial_id": tid, "state": "finished", "attempts": 1, "wall_s": row["wall_s"]}, f
            )
        for e in range(1, epochs + 1):
            s0 = (e - 1) * steps
            step = np.arange(s0 + 1, s0 + steps + 1)
            cols = {
                "trial_id": [tid] * (steps + 1),
                "step": np.append(step, s0 + steps),
                "epoch": np.full(steps + 1, e - 1),
                "phase": ["train"] * steps + ["eval"],
            }
            for name in (
                "loss",
                "train_acc",
                "lr",
                "solver_iterations",
                "solver_converged",
                "solver_diverged",
                "solver_residual",
                "solve_s",
                "step_s",
                "attack_s",
                "jac_penalty",
                "inner_loss",
            ):
                cols[name] = rng.uniform(0, 1, steps + 1)
            cols["robust_acc"] = np.append(np.full(steps, np.nan), acc)
            cols["eval_n"] = np.append(np.zeros(steps, dtype=np.int64), eval_n)
            pq.write_table(pa.table(cols), f"{dirs['steps']}/{tid}-e{e:04d}.parquet")
            it = np.tile(np.arange(1, iters + 1), traced)
            tstep = np.repeat(s0 + per_epoch * np.arange(1, traced + 1), iters)
            decay = np.exp(-it * (0.02 if diverged else 0.08)) * rng.uniform(0.5, 2, traced * iters)
            tr = {
                "trial_id": [tid] * (traced * iters),
                "step": tstep,
                "iteration": it,
                "z_residual": decay * 1.1,
                "mu_residual": decay * 0.9,
                "x_step": decay * 0.5,
                "residual": decay,
                "objective": -2.0 - np.log1p(it) + rng.normal(0, 0.01, traced * iters),
            }
            pq.write_table(pa.table(tr), f"{dirs['traces']}/{tid}-e{e:04d}.parquet")
            total["steps"] += steps + 1
            total["traces"] += traced * iters
            n_files += 2
        n_files += 2
    return {"parquet_files": trials * (1 + 2 * epochs), "rows": total}


def _measure(kind: str, root: str, out: str, rev: str | None) -> None:
    """In a child process: do ``kind`` once; print wall seconds and peak RSS as JSON."""
    t0 = time.perf_counter()
    if kind == "plain":
        import pyarrow.parquet as pq

        rows = {t: pq.read_table(f"{root}/{t}").num_rows for t in ("trials", "steps", "traces")}
    elif kind == "cli":  # the console script as a user runs it (its own process: RUSAGE_CHILDREN)
        import resource

        cmd = [sys.executable, "-m", "orchestrator.cli", "analyze", root, "--name", SWEEP, "--out", out]
        cmd.append("--json")
        code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, check=False).returncode
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({"kind": kind, "wall_s": wall, "peak_mb": peak_mb, "exit": code}))
        return
    else:
        import contextlib
        import io

        if kind == "baseline":
            import importlib.util

            src = subprocess.run(
                ["git", "-C", ROOT, "show", f"{rev}:orchestrator/analyze.py"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            path = os.path.join(out, "_baseline_analyze.py")
            with open(path, "w") as f:
                f.write(src)
            spec = importlib.util.spec_from_file_location("_baseline_analyze", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            call = lambda: mod.run(root, SWEEP, out, as_json=True)  # noqa: E731
        else:
            from orchestrator.analyze import run

            call = lambda: run(root, SWEEP, out, as_json=True)  # noqa: E731
        with contextlib.redirect_stdout(io.StringIO()) as buf:
            code = call()
        rows = {"exit": code, "json_chars": len(buf.getvalue())}
    import resource

    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "wall_s": wall, "peak_mb": peak_mb, **rows}))


def _child(kind: str, root: str, out: str, rev: str | None) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", kind, "--root", root, "--out", out]
    if rev:
        cmd += ["--baseline-rev", rev]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{res.stderr[-3000:]}")
    fig = json.loads(res.stdout.strip().splitlines()[-1])
    fig["process_s"] = time.perf_counter() - t0
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50, help="training step rows per epoch (plus one eval row)")
    ap.add_argument("--traced", type=int, default=10, help="traced steps per epoch")
    ap.add_argument("--iters", type=int, default=100, help="solver iterations per trace")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--root", default=None, help="an existing generated sweep (default: generate one in a temp dir)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated sweep")
    ap.add_argument(
        "--baseline-rev", default=None, help="also time orchestrator/analyze.py at this git revision"
    )
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--measure", choices=("plain", "analyze", "cli", "baseline"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        _measure(args.measure, args.root, args.out, args.baseline_rev)
        return 0
    tmp = tempfile.mkdtemp(prefix="analyze-scale-")
    root = args.root or os.path.join(tmp, "results")
    sizes = {}
    try:
        if not args.root:
            t0 = time.perf_counter()
            sizes = generate(root, args.trials, args.epochs, args.steps, args.traced, args.iters)
            print(f"generated {sizes} in {time.perf_counter() - t0:.1f} s under {root}", flush=True)
        out = os.path.join(tmp, "out")
        os.makedirs(out, exist_ok=True)
        _child("plain", root, out, None)  # warm the page cache for everyone
        kinds = ["plain", "analyze", "cli"] + (["baseline"] if args.baseline_rev else [])
        figs: dict[str, list[dict]] = {k: [] for k in kinds}
        for rep in range(args.reps):
            for k in kinds:
                figs[k].append(_child(k, root, out, args.baseline_rev))
                f = figs[k][-1]
                print(
                    f"rep {rep + 1} {k:9s} wall {f['wall_s']:7.2f} s  process {f['process_s']:7.2f} s  "
                    f"peak {f['peak_mb']:7.0f} MB",
                    flush=True,
                )
        med = {
            k: {m: statistics.median(f[m] for f in v) for m in ("wall_s", "process_s", "peak_mb")}
            for k, v in figs.items()
        }
        print(f"\nmedians of {args.reps} (warm page cache; {os.cpu_count()} CPUs):")
        print(f"{'':10s} {'wall s':>8s} {'process s':>10s} {'peak MB':>8s}")
        for k, m in med.items():
            print(f"{k:10s} {m['wall_s']:8.2f} {m['process_s']:10.2f} {m['peak_mb']:8.0f}")
        ratio = med["analyze"]["wall_s"] / med["plain"]["wall_s"]
        print(
            f"analyze / plain read: {ratio:.2f} (target <= 0.5); analyze peak "
            f"{med['analyze']['peak_mb']:.0f} MB (target < 1536)"
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "sizes": sizes, "runs": figs, "medians": med}, f, indent=1)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
