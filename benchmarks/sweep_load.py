"""Load: a sweep of many short solve trials, measured from inside its driver.

Runs the ``sweeps/solver.py`` sweep (kind ``"solve"``: JIIO inner solves on one fixed
trained model) with its ``--smoke`` settings and a tiny ``max_iter`` range, so that each
trial is as short as the machinery allows, on a fresh local Ray (``ray.init(address="local",
num_cpus=2)``, even when another is running), in this process: this process *is* the
sweep's driver (``orchestrator.driver.sweep.run_sweep``).
A background thread samples, every ``--sample-s`` seconds:

- the driver's resident memory (``VmRSS`` of ``/proc/self/status``; ``VmHWM`` too) and
  that of its descendants (Ray's GCS, raylet, workers; summed), and its open file
  descriptors (``/proc/self/fd``);
- how many trials are finished (files under ``trials/sweep=NAME/``),

and records them when 100 and when all ``--trials`` trials are finished (and every
``--every`` trials, for the trend). After the sweep it measures what a ``--resume`` of
the finished sweep does before its first new trial (``clean_tmp``, the footer check of
``steps``/``traces``, ``ResultStore.read``/``records``, ``check_resume``, ``plan_run``,
``write_meta``, ``make_searcher``, which tells Optuna every finished trial), in this
process, and then runs ``--resume --trials N+1`` as a fresh driver process, timed to
its end.

    python benchmarks/sweep_load.py --trials 20            # a quick check, about a minute
    python benchmarks/sweep_load.py --trials 500 --json out.json

Results go to a new temporary directory unless ``--storage DIR`` is given (a new or
empty one: the sweep must start from nothing). The fixed model is trained once in a
child process (so the driver's memory is the sweep's, not the training's) and kept in
the storage, under ``models/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

T_PROCESS = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MIB = 1024 * 1024
TASK, DATASET = "adversarial", "digits"
MAX_ITER = (2, 4)  # the searched range of iterations of each trial's inner solve (tiny on purpose)


# --- the sweep under test ----------------------------------------------------------------
def solver_spec() -> Any:
    """``SPEC`` of ``sweeps/solver.py``, loaded from its file: ``sweeps/`` holds scripts, not an
    installed package, so it is not importable from any directory."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweeps_solver", os.path.join(ROOT, "sweeps", "solver.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SPEC


def solver_args(storage: str, trials: int) -> argparse.Namespace:
    """What ``sweeps/solver.py --smoke`` parses to, for SPEC.fixed."""
    return argparse.Namespace(
        task=TASK,
        dataset=DATASET,
        data_root=None,
        seed=0,
        model_size=None,
        epochs=None,
        smoke=True,
        storage=storage,
        trials=trials,
        checkpoint=None,
    )


def make_config(storage: str, name: str, trials: int, checkpoint: str, resume: bool):
    """The SweepConfig of ``sweeps/solver.py --smoke`` with ``max_iter`` in ``MAX_ITER``,
    no enqueued paper point (80 iterations: not a short trial), two trials at once."""
    from orchestrator.driver.sweep import Dim, SweepConfig

    SPEC = solver_spec()
    args = solver_args(storage, trials)
    space = dict(SPEC.space(TASK))
    space["max_iter"] = Dim("int", *MAX_ITER)
    metrics, modes = SPEC.objective(TASK)
    return SweepConfig(
        name=name,
        space=space,
        metrics=metrics,
        modes=modes,
        fixed=SPEC.fixed(args),
        data={"dataset": DATASET, "data_root": None, "seed": 0},
        storage=storage,
        trials=trials,
        enqueue=(),
        seed=0,
        resume=resume,
        cpus_per_trial=1.0,
        gpus_per_trial=0.0,
        max_concurrent=2,
        scheduler=SPEC.scheduler,
        kind=SPEC.kind,
        checkpoint=checkpoint,
        resume_command="python benchmarks/sweep_load.py --phase resume ...",
    )


def train_model(storage: str, name: str) -> str:
    """The fixed model (``ensure_checkpoint`` with the smoke settings), trained in a child process."""
    code = (
        "import sys;"  # run in ROOT (cwd): benchmarks/ and sweeps/ import from there
        "from benchmarks.sweep_load import solver_args, solver_spec, TASK, DATASET;"
        "SPEC = solver_spec();"
        "from orchestrator.driver.fixed_model import ensure_checkpoint;"
        "a = solver_args(sys.argv[2], 1);"
        "print(ensure_checkpoint(None, sys.argv[2], sys.argv[3], SPEC.fixed(a),"
        " {'dataset': DATASET, 'data_root': None, 'seed': 0}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, ROOT, storage, name],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"training the fixed model failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


# --- what the sampling thread reads ------------------------------------------------------
def _status_kib(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (Ray's GCS, raylet, dashboard, workers, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _tree_rss_mib() -> float:
    return sum(_status_kib(p, "VmRSS") for p in _descendants(os.getpid())) / 1024


def _finished(trials_dir: str) -> int:
    try:
        return sum(1 for n in os.listdir(trials_dir) if n.endswith(".parquet") and not n.startswith("."))
    except FileNotFoundError:
        return 0


class Sampler(threading.Thread):
    """Samples the driver every ``period`` s; snapshots at each milestone (finished trials)."""

    def __init__(self, trials_dir: str, milestones: list[int], period: float) -> None:
        super().__init__(daemon=True)
        self.trials_dir, self.period = trials_dir, period
        self.milestones = sorted(set(milestones))
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.peak_rss_kib = 0
        self.peak_fds = 0
        self.samples = 0
        self._halt = threading.Event()
        self.t0 = time.perf_counter()

    def snapshot(self, finished: int) -> dict[str, Any]:
        return {
            "finished": finished,
            "t_s": round(time.perf_counter() - self.t0, 2),
            "rss_mib": round(_status_kib("self", "VmRSS") / 1024, 1),
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),  # max of the samples so far
            "hwm_mib": round(_status_kib("self", "VmHWM") / 1024, 1),  # the kernel's high-water mark
            "fds": _fds(),
            "peak_fds": self.peak_fds,
            "threads": _status_kib("self", "Threads"),
            "ray_tree_rss_mib": round(_tree_rss_mib(), 1),
        }

    def run(self) -> None:
        while not self._halt.is_set():
            self.tick()
            self._halt.wait(self.period)

    def tick(self) -> None:
        self.samples += 1
        self.peak_rss_kib = max(self.peak_rss_kib, _status_kib("self", "VmRSS"))
        self.peak_fds = max(self.peak_fds, _fds())
        n = _finished(self.trials_dir)
        for m in self.milestones:
            if n >= m and m not in self.snapshots:
                self.snapshots[m] = self.snapshot(n)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.tick()  # a last sample: milestones reached just before the sweep returned


# --- warm start: what a --resume does before its first new trial -------------------------
def warm_start(cfg) -> dict[str, float]:
    """Seconds of each step ``orchestrator.driver.sweep._run_locked`` takes on a resume before Tune
    starts (no Ray call: ``max_concurrent`` is set). ``write_meta`` writes the same meta."""
    from orchestrator.driver.search import make_searcher
    from orchestrator.driver.state import check_resume, plan_run, write_meta
    from orchestrator.storage import ResultStore

    out: dict[str, float] = {}

    def timed(key: str, fn):
        t = time.perf_counter()
        value = fn()
        out[key] = time.perf_counter() - t
        return value

    t_all = time.perf_counter()
    store = ResultStore(cfg.storage)
    timed("clean_tmp", store.clean_tmp)
    timed("check_steps_traces", lambda: [store.check(t, cfg.name) for t in ("steps", "traces")])
    trials = timed("read_trials", lambda: store.read("trials", cfg.name, on_corrupt="quarantine"))
    records = timed("records", lambda: store.records(cfg.name))
    timed("check_resume", lambda: check_resume(store, cfg))
    plan = timed("plan_run", lambda: plan_run(trials, records, tuple(cfg.space)))
    timed("write_meta", lambda: write_meta(store, cfg, []))
    remaining = cfg.trials - len(plan.finished)
    timed(
        "make_searcher",
        lambda: make_searcher(
            cfg.name,
            cfg.space,
            cfg.metrics,
            cfg.modes,
            cfg.seed,
            plan.finished,
            plan.resume[: max(remaining, 0)],
            {**plan.started, **dict(plan.resume[max(remaining, 0) :])},
            [],
            cfg.max_concurrent or 2,
        ),
    )
    out["total"] = time.perf_counter() - t_all
    out["rows"] = float(len(trials))
    out["records_n"] = float(len(records))
    out["told_optuna"] = float(len(plan.finished))
    return out


def resume_phase(args: argparse.Namespace) -> int:
    """``--phase resume``: this process is a fresh driver resuming the sweep to ``--trials``."""
    import ray

    from orchestrator.driver.sweep import run_sweep
    from orchestrator.storage import ResultStore

    t_imported = time.perf_counter()
    cfg = make_config(args.storage, args.name, args.trials, args.checkpoint, resume=True)
    before = set(ResultStore(args.storage).keys("trials", args.name))
    ray.init(address="local", num_cpus=2, log_to_driver=False)  # never another engineer's cluster
    t_ray = time.perf_counter()
    t_call = time.time()
    outcome = run_sweep(cfg)
    t_end = time.perf_counter()
    store = ResultStore(args.storage)
    new = [k for k in store.keys("trials", args.name) if k not in before]
    rows = store.read("trials", args.name)
    first_start = rows[rows["trial_id"].isin(new)]["started_at"].min() if new else None
    result = {
        "imports_s": t_imported - T_PROCESS,
        "ray_init_s": t_ray - t_imported,
        "run_sweep_s": t_end - t_ray,
        "to_first_new_trial_s": (float(first_start) - t_call) if first_start is not None else None,
        "process_s": t_end - T_PROCESS,
        "finished": outcome.finished,
        "new_trials": len(new),
        "fds_end": _fds(),
        "rss_end_mib": _status_kib("self", "VmRSS") / 1024,
    }
    ray.shutdown()
    with open(args.json, "w") as f:
        json.dump(result, f)
    return 0


# --- the benchmark ----------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    storage = args.storage or tempfile.mkdtemp(prefix="jiio-load-")
    os.makedirs(storage, exist_ok=True)
    storage = os.path.abspath(storage)
    name = args.name
    trials_dir = os.path.join(storage, "trials", f"sweep={name}")
    if _finished(trials_dir) or os.path.isdir(os.path.join(storage, "pending", f"sweep={name}")):
        raise SystemExit(f"error: {storage} already holds sweep {name!r}: pass a new --storage or --name")
    load_before = os.getloadavg()
    t = time.perf_counter()
    checkpoint = args.checkpoint or train_model(storage, name)
    train_s = time.perf_counter() - t
    print(f"storage {storage}; fixed model {checkpoint} ({train_s:.1f}s)", flush=True)

    import ray

    from orchestrator.driver.sweep import run_sweep
    from orchestrator.storage import ResultStore

    fds_start = _fds()
    rss_start = _status_kib("self", "VmRSS") / 1024
    ray.init(address="local", num_cpus=2, log_to_driver=False)  # never another engineer's cluster
    cfg = make_config(storage, name, args.trials, checkpoint, resume=False)
    mid = 100 if args.trials > 100 else max(1, args.trials // 2)
    marks = [mid, args.trials, *range(args.every, args.trials, args.every)]
    sampler = Sampler(trials_dir, marks, args.sample_s)
    sampler.tick()
    start = sampler.snapshot(0)
    start.update(fds_before_ray=fds_start, rss_before_ray_mib=round(rss_start, 1))
    sampler.start()
    t0 = time.perf_counter()
    outcome = run_sweep(cfg)
    wall = time.perf_counter() - t0
    sampler.stop()
    after = sampler.snapshot(_finished(trials_dir))
    rows = ResultStore(storage).read("trials", name)
    span = float(rows["finished_at"].max() - rows["started_at"].min()) if len(rows) else float("nan")
    busy = float(rows["wall_s"].sum()) if len(rows) else float("nan")
    ray.shutdown()
    after_shutdown = {"fds": _fds(), "rss_mib": round(_status_kib("self", "VmRSS") / 1024, 1)}

    # warm start at N trials, in this (now warm) process: best and median of --warm-repeats
    warm_cfg = make_config(storage, name, args.trials + 1, checkpoint, resume=True)
    warm = [warm_start(warm_cfg) for _ in range(args.warm_repeats)]
    warm_best = {k: min(w[k] for w in warm) for k in warm[0]}
    warm_median = {k: statistics.median(w[k] for w in warm) for k in warm[0]}

    resume: dict[str, Any] | None = None
    if not args.no_resume_run:
        out_json = os.path.join(storage, "resume-phase.json")
        cmd = [
            sys.executable, os.path.abspath(__file__), "--phase", "resume", "--storage", storage,
            "--name", name, "--trials", str(args.trials + 1), "--checkpoint", checkpoint, "--json", out_json,
        ]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        resume_wall = time.perf_counter() - t
        if proc.returncode != 0 or not os.path.exists(out_json):
            resume = {"error": f"rc {proc.returncode}: {proc.stderr[-1500:]}"}
        else:
            with open(out_json) as f:
                resume = {"command_s": resume_wall, **json.load(f)}

    ids = rows["trial_id"].tolist() if len(rows) else []
    disk = {}
    for top in sorted(d for d in os.listdir(storage) if os.path.isdir(os.path.join(storage, d))):
        files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(storage, top)) for f in fs]
        disk[top] = {"files": len(files), "mib": round(sum(os.path.getsize(f) for f in files) / MIB, 2)}
    return {
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv else "", *sys.argv[1:]]),
        "storage": storage,
        "trials": args.trials,
        "max_iter_range": list(MAX_ITER),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "train_model_s": round(train_s, 1),
        "sweep": {
            "wall_s": round(wall, 1),
            "trials_per_min": round(outcome.finished / wall * 60, 2),
            "span_s": round(span, 1),  # first trial start to last trial finish (from Parquet)
            "mean_trial_busy_s": round(busy / max(1, len(rows)), 3),
            "finished": outcome.finished,
            "completed": outcome.completed,
            "errors": outcome.errors,
            "first_error": outcome.first_error,
            "interrupted": outcome.interrupted,
            "rows": len(rows),
            "unique_ids": len(set(ids)),
            "status_counts": rows["status"].value_counts().to_dict() if len(rows) else {},
        },
        "start": start,
        "milestones": {str(k): v for k, v in sorted(sampler.snapshots.items())},
        "after_sweep": after,
        "after_ray_shutdown": after_shutdown,
        "samples": sampler.samples,
        "warm_start_best_s": {k: round(v, 4) for k, v in warm_best.items()},
        "warm_start_median_s": {k: round(v, 4) for k, v in warm_median.items()},
        "resume_run": resume,
        "disk": disk,  # after the resume run
    }


def table(r: dict[str, Any]) -> str:
    s, ms = r["sweep"], r["milestones"]
    mid = [k for k in ms if int(k) != r["trials"]]
    key_mid = "100" if "100" in ms else (mid[len(mid) // 2] if mid else None)
    cols = [("start", r["start"])]
    if key_mid is not None:
        cols.append((f"{key_mid} done", ms[key_mid]))
    if str(r["trials"]) in ms:
        cols.append((f"{r['trials']} done", ms[str(r["trials"])]))
    cols.append(("returned", r["after_sweep"]))
    lines = [f"{'driver':<24}" + "".join(f"{c:>14}" for c, _ in cols)]
    for key, label in (
        ("rss_mib", "RSS MiB"),
        ("peak_rss_mib", "peak RSS MiB (sampled)"),
        ("hwm_mib", "VmHWM MiB"),
        ("fds", "open fds"),
        ("threads", "threads"),
        ("ray_tree_rss_mib", "Ray children RSS MiB"),
    ):
        lines.append(f"{label:<24}" + "".join(f"{v.get(key, ''):>14}" for _, v in cols))
    down = r["after_ray_shutdown"]
    lines.append(f"after ray.shutdown(): fds {down['fds']}, RSS {down['rss_mib']} MiB")
    lines.append("")
    lines.append(
        f"sweep: {s['finished']}/{r['trials']} finished ({s['completed']} completed, {s['errors']} errors), "
        f"wall {s['wall_s']} s, {s['trials_per_min']} trials/min, span {s['span_s']} s, "
        f"mean trial busy {s['mean_trial_busy_s']} s"
    )
    w, wm = r["warm_start_best_s"], r["warm_start_median_s"]
    parts = [k for k in w if k not in ("total", "rows", "records_n", "told_optuna")]
    lines.append(
        f"warm start from Parquet at {int(w['rows'])} rows / {int(w['records_n'])} records "
        f"(best / median of {r.get('warm_repeats', '?')}): total {w['total']:.3f} / {wm['total']:.3f} s"
    )
    lines.append("  " + ", ".join(f"{k} {w[k]:.3f}" for k in parts))
    rr = r["resume_run"]
    if rr and "error" not in rr:
        ttf = rr["to_first_new_trial_s"]
        lines.append(
            f"--resume --trials {r['trials'] + 1} (fresh process): {rr['command_s']:.1f} s to its end "
            f"(imports {rr['imports_s']:.1f}, ray.init {rr['ray_init_s']:.1f}, "
            f"run_sweep {rr['run_sweep_s']:.1f}, "
            f"run_sweep call to the new trial's start {ttf:.1f} s); finished {rr['finished']}"
            if ttf is not None
            else f"--resume run: {rr}"
        )
    elif rr:
        lines.append(f"--resume run failed: {rr['error']}")
    lines.append(
        "disk: "
        + ", ".join(
            f"{k} {v['files']} files {v['mib']} MiB" for k, v in r["disk"].items() if isinstance(v, dict)
        )
    )
    lines.append(f"load average before {r['loadavg_before']}, after {r['loadavg_after']} ({r['cpus']} CPUs)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--storage", default=None, help="a new or empty directory (default: a new temporary one)")
    p.add_argument("--name", default="load")
    p.add_argument("--checkpoint", default=None, help="a trained model (default: train the smoke model once)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--every", type=int, default=50, help="also snapshot every this many finished trials")
    p.add_argument("--sample-s", type=float, default=0.25, help="sampling period of the driver (s)")
    p.add_argument("--warm-repeats", type=int, default=3)
    p.add_argument("--no-resume-run", action="store_true", help="skip the --resume --trials N+1 run")
    p.add_argument("--phase", choices=("main", "resume"), default="main", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trials < 1 or args.every < 1 or args.warm_repeats < 1 or args.sample_s <= 0:
        p.error("--trials, --every, --warm-repeats must be >= 1 and --sample-s > 0")
    if args.phase == "resume":
        return resume_phase(args)
    result = run(args)
    result["warm_repeats"] = args.warm_repeats
    print("\n" + table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
