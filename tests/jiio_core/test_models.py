"""Tests for jiio_core.models: the MDEQ-style cell, its config and the heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jiio_core.models import ClassifierHead, ImageHead, MDEQCell, MDEQConfig, count_parameters

MICRO = {"channels": (4, 4), "resolutions": (4, 2), "num_groups": 2}


def _input(cfg: MDEQConfig, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if cfg.latent_dim is not None:
        return torch.randn(batch, cfg.latent_dim, dtype=dtype)
    r = cfg.resolutions[0]
    return torch.randn(batch, cfg.in_channels, r, r, dtype=dtype)


def _iterate(cell: MDEQCell, x: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    """Plain iteration from zeros; returns z and the worst per-sample relative residual."""
    z = cell.init_z(x)
    rel = math.inf
    with torch.no_grad():
        for _ in range(n):
            fz = cell(z, x)
            rel = ((fz - z).norm(dim=1) / fz.norm(dim=1)).max().item()
            z = fz
    return z, rel


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"channels": (8,), "resolutions": (16, 8)}, "channels"),
        ({"channels": (), "resolutions": ()}, "channels"),
        ({"channels": (0, 8)}, "channels"),
        ({"channels": (8.0, 16)}, "channels"),
        ({"channels": 8}, "channels"),
        ({"resolutions": (8, 16)}, "resolutions"),
        ({"resolutions": (8, 8)}, "resolutions"),
        ({"resolutions": (16, -8)}, "resolutions"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": True}, "in_channels"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"num_groups": 3}, "num_groups"),
        ({"num_groups": 0}, "num_groups"),
        ({"num_groups": 32}, "num_groups"),
        ({"weight_scale": 0.0}, "weight_scale"),
        ({"weight_scale": -0.1}, "weight_scale"),
        ({"weight_scale": float("nan")}, "weight_scale"),
        ({"weight_scale": float("inf")}, "weight_scale"),
        ({"weight_scale": "0.2"}, "weight_scale"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MDEQConfig(**kwargs)


def test_config_defaults_presets_and_z_dim() -> None:
    cfg = MDEQConfig(channels=[8, 16], resolutions=[16, 8])  # lists are normalised
    assert cfg.channels == (8, 16) and cfg.resolutions == (16, 8)
    assert hash(cfg) == hash(MDEQConfig())
    assert cfg.z_dim == 8 * 16 * 16 + 16 * 8 * 8
    assert 0 < cfg.weight_scale < 1

    m = MDEQConfig.paper_mnist()
    assert (m.channels, m.resolutions, m.in_channels, m.latent_dim) == ((24, 24), (28, 14), 1, None)
    c = MDEQConfig.paper_cifar()
    assert (c.channels, c.resolutions, c.in_channels, c.latent_dim) == ((24, 24), (32, 16), 3, None)
    a = MDEQConfig.paper_celeba()
    assert a.channels == (32, 64, 128, 256) and a.resolutions == (64, 32, 16, 8)
    assert a.in_channels == 3 and a.latent_dim == 128
    assert a.z_dim == 32 * 64**2 + 64 * 32**2 + 128 * 16**2 + 256 * 8**2
    t = MDEQConfig.tiny(in_channels=3, latent_dim=12)
    assert t.in_channels == 3 and t.latent_dim == 12 and t.z_dim <= 4096


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("latent_dim", [None, 16])
def test_shapes_split_merge_and_heads(latent_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny(in_channels=3, latent_dim=latent_dim)
    cell, cls, img = MDEQCell(cfg), ClassifierHead(cfg, num_classes=7), ImageHead(cfg)
    x = _input(cfg, 3)
    z0 = cell.init_z(x)
    assert z0.shape == (3, cfg.z_dim) and z0.dtype == x.dtype and not z0.any()
    z = cell(torch.randn(3, cfg.z_dim), x)
    assert z.shape == (3, cfg.z_dim) and torch.isfinite(z).all()
    parts = cell.split(z)
    assert [tuple(p.shape) for p in parts] == [(3, 8, 16, 16), (3, 16, 8, 8)]
    assert torch.equal(cell.merge(parts), z)
    inj = cell.inject(x)
    assert [tuple(t.shape) for t in inj] == [tuple(p.shape) for p in parts]
    assert torch.equal(cell.step(z, inj), cell(z, x))
    assert cls(z).shape == (3, 7)
    out = img(z)
    assert out.shape == (3, 3, 16, 16)
    assert out.min() >= 0 and out.max() <= 1


def test_wrong_input_shapes_raise() -> None:
    cell = MDEQCell(MDEQConfig.tiny())
    with pytest.raises(ValueError, match="x must have shape"):
        cell(torch.zeros(2, cell.z_dim), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="z must have shape"):
        cell(torch.zeros(2, cell.z_dim + 1), torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="z must have shape"):
        ClassifierHead(cell.config)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierHead(cell.config, num_classes=0)
    lat = MDEQCell(MDEQConfig.tiny(latent_dim=4))
    with pytest.raises(ValueError, match="x must have shape"):
        lat(torch.zeros(2, lat.z_dim), torch.zeros(2, 5))


@pytest.mark.parametrize("preset", ["paper_mnist", "paper_cifar", "paper_celeba"])
def test_paper_presets_run_one_forward(preset: str) -> None:
    torch.manual_seed(0)
    cfg = getattr(MDEQConfig, preset)()
    batch = 1 if cfg.latent_dim else 2
    cell = MDEQCell(cfg)
    x = _input(cfg, batch)
    with torch.no_grad():
        z = cell(cell(cell.init_z(x), x), x)
        assert z.shape == (batch, cfg.z_dim) and torch.isfinite(z).all()
        r = cfg.resolutions[0]
        assert ImageHead(cfg)(z).shape == (batch, cfg.in_channels, r, r)
        assert ClassifierHead(cfg)(z).shape == (batch, 10)


@pytest.mark.parametrize(
    ("channels", "resolutions"),
    [((4, 8, 8), (8, 4, 2)), ((4, 8), (12, 5)), ((8,), (6,)), ((4, 4, 8), (9, 5, 3))],
)
def test_other_branch_layouts(channels: tuple, resolutions: tuple) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig(channels, resolutions, num_groups=2)
    cell, cls, img = MDEQCell(cfg), ClassifierHead(cfg), ImageHead(cfg)
    x = _input(cfg, 2)
    z, rel = _iterate(cell, x, 60)
    assert rel < 1e-3
    assert cls(z).shape == (2, 10)
    assert img(z).shape == (2, 1, resolutions[0], resolutions[0])


# --------------------------------------------------------------------------- normalisation


def _modules(cfg: MDEQConfig) -> list[nn.Module]:
    return [MDEQCell(cfg), ClassifierHead(cfg), ImageHead(cfg)]


@pytest.mark.parametrize("latent_dim", [None, 16])
def test_no_batchnorm_and_train_eval_agree(latent_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny(latent_dim=latent_dim)
    cell, cls, img = _modules(cfg)
    for mod in (cell, cls, img):
        for sub in mod.modules():
            assert not isinstance(sub, nn.modules.batchnorm._BatchNorm), sub
            assert not any(b.numel() for b in sub.buffers(recurse=False)), sub
        assert any(isinstance(sub, nn.GroupNorm) for sub in mod.modules())
    x, z = _input(cfg, 2), torch.randn(2, cfg.z_dim)
    outs = []
    for train in (True, False):
        for mod in (cell, cls, img):
            mod.train(train)
        fz = cell(z, x)
        outs.append((fz, cls(fz), img(fz)))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("latent_dim", [None, 16])
def test_per_sample_independence(latent_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny(latent_dim=latent_dim)
    cell, cls, img = _modules(cfg)
    x, z = _input(cfg, 3), torch.randn(3, cfg.z_dim)
    x2, z2 = x.clone(), z.clone()
    x2[1] = 10 * torch.randn_like(x2[1]) + 3
    z2[1] = 5 * torch.randn_like(z2[1])
    with torch.no_grad():
        a, b = cell(z, x), cell(z2, x2)
        outs = [(a, b), (cls(a), cls(b)), (img(a), img(b))]
        alone = cell(z[:1], x[:1])
    for u, v in outs:
        torch.testing.assert_close(u[0], v[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(u[2], v[2], rtol=0, atol=1e-6)
        assert (u[1] - v[1]).abs().max() > 1e-3  # the perturbation did reach sample 1
    torch.testing.assert_close(alone[0], a[0], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("latent_dim", [None, 16])
def test_float64(latent_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny(latent_dim=latent_dim)
    cell, cls, img = _modules(cfg)
    x, z = _input(cfg, 2), torch.randn(2, cfg.z_dim)
    ref = cell(z, x)
    for mod in (cell, cls, img):
        mod.double()
    out = cell(z.double(), x.double())
    assert out.dtype == torch.float64 and cell.init_z(x.double()).dtype == torch.float64
    assert cls(out).dtype == torch.float64 and img(out).dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("latent_dim", [None, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_iteration_converges_at_init(latent_dim: int | None, seed: int) -> None:
    torch.manual_seed(seed)
    cfg = MDEQConfig.tiny(latent_dim=latent_dim)
    cell = MDEQCell(cfg)
    x = _input(cfg, 4)
    if latent_dim is None and seed == 1:
        x = torch.rand_like(x)  # image-like input in [0, 1]
    _, rel = _iterate(cell, x, 60)
    assert rel < 1e-3


@pytest.mark.parametrize("latent_dim", [None, 16])
def test_fixed_point_depends_on_input(latent_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny(latent_dim=latent_dim)
    cell = MDEQCell(cfg)
    za, _ = _iterate(cell, _input(cfg, 4), 30)
    zb, _ = _iterate(cell, _input(cfg, 4), 30)
    assert (za - zb).norm(dim=1).min() > 0.05 * za.norm(dim=1).min()


def test_weight_scale_controls_contraction() -> None:
    rels = []
    for ws in (0.1, 0.5):
        torch.manual_seed(0)
        cfg = MDEQConfig((8, 16), (16, 8), weight_scale=ws)
        _, rel = _iterate(MDEQCell(cfg), _input(cfg, 4), 15)
        rels.append(rel)
    assert rels[0] < 1e-3 < rels[1]


@pytest.mark.parametrize("latent_dim", [None, 16])
def test_gradients_reach_every_parameter(latent_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig.tiny(latent_dim=latent_dim)
    cell, cls, img = _modules(cfg)
    x = _input(cfg, 4).requires_grad_(True)
    z = cell.init_z(x)
    for _ in range(4):
        z = cell(z, x)
    loss = nn.functional.cross_entropy(cls(z), torch.tensor([0, 1, 2, 3]))
    loss = loss + (img(z) - 0.5).pow(2).mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    for mod in (cell, cls, img):
        for name, p in mod.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("latent_dim", [None, 3])
def test_gradcheck_cell_wrt_z_and_x(latent_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig(**MICRO, latent_dim=latent_dim)
    cell = MDEQCell(cfg).double()
    x = _input(cfg, 2, torch.float64).requires_grad_(True)
    z = torch.randn(2, cfg.z_dim, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cell, (z, x), eps=1e-6, atol=1e-5)


def test_gradcheck_heads_wrt_z() -> None:
    torch.manual_seed(0)
    cfg = MDEQConfig(**MICRO)
    z = torch.randn(2, cfg.z_dim, dtype=torch.float64, requires_grad=True)
    for head in (ClassifierHead(cfg, num_classes=3).double(), ImageHead(cfg).double()):
        assert torch.autograd.gradcheck(head, (z,), eps=1e-6, atol=1e-5)


def test_count_parameters() -> None:
    lin = nn.Linear(3, 4)
    assert count_parameters(lin) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(lin) == 12
    cell = MDEQCell(MDEQConfig.tiny())
    assert count_parameters(cell) == sum(p.numel() for p in cell.parameters()) > 0
