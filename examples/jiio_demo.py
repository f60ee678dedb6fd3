"""Demo: JIIO against PGD on a small MDEQ classifier of scikit-learn's digits (CPU, ~1 min).

Trains a tiny MDEQ (GroupNorm, 16x16 digits) for a few epochs with a plain DEQ, then
computes L2 adversarial examples (eps = 1) for one test batch two ways, side by side:
PGD-20 (each step a forward and an implicit backward DEQ solve) and JIIO with the paper
code's MNIST settings (one augmented fixed point over z, mu, x). Prints the JIIO
convergence trace, the time of each attack and the accuracy under each.

Run: ``python examples/jiio_demo.py [--epochs 3] [--batch 64] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from jiio_core import (
    DEQ,
    ClassifierHead,
    DEQConfig,
    JIIOConfig,
    MDEQCell,
    MDEQConfig,
    jiio_solve,
    l2_ball,
    pgd_attack,
)
from orchestrator.data import DataConfig, load_dataset, make_loader


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="JIIO vs PGD on a tiny MDEQ digits classifier")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eps", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 0 or args.batch < 1 or args.eps < 0:
        p.error("--epochs must be >= 0, --batch >= 1, --eps >= 0")
    torch.manual_seed(args.seed)
    data = load_dataset(DataConfig(dataset="digits", seed=args.seed))
    cfg = MDEQConfig.tiny()
    cell, head = MDEQCell(cfg), ClassifierHead(cfg, num_classes=data.num_classes)
    deq = DEQ(cell, DEQConfig(max_iter=30, tol=1e-3, backward_max_iter=20))
    opt = torch.optim.Adam([*cell.parameters(), *head.parameters()], lr=5e-3)

    print(f"training a tiny MDEQ on digits ({len(data.train)} images) for {args.epochs} epochs")
    for epoch in range(args.epochs):
        t0, total, correct, iters = time.perf_counter(), 0, 0, []
        for x, y in make_loader(data.train, args.batch, shuffle=True, seed=args.seed + epoch):
            z, info = deq(x)
            logits = head(z)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += len(y)
            correct += int((logits.argmax(1) == y).sum())
            iters.append(info.iterations)
        print(
            f"  epoch {epoch + 1}: train acc {correct / total:.3f}, "
            f"mean DEQ iterations {sum(iters) / len(iters):.1f}, {time.perf_counter() - t0:.1f}s"
        )

    x, y = next(iter(make_loader(data.test, args.batch, shuffle=False)))

    def classify(inp: torch.Tensor) -> torch.Tensor:
        return head(deq(inp)[0])

    def acc(inp: torch.Tensor) -> float:
        with torch.no_grad():
            return float((classify(inp).argmax(1) == y).float().mean())

    def neg_ce(z: torch.Tensor) -> torch.Tensor:  # JIIO minimises: the negated task loss
        return -F.cross_entropy(head(z), y, reduction="none")

    for p_ in [*cell.parameters(), *head.parameters()]:
        p_.requires_grad_(False)
    t0 = time.perf_counter()
    x_pgd, _ = pgd_attack(classify, x, y, eps=args.eps, step_size=0.6, steps=20)
    t_pgd = time.perf_counter() - t0
    jcfg = JIIOConfig.paper("mnist_adversarial")
    t0 = time.perf_counter()
    with torch.no_grad():
        res = jiio_solve(cell, neg_ce, x, config=jcfg, project=l2_ball(x, args.eps))
    t_jiio = time.perf_counter() - t0

    print(f"\nJIIO, paper MNIST settings ({jcfg.max_iter} iterations, Anderson m={jcfg.anderson_m}):")
    print(f"  {'iter':>5s} {'|f(z)-z|':>10s} {'|mu res|':>10s} {'|dx|':>10s} {'rel res':>10s} {'CE':>8s}")
    tr = res.trace
    for k in [*range(0, res.iterations, 10), res.iterations - 1]:
        print(
            f"  {k + 1:5d} {float(tr['z_residual'][k].mean()):10.2e} "
            f"{float(tr['mu_residual'][k].mean()):10.2e} {float(tr['x_step'][k].mean()):10.2e} "
            f"{float(tr['residual'][k].mean()):10.2e} {-float(tr['objective'][k].mean()):8.3f}"
        )
    print(f"  max |x - x0| = {float((res.x - x).flatten(1).norm(dim=1).max()):.4f} (eps {args.eps})")
    print(f"\n{'':12s} {'time (s)':>9s} {'accuracy':>9s}")
    print(f"{'clean':12s} {'':>9s} {acc(x):9.3f}")
    print(f"{'PGD-20':12s} {t_pgd:9.2f} {acc(x_pgd):9.3f}")
    print(f"{'JIIO-80':12s} {t_jiio:9.2f} {acc(res.x):9.3f}")
    print(f"JIIO speed-up over PGD-20: {t_pgd / t_jiio:.2f}x")


if __name__ == "__main__":
    main()
