"""Tests for jiio_core.DEQ: forward fixed point, IFT / JFB backward, no stored iteration graph.

Every reference is independent of the library: a dense linear solve (and the closed-form
implicit gradient) for a linear cell, autograd through a long unrolled iteration for a
contractive nonlinear cell, one hand-built application of the cell for JFB, and central
finite differences of tightly converged forward solves for the MDEQ cell.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jiio_core import DEQ, ClassifierHead, DEQConfig, MDEQCell, MDEQConfig

DT = torch.float64
SOLVER_NAMES = ("anderson", "broyden", "fixed_point")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scaled(d_out: int, d_in: int, norm: float, gen: torch.Generator) -> torch.Tensor:
    """A random matrix with spectral norm exactly ``norm``."""
    M = torch.randn(d_out, d_in, generator=gen, dtype=DT)
    return norm * M / torch.linalg.matrix_norm(M, 2)


class LinearCell(nn.Module):
    """f(z, x) = A z + B x + c, batched on dim 0."""

    def __init__(self, dz: int, dx: int, seed: int = 0) -> None:
        super().__init__()
        g = _gen(seed)
        self.A = nn.Parameter(_scaled(dz, dz, 0.7, g))
        self.B = nn.Parameter(torch.randn(dz, dx, generator=g, dtype=DT))
        self.c = nn.Parameter(torch.randn(dz, generator=g, dtype=DT))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return z @ self.A.T + x @ self.B.T + self.c


class TanhCell(nn.Module):
    """f(z, x) = tanh(W z + U x + b) with ||W||_2 = 0.6: a contraction with constant 0.6."""

    def __init__(self, dz: int, dx: int, seed: int = 0) -> None:
        super().__init__()
        g = _gen(seed)
        self.W = nn.Parameter(_scaled(dz, dz, 0.6, g))
        self.U = nn.Parameter(torch.randn(dz, dx, generator=g, dtype=DT) / dx**0.5)
        self.b = nn.Parameter(0.5 * torch.randn(dz, generator=g, dtype=DT))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def _grads(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    out["x"] = x.grad.detach().clone()
    return out


def _zero(module: nn.Module, x: torch.Tensor) -> None:
    for p in module.parameters():
        p.grad = None
    x.grad = None


def _assert_close(got: torch.Tensor, ref: torch.Tensor, rtol: float, name: str = "") -> None:
    err = float((got - ref).norm() / ref.norm().clamp_min(1e-300))
    assert err < rtol, f"{name}: relative error {err:.3e} >= {rtol:.1e}"


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_linear_cell_fixed_point_and_closed_form_gradient(solver):
    dz, dx, batch = 6, 4, 5
    cell = LinearCell(dz, dx, seed=1)
    x = torch.randn(batch, dx, generator=_gen(2), dtype=DT, requires_grad=True)
    w = torch.randn(batch, dz, generator=_gen(3), dtype=DT)
    cfg = DEQConfig(solver=solver, tol=1e-12, max_iter=300, backward_tol=1e-12, backward_max_iter=300)
    deq = DEQ(cell, cfg)
    z, info = deq(x, z0=torch.zeros(batch, dz, dtype=DT))

    A, B, c = (t.detach() for t in (cell.A, cell.B, cell.c))
    I = torch.eye(dz, dtype=DT)
    z_ref = torch.linalg.solve(I - A, (x.detach() @ B.T + c).T).T
    assert z.shape == (batch, dz)
    assert bool(info.converged.all()) and not bool(info.diverged.any())
    _assert_close(z.detach(), z_ref, 1e-10, "z*")

    # Closed-form implicit gradient of L = sum(w * z*): with v_b = (I - A)^{-T} w_b,
    # dL/dA = sum_b v_b z*_b^T, dL/dB = sum_b v_b x_b^T, dL/dc = sum_b v_b, dL/dx_b = B^T v_b.
    (w * z).sum().backward()
    V = torch.linalg.solve((I - A).T, w.T).T
    _assert_close(cell.A.grad, V.T @ z_ref, 1e-9, "A")
    _assert_close(cell.B.grad, V.T @ x.detach(), 1e-9, "B")
    _assert_close(cell.c.grad, V.sum(0), 1e-9, "c")
    _assert_close(x.grad, V @ B, 1e-9, "x")
    assert info.backward["mode"] == "ift"


def test_default_initial_state_is_zeros_like_x():
    # Without z0 (and without a cell init_z), z0 is zeros shaped like x: z and x same width.
    d, batch = 5, 3
    cell = LinearCell(d, d, seed=4)
    x = torch.randn(batch, d, generator=_gen(5), dtype=DT)
    with torch.no_grad():
        z, info = DEQ(cell, DEQConfig(tol=1e-12, max_iter=200))(x)
    A, B, c = (t.detach() for t in (cell.A, cell.B, cell.c))
    z_ref = torch.linalg.solve(torch.eye(d, dtype=DT) - A, (x @ B.T + c).T).T
    _assert_close(z, z_ref, 1e-10)
    assert not z.requires_grad


# --------------------------------------------------------------------------- backward


def _unrolled_reference(cell: TanhCell, x: torch.Tensor, w: torch.Tensor, n: int = 300):
    """Gradients of sum(w * z_n) with z_{k+1} = f(z_k, x), z_0 = 0, by plain autograd."""
    _zero(cell, x)
    z = torch.zeros(x.shape[0], cell.W.shape[0], dtype=DT)
    for _ in range(n):
        z = cell(z, x)
    (w * z).sum().backward()
    ref = _grads(cell, x)
    _zero(cell, x)
    return z.detach(), ref


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_ift_backward_matches_unrolled_autograd(solver):
    dz, dx, batch = 7, 3, 4
    cell = TanhCell(dz, dx, seed=6)
    x = torch.randn(batch, dx, generator=_gen(7), dtype=DT, requires_grad=True)
    w = torch.randn(batch, dz, generator=_gen(8), dtype=DT)
    z_ref, ref = _unrolled_reference(cell, x, w)

    cfg = DEQConfig(
        solver=solver, tol=1e-12, max_iter=200, backward="ift", backward_tol=1e-12, backward_max_iter=200
    )
    deq = DEQ(cell, cfg)
    z, info = deq(x, z0=torch.zeros(batch, dz, dtype=DT))
    assert bool(info.converged.all())
    _assert_close(z.detach(), z_ref, 1e-10, "z*")
    assert info.backward == {}  # nothing ran yet: the backward solve is lazy
    (w * z).sum().backward()
    got = _grads(cell, x)
    for name in ("W", "U", "b", "x"):
        _assert_close(got[name], ref[name], 1e-8, name)
    assert info.backward["mode"] == "ift"
    assert info.backward["converged"] == 1.0


def test_jfb_backward_is_one_application_of_f_at_detached_fixed_point():
    dz, dx, batch = 7, 3, 4
    cell = TanhCell(dz, dx, seed=9)
    x = torch.randn(batch, dx, generator=_gen(10), dtype=DT, requires_grad=True)
    target = torch.randn(batch, dz, generator=_gen(11), dtype=DT)

    def outer(z: torch.Tensor) -> torch.Tensor:  # nonlinear outer loss
        return ((z - target) ** 2).sum() + z.pow(3).sum()

    cfg = DEQConfig(tol=1e-13, max_iter=200, backward="jfb")
    z, info = DEQ(cell, cfg)(x, z0=torch.zeros(batch, dz, dtype=DT))
    outer(z).backward()
    got = _grads(cell, x)
    assert info.backward["mode"] == "jfb"

    # Reference by hand: z* detached (from plain iteration), one application of f with autograd.
    _zero(cell, x)
    with torch.no_grad():
        zs = torch.zeros(batch, dz, dtype=DT)
        for _ in range(300):
            zs = cell(zs, x)
    outer(cell(zs, x)).backward()
    ref = _grads(cell, x)
    for name in ("W", "U", "b", "x"):
        _assert_close(got[name], ref[name], 1e-9, name)

    # ... and JFB is genuinely not the IFT gradient here (the check above can discriminate).
    _zero(cell, x)
    z2, _ = DEQ(cell, DEQConfig(tol=1e-13, max_iter=200, backward_tol=1e-12, backward_max_iter=200))(
        x, z0=torch.zeros(batch, dz, dtype=DT)
    )
    outer(z2).backward()
    ift = _grads(cell, x)
    assert float((ift["W"] - got["W"]).norm() / ift["W"].norm()) > 1e-3


# --------------------------------------------------------------------------- memory


class CountingCell(TanhCell):
    """Counts its calls, and separately those made with autograd recording."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.grad_calls = 0

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.grad_calls += int(torch.is_grad_enabled())
        return super().forward(z, x)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_forward_stores_no_iteration_graph(solver):
    dz, batch = 6, 3
    cell = CountingCell(dz, dz, seed=12)
    x = torch.randn(batch, dz, generator=_gen(13), dtype=DT, requires_grad=True)
    deq = DEQ(cell, DEQConfig(solver=solver, tol=1e-10, max_iter=100))

    z, info = deq(x)
    assert info.iterations > 5 and cell.calls >= info.iterations
    assert cell.grad_calls == 1  # only the attach step records a graph
    assert z.requires_grad

    cell.calls = cell.grad_calls = 0
    with torch.no_grad():
        z, info = deq(x)
    assert cell.calls >= info.iterations > 5
    assert cell.grad_calls == 0
    assert not z.requires_grad


# --------------------------------------------------------------------------- divergence


class Expanding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(3.0, dtype=DT))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.a * z + x


@pytest.mark.parametrize("grad_mode", [True, False])
def test_divergent_cell_is_flagged_and_output_finite(grad_mode):
    x = torch.randn(3, 4, generator=_gen(14), dtype=DT)
    deq = DEQ(Expanding(), DEQConfig(solver="fixed_point", max_iter=100, tol=1e-8))
    with torch.set_grad_enabled(grad_mode):
        z, info = deq(x)
    assert bool(info.diverged.all())
    assert not bool(info.converged.any())
    assert bool(torch.isfinite(z).all())
    # z_k = (3^k - 1)/2 x exactly; divergence is caught (residual 3^k |x| > 1e4 |x|) by k = 9,
    # so |z| stays below (3^9 - 1)/2 |x|.
    assert float((z.detach().norm(dim=1) / x.norm(dim=1)).max()) < (3**9 - 1) / 2 + 1e-6


# --------------------------------------------------------------------------- MDEQ


def _mdeq(seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    cfg = MDEQConfig.tiny()
    return MDEQCell(cfg).to(dtype), ClassifierHead(cfg).to(dtype)


def test_mdeq_classifier_converges_and_backpropagates():
    cell, head = _mdeq(0)
    deq = DEQ(cell, DEQConfig(tol=1e-3, max_iter=60))
    g = _gen(15)
    x = torch.randn(4, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    z, info = deq(x)
    assert z.shape == (4, cell.z_dim)
    assert bool(info.converged.all()) and not bool(info.diverged.any())
    assert float(info.rel_residual.max()) <= 1e-3
    F.cross_entropy(head(z), y).backward()
    assert info.backward["mode"] == "ift"
    for name, p in cell.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
    assert any(float(p.grad.abs().max()) > 0 for p in cell.parameters())


def test_mdeq_input_gradient_matches_finite_differences():
    cell, head = _mdeq(1, DT)
    cfg = DEQConfig(tol=1e-13, max_iter=150, backward_tol=1e-13, backward_max_iter=150)
    deq = DEQ(cell, cfg)
    g = _gen(16)
    x0 = torch.randn(2, 1, 16, 16, generator=g, dtype=DT)
    y = torch.randint(0, 10, (2,), generator=g)

    def loss_at(x: torch.Tensor) -> float:
        with torch.no_grad():
            z, info = deq(x)
            assert float(info.rel_residual.max()) < 1e-11
            return float(F.cross_entropy(head(z), y, reduction="sum"))

    x = x0.clone().requires_grad_(True)
    z, _ = deq(x)
    F.cross_entropy(head(z), y, reduction="sum").backward()
    grad = x.grad.detach()
    assert bool(torch.isfinite(grad).all())

    h = 1e-5
    # One pixel direction (the one with the largest sensitivity, so the FD quotient is well
    # above its rounding floor) and one random direction over all pixels of both samples.
    pix = torch.zeros_like(x0).view(-1)
    pix[int(grad.abs().view(-1).argmax())] = 1.0
    rnd = torch.randn(x0.shape, generator=g, dtype=DT)
    for v in (pix.view_as(x0), rnd / rnd.norm()):
        fd = (loss_at(x0 + h * v) - loss_at(x0 - h * v)) / (2 * h)
        ana = float((grad * v).sum())
        assert abs(ana - fd) / abs(fd) < 1e-4, (ana, fd)
