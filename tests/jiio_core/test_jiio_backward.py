"""The backward of ``jiio_solve`` when the solve stopped early: mu* is reused (paper eq. 19)
only for samples whose mu met ``backward_tol``; the others get the implicit-function-theorem
gradient with x* held fixed. References: per-sample dense Jacobians
(``torch.autograd.functional.jacobian``) and a dense linear solve ``(I - J_z^T) u = g``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from jiio_core import JIIOConfig, attach_implicit_grad, jiio_solve, l2_ball

DT = torch.float64


class TanhCell(nn.Module):
    """f(z, x) = tanh(W z + U x + b), |W|_2 = ``w_norm``."""

    def __init__(self, n: int, d: int, w_norm: float, seed: int = 0, u_shift: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=DT)
        self.W = nn.Parameter(w_norm * W / torch.linalg.matrix_norm(W, 2))
        self.U = nn.Parameter(torch.randn(n, d, generator=g, dtype=DT) + u_shift)
        self.b = nn.Parameter(0.3 * torch.randn(n, generator=g, dtype=DT))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def dense_implicit_grad(cell: nn.Module, per_sample_loss, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i u_i^T df(z_i, x_i)/dtheta with (I - J_z(z_i, x_i)^T) u_i = dl_i/dz_i, all dense."""
    params = list(cell.parameters())
    total = [torch.zeros_like(p) for p in params]
    n = z.shape[1]
    for i in range(z.shape[0]):
        zi, xi = z[i : i + 1].detach(), x[i : i + 1].detach()
        J = jacobian(lambda t, xi=xi: cell(t, xi), zi).reshape(n, n)
        g = jacobian(lambda t, i=i: per_sample_loss(t, i).sum(), zi).reshape(n)
        u = torch.linalg.solve(torch.eye(n, dtype=DT) - J.T, g)
        for k, p in enumerate(params):

            def f_of_p(q: torch.Tensor, k: int = k, zi=zi, xi=xi) -> torch.Tensor:
                values = [q if j == k else params[j].detach() for j in range(len(params))]
                W, U, b = values
                return torch.tanh(zi @ W.T + xi @ U.T + b).reshape(n)

            total[k] += torch.tensordot(u, jacobian(f_of_p, p.detach()), dims=1)
    return torch.cat([t.reshape(-1) for t in total])


def _grads(cell: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in cell.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _adversarial(n=6, d=4, C=3, B=5, seed=0):
    cell = TanhCell(n, d, 0.6, seed)
    g = torch.Generator().manual_seed(seed + 1)
    head = torch.randn(C, n, generator=g, dtype=DT)
    y = torch.randint(0, C, (B,), generator=g)
    x0 = torch.randn(B, d, generator=g, dtype=DT)

    def loss(z: torch.Tensor) -> torch.Tensor:  # C * (-CE): the adversary's cost to minimise
        return -C * F.cross_entropy(z @ head.T, y, reduction="none")

    def sample_loss(z: torch.Tensor, i: int) -> torch.Tensor:
        return -C * F.cross_entropy(z @ head.T, y[i : i + 1], reduction="none")

    return cell, loss, sample_loss, x0


def test_unconverged_solve_backward_is_the_implicit_gradient_at_the_returned_iterate():
    """Six iterations: mu* is far from its fixed point, so reusing it (what the code did for
    any outer loss parallel to dl/dz) gave a gradient 6% off; now the IFT solve runs."""
    cell, loss, sample_loss, x0 = _adversarial()
    cfg = JIIOConfig(
        max_iter=6,
        alpha_x=0.3,
        x_step="normalized",
        early_stop=False,
        backward_tol=1e-12,
        backward_max_iter=200,
    )
    res = jiio_solve(cell, loss, x0, z0=torch.zeros(5, 6, dtype=DT), config=cfg, project=l2_ball(x0, 1.0))
    assert not bool(res.converged.any()) and float(res.mu_residual.min()) > 1e-3
    loss(res.z).sum().backward()  # outer = inner loss: the eq. 19 case
    want = dense_implicit_grad(cell, sample_loss, res.z.detach(), res.x)
    assert _rel(_grads(cell), want) < 1e-6
    assert res.backward["mode"] == "ift"
    assert res.backward["mu_samples"] == 0 and res.backward["mu_frac"] == 0.0
    assert res.backward["iterations"] > 0 and res.backward["residual"] <= 1e-12


def test_where_z_converged_but_mu_did_not_the_backward_is_the_exact_implicit_gradient():
    """A 1-d input pinned on the ball's boundary after two steps and a strongly contracting
    cell: after 12 damped iterations z is the fixed point at the returned x (to 1e-12)
    while mu is 30% off. The backward must be the implicit gradient of the model at that x:
    z solved exactly at the returned x, dense Jacobians, a dense linear solve."""
    n, B = 5, 3
    cell = TanhCell(n, 1, 0.02, seed=3, u_shift=2.0)
    g = torch.Generator().manual_seed(4)
    h = torch.rand(B, n, generator=g, dtype=DT) + 0.5

    def loss(z: torch.Tensor) -> torch.Tensor:  # maximise softplus(h . z): push x outwards
        return -2.0 * F.softplus((z * h[: z.shape[0]]).sum(1))

    def sample_loss(z: torch.Tensor, i: int) -> torch.Tensor:
        return -2.0 * F.softplus((z * h[i]).sum(1))

    center = torch.zeros(B, 1, dtype=DT)
    cfg = JIIOConfig(
        solver="fixed_point",
        alpha_z=1.0,
        alpha_mu=0.05,
        alpha_x=1.0,
        x_step="normalized",
        max_iter=12,
        early_stop=False,
        backward_tol=1e-12,
        backward_max_iter=100,
    )
    res = jiio_solve(
        cell, loss, center, z0=torch.zeros(B, n, dtype=DT), config=cfg, project=l2_ball(center, 0.5)
    )
    assert torch.allclose(res.x.abs(), torch.full_like(res.x, 0.5))
    with torch.no_grad():  # z solved exactly at the returned x
        z_exact = res.z.detach().clone()
        for _ in range(100):
            z_exact = cell(z_exact, res.x)
    assert float((res.z.detach() - z_exact).norm() / z_exact.norm()) < 1e-12  # z converged ...
    assert float(res.mu_residual.min()) > 0.1  # ... mu did not
    loss(res.z).sum().backward()
    want = dense_implicit_grad(cell, sample_loss, z_exact, res.x)
    assert _rel(_grads(cell), want) < 1e-6
    assert res.backward["mode"] == "ift"


def test_samples_whose_mu_converged_reuse_it_the_others_solve():
    """Per-sample choice: with backward_tol between the samples' mu residuals, the samples
    below it reuse mu* ("mixed"), and the gradient is still the implicit one."""
    cell, loss, sample_loss, x0 = _adversarial(B=8, seed=5)
    base = JIIOConfig(max_iter=12, alpha_x=0.3, x_step="normalized", early_stop=False, backward_max_iter=300)
    with torch.no_grad():
        probe = jiio_solve(
            cell, loss, x0, z0=torch.zeros(8, 6, dtype=DT), config=base, project=l2_ball(x0, 1.0)
        )
    mu_res = probe.mu_residual.sort().values
    assert float(mu_res[-1]) > 1e3 * float(mu_res[0])  # the samples differ: a threshold splits them
    tol = float((mu_res[3] * mu_res[4]).sqrt())
    res = jiio_solve(
        cell,
        loss,
        x0,
        z0=torch.zeros(8, 6, dtype=DT),
        config=base.replace(backward_tol=tol),
        project=l2_ball(x0, 1.0),
    )
    assert torch.equal(res.mu_residual, probe.mu_residual)
    loss(res.z).sum().backward()
    assert res.backward["mode"] == "mixed"
    assert res.backward["mu_samples"] == 4 and res.backward["mu_frac"] == 0.5
    assert res.backward["residual"] <= tol
    want = dense_implicit_grad(cell, sample_loss, res.z.detach(), res.x)
    assert _rel(_grads(cell), want) < 1e3 * tol


@pytest.mark.parametrize("backward", ["ift", "jfb"])
def test_attach_implicit_grad_combines_shortcut_and_solve_per_sample(backward):
    """A shortcut exact for samples 0 and 2 and a useless warm start for 1: sample 1 takes
    ``backward`` (the IFT solve, or JFB: u = grad), the others keep the shortcut's u."""
    n, B = 4, 3
    cell = TanhCell(n, 2, 0.5, seed=7)
    x = torch.randn(B, 2, dtype=DT)
    with torch.no_grad():
        z = torch.zeros(B, n, dtype=DT)
        for _ in range(200):
            z = cell(z, x)
    target = torch.randn(B, n, dtype=DT)

    def sample_loss(t: torch.Tensor, i: int) -> torch.Tensor:
        return 0.5 * ((t - target[i]) ** 2).sum(1)

    exact = []
    for i in range(B):
        J = jacobian(lambda t, i=i: cell(t, x[i : i + 1]), z[i : i + 1]).reshape(n, n)
        exact.append(torch.linalg.solve(torch.eye(n, dtype=DT) - J.T, z[i] - target[i]))
    u_short = torch.stack(exact)
    u_short[1] = 1e3  # not used: sample 1 is not marked
    use = torch.tensor([True, False, True])

    def shortcut(grad: torch.Tensor):
        return u_short.clone(), use, torch.tensor([1e-14, 1.0, 2e-14], dtype=DT)

    stats: dict = {}
    out = attach_implicit_grad(
        cell, z, x, backward=backward, tol=1e-13, max_iter=200, shortcut=shortcut, stats=stats
    )
    (0.5 * ((out - target) ** 2).sum()).backward()
    assert stats["mode"] == "mixed" and stats["mu_samples"] == 2 and math.isclose(stats["mu_frac"], 2 / 3)
    got = _grads(cell)
    cell.zero_grad()
    if backward == "ift":
        want = dense_implicit_grad(cell, sample_loss, z, x)
        assert _rel(got, want) < 1e-9
        assert stats["residual"] <= 1e-13
    else:  # samples 0, 2: exact u; sample 1: u = grad = z - target
        u = torch.stack([exact[0], z[1] - target[1], exact[2]])
        (cell(z, x) * u).sum().backward()
        assert _rel(got, _grads(cell)) < 1e-12
        assert stats["residual"] == 2e-14  # the solved or reused samples only


def test_a_loose_backward_tol_never_reuses_mu_for_another_outer_loss():
    """backward_tol bounds mu*'s residual; whether the outer loss is a multiple of the inner
    one is decided at a fixed 1e-4, so a loose tolerance cannot hand mu* to another loss."""
    cell, loss, _, x0 = _adversarial()
    cfg = JIIOConfig(max_iter=6, alpha_x=0.3, x_step="normalized", early_stop=False, backward_tol=10.0)
    res = jiio_solve(cell, loss, x0, z0=torch.zeros(5, 6, dtype=DT), config=cfg, project=l2_ball(x0, 1.0))
    (res.z**2).sum().backward()
    assert res.backward["mode"] == "ift" and res.backward["mu_frac"] == 0.0
    res = jiio_solve(cell, loss, x0, z0=torch.zeros(5, 6, dtype=DT), config=cfg, project=l2_ball(x0, 1.0))
    (-2.5 * loss(res.z)).sum().backward()  # a multiple: the loose tolerance lets mu* be reused
    assert res.backward["mode"] == "mu" and res.backward["mu_frac"] == 1.0


def test_rows_left_out_of_the_outer_loss_need_no_solve():
    """A sample whose outer gradient is exactly 0 has u = 0 whatever its mu*: it counts as
    solved without a solve, and the gradient is the implicit one of the other samples."""
    cell, loss, sample_loss, x0 = _adversarial()
    cfg = JIIOConfig(
        max_iter=6,
        alpha_x=0.3,
        x_step="normalized",
        early_stop=False,
        backward_tol=1e-12,
        backward_max_iter=200,
    )
    res = jiio_solve(cell, loss, x0, z0=torch.zeros(5, 6, dtype=DT), config=cfg, project=l2_ball(x0, 1.0))
    weight = torch.ones(5, dtype=DT)
    weight[0] = 0.0  # sample 0 left out
    (loss(res.z) * weight).sum().backward()
    assert res.backward["mode"] == "mixed" and res.backward["mu_samples"] == 1
    rest = dense_implicit_grad(cell, lambda t, i: sample_loss(t, i + 1), res.z.detach()[1:], res.x[1:])
    assert _rel(_grads(cell), rest) < 1e-6
