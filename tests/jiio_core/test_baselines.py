"""Tests for the baselines: L2 PGD on a DEQ classifier and Adam over a DEQ decoder's latent.

References: the closed-form worst-case L2 perturbation of a linear two-class classifier,
the closed-form least-squares latent of a linear decoder, and losses recomputed here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jiio_core import (
    DEQ,
    ClassifierHead,
    DEQConfig,
    ImageHead,
    MDEQCell,
    MDEQConfig,
    adam_latent,
    pgd_attack,
)

DT = torch.float64
FAST = DEQConfig(tol=1e-4, max_iter=30, backward_tol=1e-4, backward_max_iter=30)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class DEQClassifier(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        cfg = MDEQConfig.tiny()
        self.deq = DEQ(MDEQCell(cfg), FAST)
        self.head = ClassifierHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, _ = self.deq(x)
        return self.head(z)


class DEQDecoder(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        cfg = MDEQConfig.tiny(latent_dim=8)
        self.deq = DEQ(MDEQCell(cfg), FAST)
        self.head = ImageHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, _ = self.deq(x)
        return self.head(z)


@pytest.fixture(scope="module")
def classifier():
    return DEQClassifier(0).double()


@pytest.fixture(scope="module")
def decoder():
    return DEQDecoder(1).double()


def _ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


# --------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_pgd_on_deq_increases_loss_within_ball(classifier, eps, random_start):
    g = _gen(2)
    x = torch.randn(4, 1, 16, 16, generator=g, dtype=DT)
    y = torch.randint(0, 10, (4,), generator=g)
    x_before = x.clone()
    params_before = [p.detach().clone() for p in classifier.parameters()]
    clean = _ce(classifier, x, y)

    x_adv, st = pgd_attack(
        classifier,
        x,
        y,
        eps=eps,
        step_size=eps / 2,
        steps=3,
        normalize=True,
        random_start=random_start,
        generator=_gen(3),
    )
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert torch.equal(x, x_before)
    dist = (x_adv - x).reshape(4, -1).norm(dim=1)
    assert bool((dist <= eps * (1 + 1e-6)).all()), dist
    assert float(dist.min()) > 0.5 * eps  # it actually moved (normalised steps of eps/2)
    assert st.steps == 3 and len(st.step_loss) == 3
    if not random_start:
        assert math.isclose(st.step_loss[0], float(clean.mean()), rel_tol=1e-6)
    # final_loss is the loss at the returned input, recomputed independently here
    assert torch.allclose(st.final_loss, _ce(classifier, x_adv, y), rtol=1e-6, atol=1e-9)
    assert float(st.final_loss.mean()) > float(clean.mean())
    for p, p0 in zip(classifier.parameters(), params_before, strict=True):
        assert p.grad is None
        assert torch.equal(p.detach(), p0)


def _linear_problem(seed: int, d: int = 5, batch: int = 6):
    g = _gen(seed)
    lin = nn.Linear(d, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g, dtype=DT))
        lin.bias.copy_(torch.randn(2, generator=g, dtype=DT))
    x = torch.randn(batch, d, generator=g, dtype=DT)
    y = torch.randint(0, 2, (batch,), generator=g)
    return lin, x, y


def _linear_optimum(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float):
    """Two classes: CE = softplus((w_o - w_y).x + b_o - b_y), increasing in the margin, so the
    worst L2 perturbation is eps * d / |d| with d = w_o - w_y; loss softplus(m + eps |d|)."""
    W, b = lin.weight.detach(), lin.bias.detach()
    o = 1 - y
    d = W[o] - W[y]
    margin = (d * x).sum(1) + b[o] - b[y]
    dn = d.norm(dim=1)
    return x + eps * d / dn[:, None], F.softplus(margin + eps * dn)


@pytest.mark.parametrize(
    ("normalize", "random_start", "step_size", "steps"),
    [(True, False, 0.3, 10), (True, True, 0.3, 200), (False, False, 0.5, 200)],
)
def test_pgd_on_linear_classifier_reaches_closed_form_optimum(normalize, random_start, step_size, steps):
    lin, x, y = _linear_problem(4)
    eps = 0.7
    x_star, loss_star = _linear_optimum(lin, x, y, eps)
    x_adv, st = pgd_attack(
        lin,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        normalize=normalize,
        random_start=random_start,
        generator=_gen(5),
    )
    assert torch.allclose(st.final_loss, loss_star, rtol=0, atol=1e-4), (st.final_loss, loss_star)
    assert torch.allclose(x_adv, x_star, rtol=0, atol=1e-3)
    assert bool(((x_adv - x).norm(dim=1) <= eps * (1 + 1e-6)).all())
    assert lin.weight.grad is None and lin.bias.grad is None


def test_pgd_eps_zero_returns_input():
    lin, x, y = _linear_problem(6)
    x_adv, st = pgd_attack(lin, x, y, eps=0.0, step_size=0.1, steps=3)
    assert torch.equal(x_adv, x)
    assert torch.allclose(st.final_loss, F.cross_entropy(lin(x), y, reduction="none").detach())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": -0.1},
        {"step_size": 0.0},
        {"step_size": -1.0},
        {"steps": 0},
        {"steps": -3},
    ],
)
def test_pgd_bad_args_raise(kwargs):
    lin, x, y = _linear_problem(7)
    with pytest.raises(ValueError):
        pgd_attack(lin, x, y, **kwargs)


@pytest.mark.parametrize("kwargs", [{"eps": math.nan}, {"step_size": math.nan}, {"steps": 2.5}])
def test_pgd_nan_args_raise(kwargs):
    lin, x, y = _linear_problem(7)
    with pytest.raises(ValueError):
        pgd_attack(lin, x, y, **kwargs)


# --------------------------------------------------------------------------- Adam


def _sse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).reshape(out.shape[0], -1).sum(1)


def test_adam_on_deq_decoder_decreases_reconstruction_loss(decoder):
    g = _gen(8)
    with torch.no_grad():
        target = decoder(torch.randn(3, 8, generator=g, dtype=DT))
    x0 = torch.zeros(3, 8, dtype=DT)
    with torch.no_grad():
        loss0 = _sse(decoder(x0), target)
    x, st = adam_latent(decoder, target, x0, steps=8, lr=0.2)
    assert x.shape == x0.shape and not x.requires_grad
    assert torch.equal(x0, torch.zeros(3, 8, dtype=DT))
    assert st.steps == 8 and len(st.step_loss) == 8
    assert math.isclose(st.step_loss[0], float(loss0.mean()), rel_tol=1e-6)
    with torch.no_grad():
        final = _sse(decoder(x), target)
    assert torch.allclose(st.final_loss, final, rtol=1e-6)
    assert bool((final < loss0).all())
    assert float(final.mean()) < 0.7 * float(loss0.mean())
    assert all(p.grad is None for p in decoder.parameters())


def test_adam_on_linear_decoder_recovers_least_squares_latent():
    g = _gen(9)
    k, n, batch = 4, 12, 5
    dec = nn.Linear(k, n).double()
    with torch.no_grad():
        dec.weight.copy_(torch.randn(n, k, generator=g, dtype=DT))
        dec.bias.copy_(torch.randn(n, generator=g, dtype=DT))
    x_true = torch.randn(batch, k, generator=g, dtype=DT)
    with torch.no_grad():
        target = dec(x_true) + 0.1 * torch.randn(batch, n, generator=g, dtype=DT)
    W, b = dec.weight.detach(), dec.bias.detach()
    x_ls = torch.linalg.lstsq(W, (target - b).T).solution.T  # closed-form least squares
    assert float((x_ls - x_true).abs().max()) > 1e-3  # the noise moves the optimum off x_true

    x, st = adam_latent(dec, target, torch.zeros(batch, k, dtype=DT), steps=1500, lr=0.05)
    assert torch.allclose(x, x_ls, rtol=0, atol=1e-3), (x - x_ls).abs().max()
    loss_ls = (x_ls @ W.T + b - target).pow(2).sum(1)
    assert torch.allclose(st.final_loss, loss_ls, rtol=1e-5)
    assert st.step_loss[-1] < st.step_loss[0]


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"steps": -1}, {"lr": 0.0}, {"lr": -0.1}])
def test_adam_bad_args_raise(kwargs):
    dec = nn.Linear(2, 3)
    with pytest.raises(ValueError):
        adam_latent(dec, torch.zeros(1, 3), torch.zeros(1, 2), **kwargs)
