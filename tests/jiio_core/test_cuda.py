"""CUDA: the same solves on the GPU agree with the CPU (skipped where there is no GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jiio_core import (
    DEQ,
    ClassifierHead,
    DEQConfig,
    JIIOConfig,
    MDEQCell,
    MDEQConfig,
    anderson,
    broyden,
    jiio_solve,
    l2_ball,
    pgd_attack,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("solver", [anderson, broyden])
def test_solvers_on_cuda_match_cpu_float64(solver):
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    W = 0.8 * W / torch.linalg.matrix_norm(W, 2)
    b = torch.randn(16, 30, generator=gen, dtype=torch.float64)
    out = {}
    for dev in ("cpu", "cuda"):
        Wd, bd = W.to(dev), b.to(dev)
        res = solver(
            lambda x, Wd=Wd, bd=bd: torch.tanh(x @ Wd.T + bd), torch.zeros_like(bd), tol=1e-12, max_iter=200
        )
        assert bool(res.converged.all())
        out[dev] = res.x.cpu()
    assert torch.allclose(out["cpu"], out["cuda"], atol=1e-10, rtol=0)


def _mdeq(dtype: torch.dtype):
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny()
    cell, head = MDEQCell(cfg).to(dtype), ClassifierHead(cfg).to(dtype)
    x = torch.rand(16, 1, 16, 16, dtype=dtype)
    y = torch.randint(0, 10, (16,))
    return cell, head, x, y


def test_deq_forward_backward_on_cuda_matches_cpu():
    cell, head, x, y = _mdeq(torch.float64)
    grads = {}
    for dev in ("cpu", "cuda"):
        c, h = cell.to(dev), head.to(dev)
        c.zero_grad()
        deq = DEQ(c, DEQConfig(max_iter=60, tol=1e-10, backward_tol=1e-10, backward_max_iter=60))
        z, info = deq(x.to(dev))
        assert bool(info.converged.all())
        F.cross_entropy(h(z), y.to(dev)).backward()
        grads[dev] = [p.grad.detach().cpu().clone() for p in c.parameters()]
    for a, b in zip(grads["cpu"], grads["cuda"], strict=True):
        assert torch.allclose(a, b, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jiio_on_cuda_matches_cpu_and_stays_feasible(dtype):
    cell, head, x, y = _mdeq(dtype)
    cfg = JIIOConfig.paper("mnist_adversarial").replace(max_iter=12)
    out = {}
    for dev in ("cpu", "cuda"):
        c, h, xd, yd = cell.to(dev), head.to(dev), x.to(dev), y.to(dev)
        with torch.no_grad():
            res = jiio_solve(
                c, lambda z, h=h, yd=yd: -F.cross_entropy(h(z), yd, reduction="none"), xd,
                config=cfg, project=l2_ball(xd, 1.0),
            )  # fmt: skip
        assert res.x.device.type == dev and res.x.dtype == dtype
        assert float((res.x - xd).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
        assert not bool(res.diverged.any())
        out[dev] = (res.x.cpu(), res.objective.cpu())
    if dtype == torch.float64:
        assert torch.allclose(out["cpu"][0], out["cuda"][0], atol=1e-8, rtol=0)
    else:  # float32 rounding differs between devices and the iteration amplifies it
        cpu_obj, cuda_obj = out["cpu"][1].mean(), out["cuda"][1].mean()
        assert abs(float(cpu_obj - cuda_obj)) < 0.02 * abs(float(cpu_obj))


def test_eq19_backward_on_cuda():
    cell, head, x, y = _mdeq(torch.float32)
    cell, head, x, y = cell.cuda(), head.cuda(), x.cuda(), y.cuda()
    res = jiio_solve(cell, lambda z: -F.cross_entropy(head(z), y, reduction="none"), x,
                     config=JIIOConfig.paper("mnist_adversarial").replace(max_iter=20),
                     project=l2_ball(x, 1.0))  # fmt: skip
    F.cross_entropy(head(res.z), y).backward()
    # mu is reused exactly for the samples whose mu met backward_tol (after 20 iterations
    # typically none), the others solve; the per-sample choice runs without host syncs
    tol = JIIOConfig.paper("mnist_adversarial").backward_tol
    n_ok = int((res.mu_residual <= tol).sum())
    assert res.backward["mu_samples"] == n_ok
    assert res.backward["mode"] == ("mu" if n_ok == len(y) else "ift" if n_ok == 0 else "mixed")
    assert res.backward["residual"] <= tol
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in cell.parameters())


@pytest.mark.parametrize("kind", ["I", "II"])
def test_unregularised_anderson_on_cuda_matches_cpu(kind):
    """lam = 0: the bordered solve and its retry run without host syncs on the GPU."""
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    W = 0.8 * W / torch.linalg.matrix_norm(W, 2)
    b = torch.randn(16, 30, generator=gen, dtype=torch.float64)
    out = {}
    for dev in ("cpu", "cuda"):
        Wd, bd = W.to(dev), b.to(dev)
        res = anderson(
            lambda x, Wd=Wd, bd=bd: torch.tanh(x @ Wd.T + bd), torch.zeros_like(bd), m=10, lam=0.0,
            kind=kind, tol=1e-12, max_iter=200,
        )  # fmt: skip
        assert bool(res.converged.all())
        out[dev] = res.x.cpu()
    assert torch.allclose(out["cpu"], out["cuda"], atol=1e-10, rtol=0)


def test_pgd_on_cuda_respects_bound():
    cell, head, x, y = _mdeq(torch.float32)
    cell, head, x, y = cell.cuda(), head.cuda(), x.cuda(), y.cuda()
    deq = DEQ(cell, DEQConfig.paper())
    x_adv, st = pgd_attack(lambda t: head(deq(t)[0]), x, y, eps=1.0, step_size=0.6, steps=5)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    assert st.final_loss.mean() > st.step_loss[0]


GRAPH_CONFIGS = {
    "paper_I_m20": JIIOConfig.paper("mnist_adversarial").replace(max_iter=60),  # alpha_x drop at 49
    "II_m5_ridge_early_stop": JIIOConfig(max_iter=40, anderson_m=5, tol=1e-2, select="objective"),
    "fixed_point": JIIOConfig.paper("mnist_adversarial").replace(max_iter=30, solver="fixed_point"),
}


@pytest.mark.parametrize("linsolve", ["lu", "elimination"])
@pytest.mark.parametrize("name", list(GRAPH_CONFIGS))
def test_cuda_graph_iteration_matches_the_eager_path(monkeypatch, name, linsolve):
    """cuda_graph=True (one iteration captured, then replayed) gives the eager path's
    iterates, trace and kept iterate on the same GPU, float64, up to rounding."""
    from jiio_core import static_iteration as _graph

    monkeypatch.setattr(_graph, "LINSOLVE", linsolve)
    cfg = GRAPH_CONFIGS[name]
    cell, head, x, y = _mdeq(torch.float64)
    cell, head, x, y = cell.cuda(), head.cuda(), x.cuda(), y.cuda()

    def loss(z):
        return -F.cross_entropy(head(z), y, reduction="none")

    with torch.no_grad():
        eager = jiio_solve(cell, loss, x, config=cfg, project=l2_ball(x, 1.0))
        graphed = jiio_solve(cell, loss, x, config=cfg, project=l2_ball(x, 1.0), cuda_graph=True)
        again = jiio_solve(cell, loss, x, config=cfg, project=l2_ball(x, 1.0), cuda_graph=True)
    assert graphed.iterations == eager.iterations == again.iterations
    for field in ("x", "z", "mu", "objective", "residual"):
        a, b = getattr(graphed, field), getattr(eager, field)
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9), (field, float((a - b).abs().max()))
        assert torch.allclose(a, getattr(again, field), rtol=1e-12, atol=1e-14)  # replays agree
    for key, want in eager.trace.items():
        assert torch.allclose(graphed.trace[key], want, rtol=1e-7, atol=1e-9), key
    assert float((graphed.x - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-9


def test_cuda_graph_float32_stays_close_to_eager():
    cell, head, x, y = _mdeq(torch.float32)
    cell, head, x, y = cell.cuda(), head.cuda(), x.cuda(), y.cuda()
    cfg = JIIOConfig.paper("mnist_adversarial").replace(max_iter=40)

    def loss(z):
        return -F.cross_entropy(head(z), y, reduction="none")

    with torch.no_grad():
        eager = jiio_solve(cell, loss, x, config=cfg, project=l2_ball(x, 1.0))
        graphed = jiio_solve(cell, loss, x, config=cfg, project=l2_ball(x, 1.0), cuda_graph=True)
    assert graphed.iterations == eager.iterations and not bool(graphed.diverged.any())
    # float32 rounding differs between the padded and the n-slot system; the iteration amplifies it
    assert abs(float(graphed.objective.mean() - eager.objective.mean())) < 0.02 * abs(
        float(eager.objective.mean())
    )
