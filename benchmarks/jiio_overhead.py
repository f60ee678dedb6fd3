"""Micro-benchmark: the cost of one JIIO iteration against one f evaluation plus one VJP.

One iteration of the augmented DEQ must cost one evaluation of the cell f and one
backward pass through it (plus the loss gradient). Whatever it costs beyond that is
solver overhead (Anderson's least squares, residuals, bookkeeping). This script times,
on the same MDEQ cell and batch, interleaved and repeated (median):

- ``f+vjp``: ``f(z, x)`` and ``autograd.grad`` of ``<f(z, x), mu> + loss(z)`` w.r.t. (z, x);
- ``jiio/<solver>``: a ``jiio_solve`` of N iterations (no early stop), divided by N.

Run: ``python benchmarks/jiio_overhead.py [--batch 64] [--size tiny|paper] [--device cuda]
[--json]``. The figures in docs/benchmarks.md come from this command.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from jiio_core import ClassifierHead, JIIOConfig, MDEQCell, MDEQConfig, jiio_solve, l2_ball


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--size",
        choices=("tiny", "paper"),
        default="tiny",
        help="tiny: MDEQConfig.tiny() at 16x16; paper: the paper's MNIST MDEQ at 28x28",
    )
    p.add_argument("--iters", type=int, default=30, help="JIIO iterations per timed solve")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.batch < 1 or args.iters < 1 or args.reps < 1:
        p.error("--batch, --iters and --reps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")

    torch.manual_seed(0)
    cfg = MDEQConfig.tiny() if args.size == "tiny" else MDEQConfig.paper_mnist()
    cell, head = MDEQCell(cfg).to(device), ClassifierHead(cfg).to(device)
    r = cfg.resolutions[0]
    x = torch.rand(args.batch, cfg.in_channels, r, r, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def loss(z: torch.Tensor) -> torch.Tensor:  # adversarial inner objective: maximise CE
        return -F.cross_entropy(head(z), y, reduction="none")

    z = torch.randn(args.batch, cfg.z_dim, device=device) * 0.1
    mu = torch.randn_like(z) * 0.01

    def f_vjp() -> None:
        for _ in range(args.iters):
            z_ = z.detach().requires_grad_(True)
            x_ = x.detach().requires_grad_(True)
            fz = cell(z_, x_)
            torch.autograd.grad((fz * mu).sum() + loss(z_).sum(), (z_, x_))

    proj = l2_ball(x, 1.0)
    with torch.no_grad():  # one cell step from zero (init="cell_step"), computed once, outside the timing
        z0 = cell(cell.init_z(x), x)
    base = JIIOConfig.paper("mnist_adversarial").replace(max_iter=args.iters)
    variants = {
        "jiio/anderson(m=20,I)": base,
        "jiio/anderson(m=5,II)": base.replace(anderson_m=5, anderson_type="II"),
        "jiio/fixed_point": base.replace(solver="fixed_point"),
    }

    def run_jiio(c: JIIOConfig):
        def go() -> None:
            with torch.no_grad():
                res = jiio_solve(cell, loss, x, z0=z0, config=c, project=proj)
            assert res.iterations == args.iters

        return go

    f_vjp()  # warm-up (allocator, kernels)
    for c in variants.values():
        run_jiio(c)()
    samples: dict[str, list[float]] = {"f+vjp": [], **{k: [] for k in variants}}
    for _ in range(args.reps):  # interleaved: drift hits every variant alike
        samples["f+vjp"].append(_timed(f_vjp, device) / args.iters)
        for name, c in variants.items():
            samples[name].append(_timed(run_jiio(c), device) / args.iters)
    med = {k: statistics.median(v) for k, v in samples.items()}
    out = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "iters": args.iters,
        "reps": args.reps,
        "ms_per_iter": {k: round(v * 1e3, 4) for k, v in med.items()},
        "overhead_pct": {k: round((v / med["f+vjp"] - 1) * 100, 2) for k, v in med.items() if k != "f+vjp"},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"device {out['device']} | torch {out['torch']} | {args.size} MDEQ | batch {args.batch} "
            f"| {args.iters} iterations x {args.reps} reps (median)"
        )
        print(f"{'variant':26s} {'ms/iter':>10s} {'overhead':>10s}")
        for k, v in out["ms_per_iter"].items():
            ov = out["overhead_pct"].get(k)
            print(f"{k:26s} {v:10.3f} {'' if ov is None else f'{ov:+.1f}%':>10s}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
