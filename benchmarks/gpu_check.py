"""The Python steps of ``benchmarks/gpu_check.sh`` (see there): the CUDA graph's capture and
replay against the eager path, the attack bench with the strong baselines on synthetic
MNIST-sized data, and the assembly of one JSON from every step's output.

    python benchmarks/gpu_check.py graph --device cuda [--quick]
    python benchmarks/gpu_check.py bench --device cuda [--quick]
    python benchmarks/gpu_check.py assemble DIR OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any

#: the steps of gpu_check.sh, in order; each writes <step>.out (stdout), .err, .rc, .seconds
STEPS = ("env", "cuda_tests", "graph", "overhead", "bench")


def synthetic_mnist(n_train: int, n_test: int, seed: int = 0) -> Any:
    """MNIST-sized data (1 x 28 x 28 in [0, 1], 10 classes): a smooth random prototype per
    class plus noise, so that a classifier can learn it in a few steps. No files needed."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    from orchestrator.data import DatasetSplits

    gen = torch.Generator().manual_seed(seed)
    protos = F.interpolate(
        torch.rand(10, 1, 7, 7, generator=gen), size=28, mode="bilinear", align_corners=False
    )

    def split(n: int) -> TensorDataset:
        y = torch.randint(0, 10, (n,), generator=gen)
        x = (protos[y] + 0.25 * torch.randn(n, 1, 28, 28, generator=gen)).clamp(0, 1)
        return TensorDataset(x, y)

    return DatasetSplits(split(n_train), split(64), split(n_test), 10, 1, 28, "synthetic-mnist")


def graph(args: argparse.Namespace) -> dict[str, Any]:
    """jiio_solve(cuda_graph=True) on the paper-width MDEQ at 28x28, twice (capture, replay),
    against the eager path: objective, iterate difference and time of each."""
    import torch
    import torch.nn.functional as F

    from jiio_core import ClassifierHead, JIIOConfig, MDEQCell, jiio_solve, l2_ball
    from orchestrator.tasks.model_sizes import mdeq_config

    device = torch.device(args.device)
    torch.manual_seed(0)
    mcfg = mdeq_config("tiny" if args.quick else "paper", 28, 1)
    cell, head = MDEQCell(mcfg).to(device), ClassifierHead(mcfg).to(device)
    for p in [*cell.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    B = 8 if args.quick else 64
    x, y = torch.rand(B, 1, 28, 28, device=device), torch.randint(0, 10, (B,), device=device)
    cfg = JIIOConfig.paper("mnist_adversarial").replace(max_iter=10 if args.quick else 80)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(head(z), y, reduction="none")

    def run(graphed: bool) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        res = jiio_solve(cell, loss, x, config=cfg, project=l2_ball(x, 1.0), cuda_graph=graphed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, res

    out: dict[str, Any] = {
        "device": str(device),
        "batch": B,
        "iterations": cfg.max_iter,
        "size": mcfg.channels,
    }
    t_eager, eager = run(False)
    out["eager_s"], out["eager_objective"] = t_eager, float(eager.objective.mean())
    try:
        t1, first = run(True)  # capture (and replay)
        t2, second = run(True)  # a second solve: capture again, replay
    except (ValueError, RuntimeError) as err:
        out["graph"] = f"not run: {type(err).__name__}: {str(err).splitlines()[0]}"
        return out
    out.update(
        graph="captured and replayed",
        graph_first_s=t1,
        graph_second_s=t2,
        graph_objective=float(second.objective.mean()),
        objective_rel_diff=abs(float(second.objective.mean()) - float(eager.objective.mean()))
        / max(1e-12, abs(float(eager.objective.mean()))),
        x_max_abs_diff=float((second.x - eager.x).abs().max()),
        replays_agree=bool(torch.equal(first.x, second.x)),
    )
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """``jiio bench attack`` with the strong baselines on synthetic MNIST-sized data."""
    from orchestrator import cli
    from orchestrator.bench import attack

    splits = synthetic_mnist(512 if args.quick else 4096, 64 if args.quick else 512)
    attack.load_data = lambda _args: splits  # the bench's data: synthetic, no files
    argv = ["bench", "attack", "--device", args.device, "--plot", "", "--quiet"]
    if args.quick:
        argv += ["--size", "tiny", "--train-steps", "5", "--batch", "8", "--samples", "16", "--reps", "1"]
        argv += [
            "--pgd-steps",
            "3",
            "--jiio-iters",
            "6",
            "--baselines",
            "jfb,ift-4",
            "--step-sizes",
            "0.6,1.2",
        ]
    else:
        argv += [
            "--size",
            "paper",
            "--train-steps",
            "100",
            "--batch",
            "64",
            "--samples",
            "192",
            "--reps",
            "2",
        ]
    parsed = cli.build_parser(only="bench").parse_args(argv)
    out = parsed.bench_run(parsed)
    keep = (
        "device",
        "torch",
        "config",
        "model",
        "rows",
        "baseline_rows",
        "targets",
        "speed_ratio_vs_fastest_baseline",
        "speedup",
        "speedup_ci",
        "within_eps",
        "load_average",
    )
    out["config"]["dataset"] = splits.name  # not the bench's --dataset default: its data was replaced
    return {k: out[k] for k in keep if k in out}


def _junit(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{c.get('classname')}::{c.get('name')}"
        for c in suite.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": failed,
    }


def assemble(directory: str, out_path: str) -> dict[str, Any]:
    """One JSON from the steps' files: rc, seconds, parsed output (JSON when it is) and the
    stderr's last lines of each step."""

    def read(name: str) -> str | None:
        path = os.path.join(directory, name)
        return open(path).read() if os.path.exists(path) else None

    steps: dict[str, Any] = {}
    for step in STEPS:
        rc, secs, text, err = (
            read(f"{step}.rc"),
            read(f"{step}.seconds"),
            read(f"{step}.out"),
            read(f"{step}.err"),
        )
        if rc is None:
            steps[step] = {"ran": False}
            continue
        entry: dict[str, Any] = {"ran": True, "rc": int(rc.strip() or -1), "seconds": float(secs or "nan")}
        entry["timed_out"] = entry["rc"] in (124, 137)
        lines = (text or "").strip().splitlines()
        try:
            entry["result"] = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            entry["result"] = None
            entry["stdout_tail"] = lines[-20:]
        entry["stderr_tail"] = (err or "").strip().splitlines()[-10:]
        steps[step] = entry
    steps["cuda_tests"]["junit"] = _junit(os.path.join(directory, "cuda_tests.xml"))
    meta = json.loads(read("meta.json") or "{}")
    ok = all(s.get("ran") and s.get("rc") == 0 for s in steps.values())
    out = {**meta, "ok": ok, "steps": steps}
    with open(out_path, "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("graph", "bench"):
        s = sub.add_parser(name)
        s.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
        s.add_argument("--quick", action="store_true", help="small sizes, seconds not minutes")
    a = sub.add_parser("assemble")
    a.add_argument("directory")
    a.add_argument("out")
    args = p.parse_args(argv)
    if args.what == "assemble":
        out = assemble(args.directory, args.out)
        print(json.dumps({"ok": out["ok"], "out": args.out}))
        return 0
    import torch

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    result = graph(args) if args.what == "graph" else bench(args)
    from orchestrator.bench.report import json_safe

    print(json.dumps(json_safe(result), allow_nan=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
