"""jiio_solve against closed forms (linear DEQ, quadratic loss) and finite differences.

Linear DEQ: f(z, x) = A z + B x + c, loss(z) = 0.5 |C z - y|^2. Then z*(x) = M (B x + c)
with M = (I - A)^{-1}, and the inner problem is least squares in x with K = C M B,
r = y - C M c. The references below are computed with numpy from these formulas alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from jiio_core import JIIOConfig, jiio_solve, l2_ball

N, D, P, BATCH = 6, 3, 5, 4


class LinearCell(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((N, N)))
        A = q @ np.diag(np.linspace(-0.6, 0.6, N)) @ q.T
        self.A = nn.Parameter(torch.tensor(A))
        self.B = nn.Parameter(torch.tensor(rng.standard_normal((N, D))))
        self.c = nn.Parameter(torch.tensor(rng.standard_normal(N)))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return z @ self.A.T + x @ self.B.T + self.c

    def init_z(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], N)


def _problem(seed: int = 0):
    cell = LinearCell(seed)
    rng = np.random.default_rng(seed + 100)
    C = rng.standard_normal((P, N))
    Y = rng.standard_normal((BATCH, P)) * 3
    Ct, Yt = torch.tensor(C), torch.tensor(Y)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((z @ Ct.T - Yt[: z.shape[0]]) ** 2).sum(1)

    A, B, c = (p.detach().numpy() for p in (cell.A, cell.B, cell.c))
    M = np.linalg.inv(np.eye(N) - A)
    K, r = C @ M @ B, Y - (C @ M @ c)[None]
    return cell, loss, C, Y, M, K, r


def _constrained_lstsq(K: np.ndarray, r: np.ndarray, eps: float) -> np.ndarray:
    """argmin 0.5|K x - r|^2 s.t. |x| <= eps, by bisection on the KKT multiplier."""
    x = np.linalg.lstsq(K, r, rcond=None)[0]
    if np.linalg.norm(x) <= eps:
        return x
    lo, hi = 0.0, 1.0
    xs = lambda lam: np.linalg.solve(K.T @ K + lam * np.eye(K.shape[1]), K.T @ r)  # noqa: E731
    while np.linalg.norm(xs(hi)) > eps:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.linalg.norm(xs(mid)) > eps else (lo, mid)
    return xs(hi)


CFG = JIIOConfig(alpha_z=0.8, alpha_mu=0.6, alpha_x=0.05, anderson_m=30, max_iter=400, tol=1e-13)


@pytest.mark.parametrize(
    "solver,kind,lam",
    [("anderson", "II", 1e-5), ("anderson", "I", 1e-5), ("anderson", "I", 0.0), ("anderson", "II", 0.0),
     ("broyden", "II", 1e-5)],
)  # fmt: skip
def test_linear_unconstrained_matches_closed_form(solver, kind, lam):
    cell, loss, C, Y, M, K, r = _problem()
    x_ref = np.linalg.lstsq(K, r.T, rcond=None)[0].T  # (BATCH, D)
    z_ref = (M @ (cell.B.detach().numpy() @ x_ref.T + cell.c.detach().numpy()[:, None])).T
    v_ref = 0.5 * ((K @ x_ref.T - r.T) ** 2).sum(0)
    with torch.no_grad():
        res = jiio_solve(
            cell,
            loss,
            torch.zeros(BATCH, D, dtype=torch.float64),
            config=CFG.replace(solver=solver, anderson_type=kind, anderson_lam=lam),
        )
    assert bool(res.converged.all()) and not bool(res.diverged.any())
    rel = np.linalg.norm(res.x.numpy() - x_ref, axis=1) / np.linalg.norm(x_ref, axis=1)
    assert rel.max() < 1e-6, rel
    assert np.allclose(res.z.numpy(), z_ref, rtol=1e-6, atol=1e-8)
    assert np.allclose(res.objective.numpy(), v_ref, rtol=1e-6)


def test_linear_l2_ball_matches_constrained_optimum():
    cell, loss, C, Y, M, K, r = _problem(seed=1)
    center = torch.tensor(np.random.default_rng(7).standard_normal((BATCH, D)) * 0.1)
    eps = 0.3
    x_ref = np.stack(
        [center[i].numpy() + _constrained_lstsq(K, r[i] - K @ center[i].numpy(), eps) for i in range(BATCH)]
    )
    assert np.all(np.linalg.norm(x_ref - center.numpy(), axis=1) > eps - 1e-9)  # constraint active
    with torch.no_grad():
        res = jiio_solve(cell, loss, center.clone(), config=CFG, project=l2_ball(center, eps))
    assert bool(res.converged.all())
    rel = np.linalg.norm(res.x.numpy() - x_ref, axis=1) / np.linalg.norm(x_ref, axis=1)
    assert rel.max() < 1e-6, rel
    assert float((res.x - center).norm(dim=1).max()) <= eps * (1 + 1e-12)


def test_returned_x_always_feasible_even_unconverged():
    """Anderson mixing leaves the ball; the result must not (the paper code's defect)."""
    cell, loss, *_ = _problem(seed=2)
    center = torch.zeros(BATCH, D, dtype=torch.float64)
    for solver in ("anderson", "broyden", "fixed_point"):
        cfg = JIIOConfig.paper("mnist_adversarial").replace(solver=solver, max_iter=7)
        with torch.no_grad():
            res = jiio_solve(cell, loss, center, config=cfg, project=l2_ball(center, 0.25))
        assert float(res.x.norm(dim=1).max()) <= 0.25 * (1 + 1e-12), solver


def test_eq19_gradient_reuses_mu_and_matches_closed_form():
    cell, loss, C, Y, M, K, r = _problem()
    res = jiio_solve(cell, loss, torch.zeros(BATCH, D, dtype=torch.float64), config=CFG)
    loss(res.z).sum().backward()
    assert res.backward["mode"] == "mu"
    x, z = res.x.numpy(), res.z.detach().numpy()
    # dV/dtheta = w^T df/dtheta, w = M^T C^T (C z* - y): envelope theorem + IFT, by hand.
    w = (M.T @ C.T @ (C @ z.T - Y.T)).T  # (BATCH, N)
    assert np.allclose(cell.c.grad.numpy(), w.sum(0), rtol=1e-6, atol=1e-9)
    assert np.allclose(cell.B.grad.numpy(), w.T @ x, rtol=1e-6, atol=1e-9)
    assert np.allclose(cell.A.grad.numpy(), w.T @ z, rtol=1e-6, atol=1e-9)
    # The negated (adversarial) and rescaled outer losses also take the mu shortcut.
    for outer, scale in ((lambda v: -v.sum(), -1.0), (lambda v: v.mean(), 1.0 / BATCH)):
        cell.zero_grad()
        res = jiio_solve(cell, loss, torch.zeros(BATCH, D, dtype=torch.float64), config=CFG)
        outer(loss(res.z)).backward()
        assert res.backward["mode"] == "mu"
        assert np.allclose(cell.c.grad.numpy(), scale * w.sum(0), rtol=1e-6, atol=1e-9)


def test_other_outer_loss_uses_ift_with_x_fixed_or_jfb():
    cell, loss, C, Y, M, K, r = _problem()
    outer = lambda z: (z**2).sum()  # noqa: E731  (not a multiple of the inner loss)
    res = jiio_solve(
        cell,
        loss,
        torch.zeros(BATCH, D, dtype=torch.float64),
        config=CFG.replace(backward_tol=1e-12, backward_max_iter=100),
    )
    outer(res.z).backward()
    assert res.backward["mode"] == "ift"
    z = res.z.detach().numpy()
    assert np.allclose(cell.c.grad.numpy(), (M.T @ (2 * z.T)).sum(1), rtol=1e-6)  # x* held fixed
    cell.zero_grad()
    res = jiio_solve(
        cell, loss, torch.zeros(BATCH, D, dtype=torch.float64), config=CFG.replace(backward="jfb")
    )
    outer(res.z).backward()
    assert res.backward["mode"] == "jfb"
    assert np.allclose(cell.c.grad.numpy(), 2 * res.z.detach().numpy().sum(0), rtol=1e-9)


def test_eq19_gradient_matches_finite_differences_nonlinear_constrained():
    torch.manual_seed(0)
    n, d = 5, 3
    W = torch.randn(n, n, dtype=torch.float64)
    W = 0.5 * W / torch.linalg.matrix_norm(W, 2)
    U = torch.randn(n, d, dtype=torch.float64)
    b = nn.Parameter(torch.randn(n, dtype=torch.float64) * 0.3)
    C = torch.randn(2, n, dtype=torch.float64)
    y = torch.randn(3, 2, dtype=torch.float64) * 2
    center = torch.zeros(3, d, dtype=torch.float64)
    cfg = JIIOConfig(alpha_x=0.2, anderson_m=20, max_iter=500, tol=1e-13)

    def solve(bias):
        f = lambda z, x: torch.tanh(z @ W.T + x @ U.T + bias)  # noqa: E731
        loss = lambda z: 0.5 * ((z @ C.T - y) ** 2).sum(1)  # noqa: E731
        return jiio_solve(
            f,
            loss,
            center,
            z0=torch.zeros(3, n, dtype=torch.float64),
            config=cfg,
            project=l2_ball(center, 0.4),
        ), loss

    res, loss = solve(b)
    assert bool(res.converged.all())
    assert float(res.x.norm(dim=1).min()) > 0.4 - 1e-9  # on the boundary: a real constraint
    loss(res.z).sum().backward()
    assert res.backward["mode"] == "mu"
    h = 1e-5
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = h
        with torch.no_grad():
            fd = (solve(b.detach() + e)[0].objective.sum() - solve(b.detach() - e)[0].objective.sum()) / (
                2 * h
            )
        assert abs(float(b.grad[i]) - float(fd)) < 1e-6 * max(1.0, abs(float(fd))), (i, b.grad, fd)


def test_one_f_evaluation_per_iteration_and_batch_independence():
    cell, loss, *_ = _problem()
    calls = {"n": 0}

    def counted(z, x):
        calls["n"] += 1
        return cell(z, x)

    x0 = torch.zeros(BATCH, D, dtype=torch.float64)
    with torch.no_grad():
        res = jiio_solve(counted, loss, x0, z0=torch.zeros(BATCH, N, dtype=torch.float64), config=CFG)
        assert calls["n"] == res.iterations
        one = jiio_solve(cell, lambda z: loss(z)[:1] if z.shape[0] == 1 else loss(z), x0[:1], config=CFG)
    assert torch.allclose(one.x[0], res.x[0], atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_divergence_is_flagged_and_outputs_stay_finite(dtype):
    cell, loss, *_ = _problem()
    cell = cell.to(dtype)
    cfg = JIIOConfig(alpha_x=50.0, solver="fixed_point", max_iter=300, tol=1e-6)
    with torch.no_grad():
        res = jiio_solve(
            cell,
            lambda z: loss(z.double()).to(dtype),
            torch.zeros(BATCH, D, dtype=dtype),
            config=cfg,
        )
    assert bool(res.diverged.all()) and not bool(res.converged.any())
    assert res.iterations < 300
    for t in (res.x, res.z, res.mu, res.objective, *res.trace.values()):
        assert bool(torch.isfinite(t).all())


def test_bad_shapes_raise():
    cell, loss, *_ = _problem()
    with pytest.raises(ValueError, match="batch size"):
        jiio_solve(
            cell,
            loss,
            torch.zeros(2, D, dtype=torch.float64),
            z0=torch.zeros(3, N, dtype=torch.float64),
        )
    with pytest.raises(ValueError, match="at least one sample"):
        jiio_solve(cell, loss, torch.zeros(0, D, dtype=torch.float64))


class NoInitCell(LinearCell):
    """The linear cell without init_z: its state (N) is not shaped like its input (D)."""

    init_z = None  # type: ignore[assignment]


@pytest.mark.parametrize("init", ["cell_step", "zero"])
def test_state_shaped_unlike_x_without_z0_names_z0(init):
    cell, loss, *_ = _problem()
    bare = NoInitCell()
    bare.load_state_dict(cell.state_dict())
    with pytest.raises(ValueError, match=r"z0") as err:
        jiio_solve(bare, loss, torch.zeros(BATCH, D, dtype=torch.float64), config=CFG.replace(init=init))
    assert "init_z" in str(err.value) and "(4, 3)" in str(err.value)  # what to pass, what was wrong
    # a cell that broadcasts: f(z, x) runs but returns the state's shape, not z0's
    U = torch.randn(N, D, dtype=torch.float64)
    broadcasting = lambda z, x: torch.tanh(x @ U.T + z.sum(1, keepdim=True))  # noqa: E731
    x0 = torch.zeros(BATCH, D, dtype=torch.float64)
    if init == "zero":
        with pytest.raises(ValueError, match=r"z0 has the wrong shape.*\(4, 6\)"):
            jiio_solve(broadcasting, lambda z: z.pow(2).sum(1), x0, config=CFG.replace(init=init))
    with pytest.raises(ValueError, match=r"z0 has the wrong shape"):
        jiio_solve(broadcasting, lambda z: z.pow(2).sum(1), x0, z0=torch.zeros(BATCH, 2, dtype=torch.float64))
    # given z0 (or init_z), the same cell solves
    res = jiio_solve(
        bare, loss, x0, z0=torch.zeros(BATCH, N, dtype=torch.float64), config=CFG.replace(init=init)
    )
    assert bool(res.converged.all())


def test_init_zero_starts_from_init_z_and_cell_step_from_one_step():
    cell, loss, *_ = _problem()
    x0 = torch.zeros(BATCH, D, dtype=torch.float64)
    seen = []

    def recording(z, x):
        seen.append(z.detach().clone())
        return cell(z, x)

    recording.init_z = cell.init_z  # type: ignore[attr-defined]
    with torch.no_grad():
        jiio_solve(recording, loss, x0, config=CFG.replace(init="zero", max_iter=2))
        assert torch.equal(seen[0], torch.zeros(BATCH, N, dtype=torch.float64))
        seen.clear()
        jiio_solve(recording, loss, x0, config=CFG.replace(init="cell_step", max_iter=2))
        # the uncounted start step, then the first iterate is f(0, x0) = B x0 + c = c
        assert len(seen) == 3 and torch.allclose(seen[1], cell.c.detach().expand(BATCH, N))
