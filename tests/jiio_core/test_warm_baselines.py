"""Tests for the warm-started baselines (PGD and Adam on a DEQ, warm forward and k-step backward).

References: the paper's (cold) baselines ``pgd_attack`` / ``adam_latent`` on a ``DEQ``
solved to 1e-11; the exact implicit gradient from dense Jacobians
(``torch.autograd.functional.jacobian``) and a linear solve; the JFB gradient from those
Jacobians by hand; central finite differences of the loss at the fixed point.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from jiio_core import (
    DEQ,
    ClassifierHead,
    DEQConfig,
    ImageHead,
    MDEQCell,
    MDEQConfig,
    adam_latent,
    adam_latent_warm,
    pgd_attack,
    pgd_attack_warm,
    warm_input_grad,
)

DT = torch.float64
# a smaller MDEQ than MDEQConfig.tiny() (z_dim 384 instead of 3072): same structure, fast tests
SMALL = MDEQConfig(channels=(4, 8), resolutions=(8, 4), num_groups=2)
TIGHT_DEQ = DEQConfig(tol=1e-11, max_iter=200, backward_tol=1e-11, backward_max_iter=200)
# warm starts off, forward and backward solved as tightly as TIGHT_DEQ: the cold baseline
COLD_EXACT = {
    "forward_tol": 1e-11,
    "forward_max_iter": 200,
    "backward_iters": 200,
    "backward_tol": 1e-11,
    "warm_forward": False,
    "warm_backward": False,
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TanhCell(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``|W|_2 = rho``: a contraction, no ``inject``."""

    def __init__(self, d: int = 6, n: int = 4, rho: float = 0.8, seed: int = 0) -> None:
        super().__init__()
        g = _gen(seed)
        w = torch.randn(d, d, generator=g, dtype=DT)
        self.W = nn.Parameter(rho * w / torch.linalg.matrix_norm(w, ord=2))
        self.U = nn.Parameter(torch.randn(d, n, generator=g, dtype=DT))
        self.b = nn.Parameter(0.1 * torch.randn(d, generator=g, dtype=DT))
        self.d = d

    def init_z(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.d)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


class CountingCell(MDEQCell):
    injections = 0

    def inject(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.injections += 1
        return super().inject(x)


@pytest.fixture(scope="module")
def mdeq():
    torch.manual_seed(0)
    return MDEQCell(SMALL).double(), ClassifierHead(SMALL).double()


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(1)
    cfg = MDEQConfig(channels=(4, 8), resolutions=(8, 4), num_groups=2, latent_dim=8)
    return MDEQCell(cfg).double(), ImageHead(cfg).double()


def _images(seed: int, batch: int = 3):
    g = _gen(seed)
    x = torch.rand(batch, 1, 8, 8, generator=g, dtype=DT)
    return x, torch.randint(0, 10, (batch,), generator=g)


class Recorder(nn.Module):
    """The cold baseline's model, keeping every input it is called with."""

    def __init__(self, cell: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.deq, self.head, self.inputs = DEQ(cell, TIGHT_DEQ), head, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.head(self.deq(x)[0])


# ------------------------------------------------- (a) warm off + exact backward == cold


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_warm_off_equals_cold_pgd(mdeq, random_start):
    cell, head = mdeq
    x, y = _images(2)
    cold = Recorder(cell, head)
    kw = {"eps": 1.0, "step_size": 0.4, "steps": 3, "random_start": random_start}
    x_cold, st_cold = pgd_attack(cold, x, y, generator=_gen(3), **kw)
    x_warm, st = pgd_attack_warm(
        cell, head, x, y, generator=_gen(3), record_iterates=True, **kw, **COLD_EXACT
    )
    assert torch.allclose(x_warm, x_cold, rtol=0, atol=1e-8), (x_warm - x_cold).abs().max()
    # the cold one is called at x_0 .. x_{K-1} for the steps, then at x_K for final_loss
    for it, ref in zip(st.iterates, cold.inputs[1:], strict=True):
        assert torch.allclose(it, ref, rtol=0, atol=1e-8)
    assert st.step_loss == pytest.approx(st_cold.step_loss, rel=1e-8)
    assert torch.allclose(st.final_loss, st_cold.final_loss, rtol=1e-8)
    assert st.steps == 3 and len(st.forward_iters) == len(st.backward_iters) == 3
    assert max(st.forward_residual) <= 1e-11 and max(st.backward_residual) <= 1e-11


def test_adam_warm_off_equals_cold_adam(decoder):
    cell, head = decoder
    g = _gen(8)
    with torch.no_grad():
        target = head(DEQ(cell, TIGHT_DEQ)(torch.randn(3, 8, generator=g, dtype=DT))[0])
    x0 = 0.1 * torch.randn(3, 8, generator=g, dtype=DT)
    deq = DEQ(cell, TIGHT_DEQ)
    x_cold, st_cold = adam_latent(lambda x: head(deq(x)[0]), target, x0, steps=4, lr=0.2)
    x_warm, st = adam_latent_warm(cell, head, target, x0, steps=4, lr=0.2, **COLD_EXACT)
    assert torch.allclose(x_warm, x_cold, rtol=0, atol=1e-8), (x_warm - x_cold).abs().max()
    assert st.step_loss == pytest.approx(st_cold.step_loss, rel=1e-8)
    assert torch.allclose(st.final_loss, st_cold.final_loss, rtol=1e-8)
    assert st.step_sizes == [0.2] * 4


def test_adam_warm_decreases_loss_and_keeps_x0(decoder):
    cell, head = decoder
    g = _gen(9)
    with torch.no_grad():
        target = head(DEQ(cell, TIGHT_DEQ)(torch.randn(3, 8, generator=g, dtype=DT))[0])
    x0 = torch.zeros(3, 8, dtype=DT)
    x, st = adam_latent_warm(cell, head, target, x0, steps=8, lr=0.2, backward_iters=4)
    assert torch.equal(x0, torch.zeros(3, 8, dtype=DT)) and not x.requires_grad
    assert float(st.final_loss.mean()) < 0.7 * st.step_loss[0]
    assert st.forward_iters[-1] < st.forward_iters[0]  # warm forward: fewer iterations


# ------------------------------------------------- (b) gradients vs independent references


def _exact_grads(cell: TanhCell, head: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Per sample, from dense Jacobians: (z*, implicit dl/dx, JFB dl/dx = J_x^T dl/dz)."""
    exact, jfb, zs = [], [], []
    for xi, yi in zip(x, y, strict=True):
        z = torch.zeros(cell.d, dtype=DT)
        with torch.no_grad():
            for _ in range(400):  # |W| = 0.8 and |tanh'| <= 1: contraction, error 0.8^400
                z = cell(z[None], xi[None])[0]
        Jz = jacobian(lambda zz, xi=xi: cell(zz[None], xi[None])[0], z)
        Jx = jacobian(lambda xx, z=z: cell(z[None], xx[None])[0], xi)
        zr = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(head(zr[None]), yi[None]), zr)
        u = torch.linalg.solve(torch.eye(cell.d, dtype=DT) - Jz.T, g)
        exact.append(Jx.T @ u)
        jfb.append(Jx.T @ g)
        zs.append(z)
    return torch.stack(zs), torch.stack(exact), torch.stack(jfb)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), dim=1)


@pytest.fixture(scope="module")
def tanh_problem():
    cell, head = TanhCell(), nn.Linear(6, 3).double()
    g = _gen(11)
    with torch.no_grad():
        head.weight.copy_(torch.randn(3, 6, generator=g, dtype=DT))
    x = torch.randn(5, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (5,), generator=g)
    return cell, head, x, y, _exact_grads(cell, head, x, y)


@pytest.mark.parametrize("backward_solver", ["anderson", "fixed_point", "broyden"])
def test_k_step_backward_converges_to_exact_implicit_gradient(tanh_problem, backward_solver):
    cell, head, x, y, (z_ref, exact, jfb) = tanh_problem
    loss = lambda z: F.cross_entropy(head(z), y, reduction="none")  # noqa: E731
    kw = {"forward_tol": 1e-13, "forward_max_iter": 300, "backward_solver": backward_solver}
    wg = warm_input_grad(cell, loss, x, backward_iters=150, backward_tol=1e-13, **kw)
    assert torch.allclose(wg.z, z_ref, rtol=0, atol=1e-10)
    assert torch.allclose(wg.grad, exact, rtol=1e-7, atol=1e-10), (wg.grad - exact).abs().max()
    assert wg.backward_iters < 150 and float(wg.backward_residual.max()) <= 1e-13
    # the JFB gradient is biased here (W is far from 0), the k-step ones get closer with k
    cos_jfb = _cos(jfb, exact)
    assert float(cos_jfb.min()) < 0.999
    errs = [
        float((warm_input_grad(cell, loss, x, backward_iters=k, **kw).grad - exact).norm())
        for k in (0, 2, 8, 30)
    ]
    assert errs[0] == pytest.approx(float((jfb - exact).norm()), rel=1e-8)
    assert errs[3] < 1e-4 * errs[0] and errs[3] < errs[2] < errs[0] and errs[1] < errs[0]


def test_jfb_gradient_and_pgd_step_by_hand(tanh_problem):
    cell, head, x, y, (_z_ref, _exact, jfb) = tanh_problem
    loss = lambda z: F.cross_entropy(head(z), y, reduction="none")  # noqa: E731
    tight = {"forward_tol": 1e-13, "forward_max_iter": 300}
    wg = warm_input_grad(cell, loss, x, backward_iters=0, u0=torch.ones(5, 6, dtype=DT), **tight)
    assert torch.allclose(wg.grad, jfb, rtol=1e-9, atol=1e-12)  # k = 0 ignores any u0
    assert wg.backward_iters == 0 and bool(wg.backward_residual.isnan().all())
    # one unnormalised PGD step in a ball too big to bite: x + step * (JFB gradient)
    x_adv, st = pgd_attack_warm(
        cell, head, x, y, eps=100.0, step_size=0.3, steps=1, normalize=False, backward_iters=0, **tight
    )
    assert torch.allclose(x_adv, x + 0.3 * jfb, rtol=0, atol=1e-10)
    assert st.backward_iters == [0]


def test_mdeq_gradient_matches_unrolled_backprop(mdeq):
    """Reference: plain iteration (a contraction at init) unrolled 300 times, autograd through it.

    (Central differences are no reference here: the ReLU kinks make them wander by a few
    per cent between h = 1e-3 and 1e-5.)"""
    cell, head = mdeq
    x, y = _images(4, batch=2)
    loss = lambda z: F.cross_entropy(head(z), y, reduction="none")  # noqa: E731
    tight = {"forward_tol": 1e-12, "forward_max_iter": 200}
    wg = warm_input_grad(cell, loss, x, backward_iters=100, backward_tol=1e-11, **tight)
    xr = x.clone().requires_grad_(True)
    z = cell.init_z(x)
    for _ in range(300):
        z = cell(z, xr)
    assert float((cell(z, xr) - z).detach().norm() / z.detach().norm()) < 1e-13
    (unrolled,) = torch.autograd.grad(loss(z).sum(), xr)
    assert torch.allclose(wg.grad, unrolled, rtol=1e-7, atol=1e-10), (wg.grad - unrolled).abs().max()
    # the cheap backwards: 4 steps close, JFB further off
    cos4 = _cos(warm_input_grad(cell, loss, x, backward_iters=4, **tight).grad, wg.grad)
    cos0 = _cos(warm_input_grad(cell, loss, x, backward_iters=0, **tight).grad, wg.grad)
    assert float(cos4.min()) > 0.99 and float(cos4.min()) > float(cos0.min())


# ------------------------------------------------- (c) warm starts save iterations


def test_warm_forward_needs_fewer_iterations(mdeq):
    cell, head = mdeq
    x, y = _images(6, batch=4)
    kw = {"eps": 1.0, "step_size": 0.1, "steps": 4, "forward_tol": 1e-3, "forward_max_iter": 40}
    _, cold = pgd_attack_warm(cell, head, x, y, warm_forward=False, warm_backward=False, **kw)
    _, warm = pgd_attack_warm(cell, head, x, y, **kw)
    assert warm.forward_iters[0] == cold.forward_iters[0]  # same start at the first step
    assert all(w < c for w, c in zip(warm.forward_iters[1:], cold.forward_iters[1:], strict=True)), (
        warm.forward_iters,
        cold.forward_iters,
    )
    assert max(warm.forward_residual) <= 1e-3 and max(cold.forward_residual) <= 1e-3
    # the same 4 backward iterations end closer to the solution from the previous u
    assert warm.backward_iters == cold.backward_iters == [4] * 4
    assert sum(warm.backward_residual[1:]) < sum(cold.backward_residual[1:])


def test_injection_computed_once_per_step():
    torch.manual_seed(0)
    cell, head = CountingCell(SMALL).double(), ClassifierHead(SMALL).double()
    x, y = _images(7, batch=2)
    _, st = pgd_attack_warm(cell, head, x, y, steps=3, forward_max_iter=10)
    assert sum(st.forward_iters) > 6
    assert cell.injections == 3 + 1  # one per step, one for final_loss


# ------------------------------------------------- (d) projection


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_every_iterate_in_ball_and_box(tanh_problem, clip):
    cell, head, _x, y, _ = tanh_problem
    x = torch.rand(5, 4, generator=_gen(12), dtype=DT)
    x[:, 0] = 1.0  # on the box's face: clipping has to act
    eps, seen = 0.8, []
    x_adv, st = pgd_attack_warm(
        cell,
        head,
        x,
        y,
        eps=eps,
        step_size=lambda t: 0.6 / (1 + t),  # a decaying schedule
        steps=8,
        random_start=True,
        generator=_gen(13),
        clip=clip,
        record_iterates=True,
        callback=lambda t, xt: seen.append((t, xt)),
    )
    assert st.step_sizes == pytest.approx([0.6 / (1 + t) for t in range(8)])
    assert [t for t, _ in seen] == list(range(8))
    assert all(torch.equal(a, b) for (_, a), b in zip(seen, st.iterates, strict=True))
    assert torch.equal(st.iterates[-1], x_adv)
    for it in st.iterates:
        assert bool(((it - x).norm(dim=1) <= eps * (1 + 1e-9)).all())
        if clip is not None:
            assert bool(((it >= 0) & (it <= 1)).all())
    assert (float(x_adv.max()) > 1.0) == (clip is None)  # without clip the ball's step leaves the box
    assert float(st.final_loss.mean()) > st.step_loss[0]


def test_step_size_sequence_equals_constant_and_params_untouched(tanh_problem):
    cell, head, x, y, _ = tanh_problem
    x_before = x.clone()
    a, _ = pgd_attack_warm(cell, head, x, y, eps=0.5, step_size=0.2, steps=3)
    b, st = pgd_attack_warm(cell, head, x, y, eps=0.5, step_size=[0.2, 0.2, 0.2], steps=3)
    assert torch.equal(a, b) and st.step_sizes == [0.2] * 3
    assert torch.equal(x, x_before)
    assert all(p.grad is None for p in [*cell.parameters(), *head.parameters()])


# ------------------------------------------------- (e) bad inputs


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": math.inf}, "step_size"),
        ({"step_size": [0.1, 0.1]}, "step_size"),
        ({"step_size": lambda t: 0.1 - 0.1 * t}, "step_size"),
        ({"backward_iters": -1}, "backward_iters"),
        ({"backward_iters": 1.5}, "backward_iters"),
        ({"forward_max_iter": 0}, "forward_max_iter"),
        ({"forward_tol": -1e-3}, "forward_tol"),
        ({"backward_tol": math.nan}, "backward_tol"),
        ({"anderson_m": 0}, "anderson_m"),
        ({"solver": "newton"}, "solver"),
        ({"backward_solver": "cg"}, "backward_solver"),
        ({"clip": (1.0, 0.0)}, "clip"),
    ],
)
def test_pgd_warm_bad_args_raise(tanh_problem, kwargs, name):
    cell, head, x, y, _ = tanh_problem
    with pytest.raises(ValueError, match=name):
        pgd_attack_warm(cell, head, x, y, steps=kwargs.pop("steps", 3), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"steps": 0}, "steps"),
        ({"backward_iters": -2}, "backward_iters"),
        ({"forward_tol": math.inf}, "forward_tol"),
    ],
)
def test_adam_warm_bad_args_raise(tanh_problem, kwargs, name):
    cell, _head, x, _y, _ = tanh_problem
    head = nn.Linear(6, 2).double()
    with pytest.raises(ValueError, match=name):
        adam_latent_warm(cell, head, torch.zeros(5, 2, dtype=DT), x, **kwargs)


def test_warm_input_grad_bad_k_raises(tanh_problem):
    cell, head, x, y, _ = tanh_problem
    with pytest.raises(ValueError, match=r"backward_iters must be an int >= 0"):
        warm_input_grad(cell, lambda z: head(z).sum(1), x, backward_iters=-1)
