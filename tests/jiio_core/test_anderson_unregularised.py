"""Anderson without a ridge (``lam=0``, the JIIO paper code's setting): the bordered
sum-to-one system, and ``lam = 1e-3`` on the diagonal only where that solve fails.

References: the closed-form fixed point of a linear map (dense solve), and the weights of
the bordered system ``[[0, 1^T], [1, H]]`` built here with numpy from the recorded history
(``H = X G^T`` for type I, ``G G^T`` for type II).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jiio_core import anderson, fixed_point
from jiio_core.mixers import AndersonMixer

D = 12


def _linear(seed: int = 0, rho: float = 0.99):
    """x -> A x + b, A non-symmetric with eigenvalues spread over [-rho, rho]: plain
    iteration is slow."""
    gen = torch.Generator().manual_seed(seed)
    S = (
        torch.eye(D, dtype=torch.float64)
        + 0.3 * torch.randn(D, D, generator=gen, dtype=torch.float64) / D**0.5
    )
    eig = torch.linspace(-rho, rho, D, dtype=torch.float64)
    A = S @ torch.diag(eig) @ torch.linalg.inv(S)
    b = torch.randn(3, D, generator=gen, dtype=torch.float64)
    ref = torch.linalg.solve(torch.eye(D, dtype=torch.float64) - A, b.T).T
    return A, b, ref


@pytest.mark.parametrize("kind", ["I", "II"])
def test_unregularised_anderson_converges_to_the_closed_form(kind):
    """With memory above the dimension Anderson solves a linear fixed point in ~D steps;
    plain iteration at spectral radius 0.99 would need thousands."""
    A, b, ref = _linear()
    res = anderson(lambda x: x @ A.T + b, torch.zeros(3, D, dtype=torch.float64), m=D + 4, lam=0.0,
                   kind=kind, tol=1e-11, max_iter=3 * D)  # fmt: skip
    assert bool(res.converged.all()) and not bool(res.diverged.any())
    assert float(((res.x - ref).norm(dim=1) / ref.norm(dim=1)).max()) < 1e-8
    plain = fixed_point(
        lambda x: x @ A.T + b, torch.zeros(3, D, dtype=torch.float64), tol=1e-11, max_iter=3 * D
    )
    assert not bool(plain.converged.any())


def _reference_weights(X: np.ndarray, Gx: np.ndarray, kind: str, lam: float) -> np.ndarray:
    """Anderson weights from a history (n, D) of iterates and images, by the definitions:
    lam = 0: the bordered system; lam > 0: (H + lam max|H| I) s = 1, alpha = s / sum(s),
    with type I's H centred on the newest iterate (see AndersonMixer)."""
    n = X.shape[0]
    if n == 1:
        return np.ones(1)
    G = Gx - X
    if kind == "II":
        H = G @ G.T
    elif lam > 0:
        H = (X - X[-1]) @ G.T  # the mixer's centred form: the ridge acts on it
    else:
        H = X @ G.T
    if lam > 0:
        s = np.linalg.solve(H + lam * np.abs(H).max() * np.eye(n), np.ones(n))
        return s / s.sum()
    K = np.zeros((n + 1, n + 1))
    K[0, 1:] = K[1:, 0] = 1.0
    K[1:, 1:] = H
    return np.linalg.solve(K, np.eye(n + 1)[0])[1:]


@pytest.mark.parametrize("lam", [0.0, 1e-5])
@pytest.mark.parametrize("kind", ["I", "II"])
def test_weights_are_those_of_the_definition_and_sum_to_one(kind, lam):
    """Every step, including the first m while the memory fills (whose H once lacked its
    first diagonal entry) and after it wraps around."""
    A, b, _ = _linear(seed=1)
    m = 5
    mixer = AndersonMixer(m=m, lam=lam, kind=kind)
    x = torch.zeros(3, D, dtype=torch.float64) + 0.1
    xs, gs = [], []
    for _ in range(12):
        gx = x @ A.T + b
        xs.append(x.numpy().copy())
        gs.append(gx.numpy().copy())
        out = mixer.step(x, gx, torch.ones(3, dtype=torch.bool))
        n = min(len(xs), m)
        X, Gx = np.stack(xs[-n:], 1), np.stack(gs[-n:], 1)  # (B, n, D), oldest first
        for i in range(3):
            want = _reference_weights(X[i], Gx[i], kind, lam)
            assert np.allclose(out[i].numpy(), want @ Gx[i], rtol=1e-8, atol=1e-10), (len(xs), i)
            # the mixer's ring buffer keeps iterate t in slot t % m
            got = np.array([mixer.weights[i, (len(xs) - n + j) % m].item() for j in range(n)])
            assert np.allclose(got, want, rtol=1e-6, atol=1e-9), (len(xs), i)
        assert np.allclose(mixer.weights.sum(1).numpy(), 1.0, atol=1e-12)
        assert float(out.norm(dim=1).min()) > 0.1  # never a reset to the zero vector
        x = out
    assert mixer.fallbacks == [0, 0]


@pytest.mark.parametrize("kind", ["I", "II"])
def test_singular_bordered_system_retries_with_lam_1e_3(kind):
    """The same iterate twice makes the bordered matrix exactly singular (two equal rows):
    the retry adds 1e-3 to the diagonal of H (for type I of the uncentred X G^T, as the
    paper code), whose solution here is equal weights."""
    mixer = AndersonMixer(m=4, lam=0.0, kind=kind)
    x = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)
    gx = torch.tensor([[0.5, 2.5, 0.0]], dtype=torch.float64)
    active = torch.ones(1, dtype=torch.bool)
    mixer.step(x, gx, active)
    out = mixer.step(x, gx, active)
    g = (gx - x)[0].numpy()
    h = float(x[0].numpy() @ g) if kind == "I" else float(g @ g)
    K = np.array([[0.0, 1.0, 1.0], [1.0, h + 1e-3, h], [1.0, h, h + 1e-3]])
    want = np.linalg.solve(K, [1.0, 0.0, 0.0])[1:]
    assert np.allclose(want, [0.5, 0.5])
    assert mixer.fallbacks == [1, 0]
    assert np.allclose(mixer.weights[0].numpy(), want, atol=1e-12)
    assert torch.allclose(out, gx)
