"""The static-shape JIIO iteration (the body of the CUDA graph) against the eager loop.

``jiio_solve(..., cuda_graph=True)`` replays a captured iteration built from static
buffers, a device-side alpha_x schedule and :class:`StaticAndersonMixer`. The same
iteration runs without a graph on any device (``static_loop(capture=False)``); here, on
the CPU in float64, it must give the eager loop's iterates, trace, kept iterate and
iteration count up to rounding, for every solver and choice it supports. The CUDA tests
(tests/jiio_core/test_cuda.py) compare the captured graph with the eager path on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jiio_core import ClassifierHead, JIIOConfig, MDEQCell, MDEQConfig, jiio_solve, l2_ball
from jiio_core import jiio as jiio_module
from jiio_core import static_iteration as _graph

PAPER = JIIOConfig.paper("mnist_adversarial")
CONFIGS = {
    "paper_I_m20": PAPER.replace(max_iter=60),  # the alpha_x drop at 49, kept iterate by the paper's rule
    "II_m5_ridge": PAPER.replace(max_iter=30, anderson_m=5, anderson_type="II", anderson_lam=1e-5),
    "beta_objective": JIIOConfig(max_iter=30, anderson_m=4, anderson_beta=0.7, select="objective"),
    "fixed_point_residual": JIIOConfig(max_iter=30, solver="fixed_point", select="residual"),
}


def _problem():
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny()
    cell, head = MDEQCell(cfg).double(), ClassifierHead(cfg).double()
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    return cell, (lambda z: -F.cross_entropy(head(z), y, reduction="none")), x


def _solve_static(monkeypatch, linsolve: str, *args, **kwargs):
    monkeypatch.setattr(_graph, "LINSOLVE", linsolve)
    monkeypatch.setattr(
        jiio_module, "_eager_loop", lambda aug, st: _graph.static_loop(aug, st, capture=False)
    )
    try:
        return jiio_solve(*args, **kwargs)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("linsolve", ["lu", "elimination"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_iteration_matches_the_eager_loop(monkeypatch, name, linsolve):
    cfg = CONFIGS[name]
    if cfg.solver != "anderson" and linsolve != "lu":
        pytest.skip("no linear system without Anderson")
    cell, loss, x = _problem()
    with torch.no_grad():
        eager = jiio_solve(cell, loss, x, config=cfg, project=l2_ball(x, 1.0))
        static = _solve_static(monkeypatch, linsolve, cell, loss, x, config=cfg, project=l2_ball(x, 1.0))
    _assert_same(static, eager)


def _assert_same(static, eager, rtol: float = 1e-7, atol: float = 1e-9) -> None:
    assert static.iterations == eager.iterations
    for field in ("x", "z", "mu", "objective", "residual", "mu_residual"):
        a, b = getattr(static, field), getattr(eager, field)
        assert torch.allclose(a, b, rtol=rtol, atol=atol), (field, float((a - b).abs().max()))
    assert torch.equal(static.converged, eager.converged) and torch.equal(static.diverged, eager.diverged)
    for key, want in eager.trace.items():
        assert torch.allclose(static.trace[key], want, rtol=rtol, atol=atol), key


@pytest.mark.parametrize("solver", ["anderson", "fixed_point"])
def test_static_iteration_stops_samples_and_the_loop_like_the_eager_one(monkeypatch, solver):
    """Samples converge at different iterations (per-sample contraction rates): each stops
    when it converges, and the loop ends when all have, at the same iteration."""
    rate = torch.tensor([0.2, 0.35, 0.5, 0.65], dtype=torch.float64)[:, None]
    target = torch.linspace(1.0, 2.0, 4, dtype=torch.float64)[:, None].expand(4, 3)

    def f(z, x):  # z*(x) = x + 1, reached at a per-sample rate
        return rate * z + (1 - rate) * (x + 1.0)

    loss = lambda z: ((z - target) ** 2).sum(1)  # noqa: E731
    x = torch.zeros(4, 3, dtype=torch.float64)
    tol = 1e-9 if solver == "anderson" else 1e-4
    cfg = JIIOConfig(solver=solver, alpha_x=0.1, tol=tol, max_iter=400, anderson_m=5)
    with torch.no_grad():
        eager = jiio_solve(f, loss, x, config=cfg)
        static = _solve_static(monkeypatch, "lu", f, loss, x, config=cfg)
    assert bool(eager.converged.all()) and eager.iterations < cfg.max_iter
    assert len(set(eager.trace["residual"].argmin(0).tolist())) > 1  # samples stopped at different steps
    _assert_same(static, eager, rtol=1e-6, atol=1e-10)


def test_static_iteration_flags_divergence_like_the_eager_loop(monkeypatch):
    """A cell that explodes for some samples: the same samples flagged, the same last good iterate."""
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    scale = torch.tensor([0.5, 3.0, 0.5, 3.0], dtype=torch.float64)[:, None]

    def f(z, x):
        return scale * (z @ W.T) + x

    loss = lambda z: (z**2).sum(1)  # noqa: E731
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    cfg = JIIOConfig(max_iter=25, anderson_m=3, alpha_x=0.01, tol=0.0)
    with torch.no_grad():
        eager = jiio_solve(f, loss, x, config=cfg)
        static = _solve_static(monkeypatch, "lu", f, loss, x, config=cfg)
    assert eager.diverged.tolist() == static.diverged.tolist() and bool(eager.diverged.any())
    assert bool(torch.isfinite(static.x).all()) and torch.allclose(static.x, eager.x, rtol=1e-9, atol=1e-12)


def test_cuda_graph_needs_cuda_and_a_supported_solver():
    cell, loss, x = _problem()
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA"):
        jiio_solve(cell, loss, x, config=PAPER.replace(max_iter=3), cuda_graph=True)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="solver"):
            jiio_solve(cell.cuda(), loss, x.cuda(), config=JIIOConfig(solver="broyden"), cuda_graph=True)
