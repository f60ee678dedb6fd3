"""One conformance suite that every fixed-point solver passes, plus Anderson specifics.

References are independent of the solvers: linear fixed points by a dense linear solve,
nonlinear ones by thousands of plain contraction steps in float64.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from jiio_core import anderson, broyden, fixed_point
from jiio_core.mixers import AndersonMixer
from jiio_core.solvers import solve

SOLVERS = {
    "anderson": partial(anderson, m=10),
    "anderson_typeI": partial(anderson, m=10, kind="I"),
    "broyden": broyden,
    "fixed_point": fixed_point,
}


def _sym_contraction(d: int, rho: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    eig = torch.linspace(-rho, rho, d, dtype=torch.float64)
    return (q @ torch.diag(eig) @ q.T).to(dtype)


@pytest.fixture(params=list(SOLVERS), ids=list(SOLVERS))
def solver(request):
    return SOLVERS[request.param]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 7])
def test_linear_contraction_known_fixed_point(solver, dtype, batch):
    d = 20
    A = _sym_contraction(d, 0.9, dtype)
    b = torch.randn(batch, d, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - A.double(), b.double().T).T
    tol = 1e-11 if dtype == torch.float64 else 1e-6
    res = solver(lambda x: x @ A.T + b, torch.zeros(batch, d, dtype=dtype), tol=tol, max_iter=400)
    assert res.x.dtype == dtype and res.x.shape == (batch, d)
    assert bool(res.converged.all()) and not bool(res.diverged.any())
    err = (res.x.double() - ref).norm(dim=1) / ref.norm(dim=1)
    assert float(err.max()) < (1e-9 if dtype == torch.float64 else 2e-5)
    assert res.trace_abs.shape == (res.iterations, batch)


def test_nonlinear_map_any_trailing_shape(solver):
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    W = 0.8 * W / torch.linalg.matrix_norm(W, 2)
    b = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)

    def g(x):  # x: (B, 3, 4)
        return torch.tanh((x.reshape(-1, 12) @ W.T).reshape(x.shape) + b)

    ref = torch.zeros_like(b)
    for _ in range(3000):  # 0.8^3000: the reference is exact to machine precision
        ref = g(ref)
    res = solver(g, torch.zeros_like(b), tol=1e-12, max_iter=300)
    assert bool(res.converged.all())
    assert torch.allclose(res.x, ref, atol=1e-10, rtol=0)


def test_sample_that_converges_first_stops_changing(solver):
    d = 10
    A = _sym_contraction(d, 1.0, torch.float64, seed=3)
    c = torch.tensor([0.1, 0.9], dtype=torch.float64)[:, None]
    b = torch.ones(2, d, dtype=torch.float64)

    def g(x):
        return c[: x.shape[0]] * (x @ A.T) + b[: x.shape[0]]

    res = solver(g, torch.zeros(2, d, dtype=torch.float64), tol=1e-10, max_iter=400)
    assert bool(res.converged.all())
    assert int(res.nstep[0]) < int(res.nstep[1])
    # Sample 0 alone gives the same answer: its iterates never depended on sample 1's.
    alone = solver(g, torch.zeros(1, d, dtype=torch.float64), tol=1e-10, max_iter=400)
    assert int(alone.nstep[0]) == int(res.nstep[0])
    assert torch.allclose(alone.x[0], res.x[0], atol=1e-12, rtol=0)
    # After it stopped, its residual trace is flat.
    k = int(res.nstep[0])
    assert torch.all(res.trace_abs[k - 1 :, 0] == res.trace_abs[k - 1, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_divergent_map_is_flagged_never_nan(solver, dtype):
    # sample 0: x -> x + 1 (no fixed point) whose 5th evaluation overflows to NaN, as a
    # network's would; sample 1: contracting; sample 2: g is NaN from the start.
    calls = []

    def g(x):
        calls.append(1)
        out = 0.5 * x + 1.0
        out[0] = x[0] + 1.0 if len(calls) < 5 else float("nan")
        out[2] = float("nan")
        return out

    res = solver(g, torch.zeros(3, 4, dtype=dtype), tol=1e-6, max_iter=200)
    assert res.diverged.tolist() == [True, False, True]
    assert res.converged.tolist() == [False, True, False]
    assert bool(torch.isfinite(res.x).all())
    assert bool(torch.isfinite(res.trace_abs[:, :2]).all())
    assert not bool(torch.isnan(res.trace_abs).any())
    assert 1 <= int(res.nstep[0]) <= 4  # stopped at its last good iterate
    assert torch.allclose(res.x[1], torch.full((4,), 2.0, dtype=dtype), atol=1e-4)


def test_exploding_residual_stops_early():
    # Plain iteration of x -> 3x + 1 explodes (its fixed point -1/2 repels).
    res = fixed_point(lambda x: 3.0 * x + 1.0, torch.zeros(2, 3), tol=1e-6, max_iter=500)
    assert bool(res.diverged.all())
    assert res.iterations < 30
    assert bool(torch.isfinite(res.x).all())


@pytest.mark.parametrize("kind", ["I", "II"])
def test_anderson_regularisation_is_scale_invariant(kind):
    """With residuals ~1e-8 or ~1e+3 Anderson takes the same steps (not plain averaging)."""
    d = 40
    A = _sym_contraction(d, 0.99, torch.float64, seed=4)
    b = torch.randn(1, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - A, b.T).T
    runs = {}
    for s in (1e-8, 1.0, 1e3):
        runs[s] = anderson(
            lambda x, s=s: x @ A.T + s * b,
            torch.zeros(1, d, dtype=torch.float64),
            m=20,
            kind=kind,
            tol=1e-10,
            max_iter=300,
        )
        assert bool(runs[s].converged.all()), s
        assert float((runs[s].x / s - ref).norm() / ref.norm()) < 1e-8
    assert runs[1e-8].iterations == runs[1.0].iterations == runs[1e3].iterations
    plain = fixed_point(
        lambda x: x @ A.T + b, torch.zeros(1, d, dtype=torch.float64), tol=1e-10, max_iter=3000
    )
    # Plain iteration needs ~log(1e-10)/log(0.99) ~ 2300 steps; Anderson far fewer.
    assert runs[1.0].iterations * 10 < plain.iterations


def test_absolute_regularisation_would_fail_at_small_scale():
    """Guards the test above: an absolute lambda at 1e-8 residuals degrades Anderson."""
    d = 40
    A = _sym_contraction(d, 0.99, torch.float64, seed=4)
    b = torch.randn(1, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    class AbsoluteLam(AndersonMixer):  # lam * s with s fixed to 1: an absolute lambda
        def step(self, x, gx, active):
            self.lam = 1e-4 / max(float((gx - x).norm()) ** 2, 1e-300)
            return super().step(x, gx, active)

    small = solve(
        lambda x: x @ A.T + 1e-8 * b,
        torch.zeros(1, d, dtype=torch.float64),
        AbsoluteLam(m=20),
        tol=1e-10,
        max_iter=300,
    )
    good = anderson(
        lambda x: x @ A.T + 1e-8 * b, torch.zeros(1, d, dtype=torch.float64), m=20, tol=1e-10, max_iter=300
    )
    assert small.iterations > 3 * good.iterations


def test_bad_arguments_raise_clear_errors():
    g = lambda x: x  # noqa: E731
    with pytest.raises(ValueError, match="max_iter"):
        anderson(g, torch.zeros(1, 2), max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        fixed_point(g, torch.zeros(1, 2), tol=-1.0)
    with pytest.raises(ValueError, match="stop_mode"):
        broyden(g, torch.zeros(1, 2), stop_mode="max")
    with pytest.raises(ValueError, match="m must be"):
        anderson(g, torch.zeros(1, 2), m=0)


def test_tol_zero_runs_every_iteration(solver):
    g = lambda x: 0.5 * torch.cos(x)  # noqa: E731
    res = solver(g, torch.zeros(2, 3, dtype=torch.float64), tol=0.0, max_iter=4)
    assert res.iterations == 4
    assert math.isclose(float(res.x[0, 0]), 0.4501836112948735, rel_tol=0.05)
