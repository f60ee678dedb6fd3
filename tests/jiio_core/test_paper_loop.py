"""``JIIOConfig.paper(...)`` against an independent re-implementation of the authors' loop.

The reference below is written from a description of the paper's released code (JIIO,
Gurumurthy et al., NeurIPS 2021; not from jiio_core): start z = 0, delta = 0, mu = 0; two plain
evaluations, then Anderson type I in the bordered form ``[[0, 1^T], [1, X G^T]]`` with the
sum-to-one constraint, beta = 1, no regularisation; alpha_x switched when
``(it + 1) % max(50, int(5 T / 8)) == 0``; the x step along the gradient divided by its
norm + 1e-8, then scaled back onto the eps-ball; the kept iterate per sample by
``rel = |F - X| / (1e-5 + |F|)`` (kept if k < 10, or a new minimum, or a lower cost with
rel < 1.3 x the minimum). One change of this project is mirrored: x is projected again
after every Anderson mix (the paper's loop leaves the ball there).

The state is 2 * 64 + 32 = 160 numbers per sample, well above the Anderson memory of 20,
so the iteration does not amplify rounding (with a state smaller than the memory the
history is near-singular and two implementations drift apart at rounding level x 1e3 per
iteration).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jiio_core import JIIOConfig, jiio_solve, l2_ball

DT = torch.float64
N, D, C, B, EPS = 64, 32, 10, 4, 3.0


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, N, generator=g, dtype=DT)
    W = 0.9 * W / torch.linalg.matrix_norm(W, 2)
    U = torch.randn(N, D, generator=g, dtype=DT) / D**0.5
    b = 0.3 * torch.randn(N, generator=g, dtype=DT)
    head = torch.randn(C, N, generator=g, dtype=DT) * 2 / N**0.5
    x = torch.randn(B, D, generator=g, dtype=DT) * 0.5
    y = torch.randint(0, C, (B,), generator=g)

    def cell(z: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ W.T + inp @ U.T + b)

    def cost(z: torch.Tensor) -> torch.Tensor:  # the paper's C * (-CE), C = 10 classes
        return -C * F.cross_entropy(z @ head.T, y, reduction="none")

    return cell, cost, x


def _scale_to_ball(d: torch.Tensor) -> torch.Tensor:
    return d * torch.clamp(EPS / d.norm(dim=1, keepdim=True).clamp_min(1e-300), max=1.0)


def authors_loop(cell, cost, center, T=80, m=20, alpha_x=(0.6, 0.2), a_z=0.8, a_mu=0.6):
    """The paper code's JIIO + Anderson loop on the state X = [z, mu, delta]. Returns every
    iterate X_k (k = 0 .. T-1), every cost and the kept iterate."""
    period = max(50, int(T * 5 / 8))
    step = [alpha_x[0]]

    def F_map(X: torch.Tensor, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        z, mu, delta = X[:, :N], X[:, N : 2 * N], X[:, 2 * N :]
        with torch.enable_grad():
            z_ = z.clone().requires_grad_(True)
            d_ = delta.clone().requires_grad_(True)
            fz, c = cell(z_, center + d_), cost(z_)
            (dc,) = torch.autograd.grad(c.sum(), z_, retain_graph=True)
            jz, jx = torch.autograd.grad(fz, (z_, d_), mu)
        if (it + 1) % period == 0:
            step[0] = alpha_x[1]
        mu_new = mu + a_mu * (dc + jz - mu)
        z_new = z + a_z * (fz.detach() - z)
        d_new = _scale_to_ball(delta - step[0] * jx / (jx.norm(dim=1, keepdim=True) + 1e-8))
        return torch.cat([z_new, mu_new, d_new], dim=1), c.detach()

    X0 = torch.zeros(B, 2 * N + D, dtype=DT)
    F0, c0 = F_map(X0, 0)
    X1 = F0.clone()
    F1, c1 = F_map(X1, 1)
    Xs, Fs, costs = [X0, X1], [F0, F1], [c0, c1]
    keep, keep_cost = X1.clone(), c1.clone()
    lowest = torch.full((B,), 1e12, dtype=DT)
    for k in range(2, T):
        n = min(k, m)
        Xh, Fh = torch.stack(Xs[-n:], 1), torch.stack(Fs[-n:], 1)
        Hm = Xh @ (Fh - Xh).transpose(1, 2)  # H = X G^T
        K = torch.zeros(B, n + 1, n + 1, dtype=DT)
        K[:, 0, 1:] = K[:, 1:, 0] = 1.0
        K[:, 1:, 1:] = Hm
        rhs = torch.zeros(B, n + 1, 1, dtype=DT)
        rhs[:, 0] = 1.0
        weights = torch.linalg.solve(K, rhs)[:, 1:, 0]
        Xk = (weights[:, :, None] * Fh).sum(1)  # beta = 1
        Xk[:, 2 * N :] = _scale_to_ball(Xk[:, 2 * N :])  # the project's re-projection
        Fk, ck = F_map(Xk, k)
        rel = (Fk - Xk).norm(dim=1) / (1e-5 + Fk.norm(dim=1))
        new_min = (rel < lowest) | (k < 10)
        take = new_min | ((ck < keep_cost) & (rel < 1.3 * lowest))
        keep[take], keep_cost[take], lowest[new_min] = Xk[take], ck[take], rel[new_min]
        Xs.append(Xk)
        Fs.append(Fk)
        costs.append(ck)
    return Xs, costs, keep


@pytest.mark.parametrize(("T", "seed"), [(80, 0), (80, 1), (20, 0), (20, 1)])
def test_paper_config_reproduces_the_authors_loop_iterate_by_iterate(T, seed):
    """T = 80: the paper's length, alpha_x dropped from iteration 49 on; T = 20: unconverged,
    so the kept iterate is not the last one (and no drop: 49 >= 20)."""
    cell, cost, x = _problem(seed)
    Xs, costs, keep = authors_loop(cell, cost, x, T=T)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class RecordingCell:
        def __call__(self, z: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
            seen.append((z.detach().clone(), inp.detach().clone()))
            return cell(z, inp)

        def init_z(self, inp: torch.Tensor) -> torch.Tensor:
            return inp.new_zeros(inp.shape[0], N)

    cfg = JIIOConfig.paper("mnist_adversarial").replace(max_iter=T)
    with torch.no_grad():  # no z0: paper() starts from init_z, zeros, without a cell step
        res = jiio_solve(RecordingCell(), cost, x, config=cfg, project=l2_ball(x, EPS))
    assert res.iterations == len(seen) == len(Xs) == T  # one cell evaluation per iteration
    for k, ((z, inp), X) in enumerate(zip(seen, Xs, strict=True)):
        err = torch.cat([z - X[:, :N], inp - x - X[:, 2 * N :]], dim=1).norm(dim=1)
        size = X.norm(dim=1).clamp_min(1.0)
        assert float((err / size).max()) < 1e-8, (k, err)
    objective = torch.stack(costs)
    assert torch.allclose(res.trace["objective"], objective, rtol=1e-8, atol=1e-8)
    # the kept iterate: x, z and mu
    assert float((res.x - x - keep[:, 2 * N :]).norm(dim=1).max()) < 1e-8
    assert float((res.z - keep[:, :N]).norm(dim=1).max()) < 1e-8
    assert float((res.mu - keep[:, N : 2 * N]).norm(dim=1).max()) < 1e-8
    assert float((res.x - x).norm(dim=1).max()) <= EPS * (1 + 1e-12)


def test_the_reference_exercises_the_choices():
    """The comparison above would not notice a wrong kept-iterate rule or a wrong switch
    iteration if they did not matter on these problems: they do, by far more than 1e-8."""
    cell, cost, x = _problem(0)
    Xs, _, keep = authors_loop(cell, cost, x, T=20)
    assert max(float((keep[i] - Xs[-1][i]).norm()) for i in range(B)) > 1e-2  # not simply the last
    Xs, _, _ = authors_loop(cell, cost, x)
    # F at iteration 49 already takes the dropped step, so X_50 is the first iterate to differ
    same, _, _ = authors_loop(cell, cost, x, alpha_x=(0.6, 0.6))
    assert torch.equal(same[49], Xs[49])
    moved = max(
        float(((a - b).norm(dim=1) / b.norm(dim=1)).max()) for a, b in zip(same[50:], Xs[50:], strict=True)
    )
    assert moved > 1e-6
