"""Micro-benchmark: the cost of one JIIO iteration against one f evaluation plus one VJP.

One iteration of the augmented DEQ must cost one evaluation of the cell f and one
backward pass through it (plus the loss gradient). Whatever it costs beyond that is
solver overhead (Anderson's least squares, residuals, bookkeeping). This script times,
on the same MDEQ cell and batch, interleaved and repeated (median):

- ``f+vjp``: ``f(z, x)`` and ``autograd.grad`` of ``<f(z, x), mu> + loss(z)`` w.r.t. (z, x);
- ``jiio/<solver>``: a ``jiio_solve`` of N iterations (no early stop), divided by N;
  ``+graph``: the same with ``cuda_graph=True`` (CUDA only).

Each timing is taken twice: wall clock and the process's CPU time (``time.process_time``;
on a CPU shared with other jobs the CPU time is what the work cost, the wall time also
counts the waits for a core). The load average is read before and after.

``--mixer`` also times Anderson's step alone, on a full history (n = m) of the cell's
state size, against the memory-traffic floor: reading the m-deep history twice
(``2 m D B`` values: update one Gram row, mix), timed here as two batched products that
read ``G`` and ``Y`` once each. It reports the bytes each step moves by the model of
``jiio_core.mixers.AndersonMixer`` (type II: ``2 m D B`` reads; type I: ``3 m D B``,
the mix re-reads ``Y``) and the effective bandwidth.

Run: ``python benchmarks/jiio_overhead.py [--batch 64] [--size tiny|paper] [--iters 80]
[--device cuda] [--threads N] [--mixer] [--json]``. The figures in docs/benchmarks.md come
from this command.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from jiio_core import ClassifierHead, JIIOConfig, MDEQCell, MDEQConfig, jiio_solve, l2_ball
from jiio_core.mixers import AndersonMixer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _history_bytes(kind: str, m: int, D: int, B: int, itemsize: int, image_in_place: bool) -> dict[str, int]:
    """Bytes one steady-state AndersonMixer step moves (the model in its docstring)."""
    reads = (3 if kind == "I" else 2) * m * D  # history passes
    reads += 2 * D  # g = g(x) - x
    writes = D + D  # g into G; the output
    if not image_in_place:  # g(x) copied into Y (jiio_solve writes it there directly)
        reads, writes = reads + D, writes + D
    if kind == "I":  # x copied next to the residuals, read once more by the G product
        reads, writes = reads + 2 * D, writes + D
    return {"read": reads * B * itemsize, "written": writes * B * itemsize}


def mixer_bench(
    B: int,
    D: int,
    m: int,
    kind: str,
    reps: int,
    device: torch.device,
    dtype: torch.dtype,
    chunk: int | None = None,
) -> dict:
    """One Anderson step at n = m against two reads of the history (the floor)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    extra = {} if chunk is None else {"chunk": chunk}
    mixer = AndersonMixer(m=m, lam=0.0 if kind == "I" else 1e-5, kind=kind, **extra)
    active = torch.ones(B, dtype=torch.bool, device=device)
    x = torch.randn(B, D, generator=gen, dtype=dtype).to(device)
    steps = [torch.randn(B, D, generator=gen, dtype=dtype).to(device) for _ in range(3)]
    with torch.no_grad():
        for i in range(m):  # fill the history
            x = mixer.step(x, x + 0.5 * steps[i % 3], active).clone()
        Y = torch.randn(B, m, D, dtype=dtype, device=device)
        G = torch.randn(B, m, D, dtype=dtype, device=device)
        v = torch.randn(B, 1, D, dtype=dtype, device=device)
        has_image_out = hasattr(mixer, "image_out")

        def one_step() -> None:
            gx = x + 0.5 * steps[mixer.k % 3]
            out = mixer.image_out(x) if has_image_out else None
            if out is not None:
                out.copy_(gx)
                gx = out
            mixer.step(x, gx, active)

        def floor() -> None:  # read G and Y once each
            torch.bmm(v, G.transpose(1, 2))
            torch.bmm(v, Y.transpose(1, 2))

        def prep() -> None:  # what one_step does besides the step (not counted)
            gx = x + 0.5 * steps[mixer.k % 3]
            out = mixer.image_out(x) if has_image_out else None
            if out is not None:
                out.copy_(gx)

        one_step(), floor(), prep()
        t_step, t_floor, t_prep = [], [], []
        for _ in range(reps):
            t_step.append(_timed(one_step, device)[1 if device.type == "cpu" else 0])
            t_floor.append(_timed(floor, device)[1 if device.type == "cpu" else 0])
            t_prep.append(_timed(prep, device)[1 if device.type == "cpu" else 0])
    itemsize = torch.empty((), dtype=dtype).element_size()
    step = max(statistics.median(t_step) - statistics.median(t_prep), 1e-9)
    fl = statistics.median(t_floor)
    new_layout = hasattr(mixer, "chunk_size")  # the model describes this version's mixer
    moved = _history_bytes(kind, m, D, B, itemsize, has_image_out) if new_layout else None
    floor_bytes = 2 * m * D * B * itemsize
    total = moved["read"] + moved["written"] if moved else None
    return {
        "kind": kind,
        "m": m,
        "chunk": mixer.chunk_size(x) if hasattr(mixer, "chunk_size") else B,
        "step_ms": round(step * 1e3, 3),
        "floor_ms": round(fl * 1e3, 3),
        "step_over_floor": round(step / fl, 3),
        "bytes_read": moved and moved["read"],
        "bytes_written": moved and moved["written"],
        "floor_bytes": floor_bytes,
        "bytes_over_floor": total and round(total / floor_bytes, 3),
        "floor_GBps": round(floor_bytes / fl / 1e9, 2),
        "step_GBps": total and round(total / step / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--size",
        choices=("tiny", "paper"),
        default="tiny",
        help="tiny: MDEQConfig.tiny() at 16x16; paper: the paper's MNIST MDEQ at 28x28",
    )
    p.add_argument(
        "--iters", type=int, default=80, help="JIIO iterations per timed solve (80: the paper's T)"
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    p.add_argument("--mixer", action="store_true", help="also time Anderson's step alone against the floor")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.batch < 1 or args.iters < 1 or args.reps < 1:
        p.error("--batch, --iters and --reps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")
    load_before = _loadavg()

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
    variants: dict[str, tuple[JIIOConfig, dict]] = {
        "jiio/anderson(m=20,I)": (base, {}),
        "jiio/anderson(m=5,II)": (base.replace(anderson_m=5, anderson_type="II"), {}),
        "jiio/fixed_point": (base.replace(solver="fixed_point"), {}),
    }
    if device.type == "cuda" and "cuda_graph" in inspect.signature(jiio_solve).parameters:
        variants["jiio/anderson(m=20,I)+graph"] = (base, {"cuda_graph": True})
        variants["jiio/fixed_point+graph"] = (base.replace(solver="fixed_point"), {"cuda_graph": True})

    def run_jiio(c: JIIOConfig, kw: dict):
        def go() -> None:
            with torch.no_grad():
                res = jiio_solve(cell, loss, x, z0=z0, config=c, project=proj, **kw)
            assert res.iterations == args.iters

        return go

    f_vjp()  # warm-up (allocator, kernels)
    for c, kw in variants.values():
        run_jiio(c, kw)()
    samples: dict[str, list[tuple[float, float]]] = {"f+vjp": [], **{k: [] for k in variants}}
    for _ in range(args.reps):  # interleaved: drift hits every variant alike
        samples["f+vjp"].append(_timed(f_vjp, device))
        for name, (c, kw) in variants.items():
            samples[name].append(_timed(run_jiio(c, kw), device))
    per_iter = {k: [(w / args.iters, cpu / args.iters) for w, cpu in v] for k, v in samples.items()}
    wall = {k: statistics.median(w for w, _ in v) for k, v in per_iter.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in per_iter.items()}
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
        "state_per_sample": 2 * cfg.z_dim + x[0].numel(),
        "ms_per_iter": {k: round(v * 1e3, 4) for k, v in wall.items()},
        "overhead_pct": {k: round((v / wall["f+vjp"] - 1) * 100, 2) for k, v in wall.items() if k != "f+vjp"},
        "cpu_ms_per_iter": {k: round(v * 1e3, 4) for k, v in cpu.items()},
        "cpu_overhead_pct": {
            k: round((v / cpu["f+vjp"] - 1) * 100, 2) for k, v in cpu.items() if k != "f+vjp"
        },
        "wall_ms_samples": {k: [round(w * 1e3, 3) for w, _ in v] for k, v in per_iter.items()},
        "cpu_ms_samples": {k: [round(c * 1e3, 3) for _, c in v] for k, v in per_iter.items()},
    }
    if args.mixer:
        D = out["state_per_sample"]
        cases: list[tuple[int, str, int | None]] = [(20, "I", None), (5, "II", None), (20, "II", None)]
        if "chunk" in inspect.signature(AndersonMixer).parameters:  # this version can chunk the batch
            cases.insert(1, (20, "I", max(1, args.batch // 16)))
        out["mixer"] = [
            mixer_bench(args.batch, D, m, kind, max(args.reps, 5), device, torch.float32, chunk)
            for m, kind, chunk in cases
        ]
    out["loadavg_before"], out["loadavg_after"] = load_before, _loadavg()
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"device {out['device']} | torch {out['torch']} | {args.size} MDEQ | batch {args.batch} "
            f"| {out['threads']} threads | {args.iters} iterations x {args.reps} reps (median)"
        )
        print(f"load average before {out['loadavg_before']} after {out['loadavg_after']}")
        print(f"{'variant':30s} {'wall ms':>9s} {'overhead':>9s} {'cpu ms':>9s} {'overhead':>9s}")
        for k, v in out["ms_per_iter"].items():
            ov, cv = out["overhead_pct"].get(k), out["cpu_overhead_pct"].get(k)
            print(
                f"{k:30s} {v:9.2f} {'' if ov is None else f'{ov:+.1f}%':>9s} "
                f"{out['cpu_ms_per_iter'][k]:9.2f} {'' if cv is None else f'{cv:+.1f}%':>9s}"
            )
        for mx in out.get("mixer", []):
            print(
                f"anderson step m={mx['m']} {mx['kind']:2s} (n=m, chunk {mx['chunk']}): "
                f"{mx['step_ms']:.2f} ms, floor (2 reads) {mx['floor_ms']:.2f} ms ({mx['floor_GBps']} GB/s) "
                f"-> x{mx['step_over_floor']}; "
                + (
                    f"bytes {mx['bytes_read'] + mx['bytes_written']:,} = x{mx['bytes_over_floor']} floor"
                    if mx["bytes_read"]
                    else "(no bytes model for this mixer)"
                )
            )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
