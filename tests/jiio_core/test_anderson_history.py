"""Anderson's history as ring buffers: the same weights and steps as a plain reference.

The reference below is written in numpy from the definition (not from jiio_core): it
keeps the last ``m`` iterates and images in Python lists, rebuilds ``H`` from scratch
every step and solves the small system with ``numpy.linalg.solve``. The mixers keep
preallocated buffers, update ``H`` one row and column per step, and (StaticAndersonMixer)
solve a fixed-size padded system. They must agree at every step: while the memory fills,
after the ring buffer wraps (several times), in chunks of the batch, with the image
written straight into the history slot, and with ``beta != 1``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jiio_core.mixers import AndersonMixer
from jiio_core.static_anderson import StaticAndersonMixer
from jiio_core.static_anderson import batched_solve as _solve

D, B, M, STEPS = 24, 5, 4, 15  # STEPS > 3 M: the ring buffer wraps three times


class ReferenceAnderson:
    """Plain Anderson on numpy arrays, per sample: the definitions and nothing else."""

    def __init__(self, m: int, lam: float, beta: float, kind: str) -> None:
        self.m, self.lam, self.beta, self.kind = m, lam, beta, kind
        self.xs: list[np.ndarray] = []  # oldest first
        self.gxs: list[np.ndarray] = []

    def step(self, x: np.ndarray, gx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (the next iterate, the weights oldest first) for one sample."""
        self.xs = ([*self.xs, x])[-self.m :]
        self.gxs = ([*self.gxs, gx])[-self.m :]
        X, GX = np.stack(self.xs), np.stack(self.gxs)
        G = GX - X
        Yimg = X + self.beta * G
        n = len(self.xs)
        if n == 1:
            return Yimg[0], np.ones(1)
        if self.kind == "II":
            H = G @ G.T
        elif self.lam > 0:
            H = (X - X[-1]) @ G.T  # the centred form, on which the ridge acts
        else:
            H = X @ G.T
        if self.lam > 0:
            s = np.linalg.solve(H + self.lam * np.abs(H).max() * np.eye(n), np.ones(n))
            w = s / s.sum()
        else:
            K = np.zeros((n + 1, n + 1))
            K[0, 1:] = K[1:, 0] = 1.0
            K[1:, 1:] = H
            w = np.linalg.solve(K, np.eye(n + 1)[0])[1:]
        return w @ Yimg, w


def _contraction(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=gen, dtype=torch.float64)
    A = 0.99 * A / torch.linalg.matrix_norm(A, 2)
    b = torch.randn(B, D, generator=gen, dtype=torch.float64)
    return A, b


def _g(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ A.T + b)


def _slot_weights(weights: torch.Tensor, t: int, n: int, m: int) -> np.ndarray:
    """The mixer's weights in the reference's order (oldest first): iterate s is in slot s % m."""
    return np.stack([weights[:, (t - n + 1 + j) % m].numpy() for j in range(n)], axis=1)


@pytest.mark.parametrize("chunk", [None, 1, 2])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize(("kind", "lam", "beta"), [("I", 0.0, 1.0), ("II", 0.0, 1.0), ("I", 1e-5, 1.0),
                                                   ("II", 1e-5, 0.7), ("I", 0.0, 0.5)])  # fmt: skip
def test_ring_buffer_weights_and_steps_match_the_reference(kind, lam, beta, in_place, chunk):
    """``in_place``: jiio_solve's path, g(x) written into the history slot and the output
    (the next x) kept in G's scratch rows."""
    A, b = _contraction()
    mixer = AndersonMixer(m=M, lam=lam, beta=beta, kind=kind, chunk=chunk, out_in_history=in_place)
    refs = [ReferenceAnderson(M, lam, beta, kind) for _ in range(B)]
    active = torch.ones(B, dtype=torch.bool)
    x = torch.full((B, D), 0.1, dtype=torch.float64)
    for t in range(STEPS):
        gx = _g(x, A, b)
        if in_place:  # jiio_solve's path: g(x) written straight into the history slot
            slot = mixer.image_out(x)
            if slot is None:
                assert beta != 1.0
            else:
                slot.copy_(gx)
                gx = slot
        want = [ref.step(x[i].numpy().copy(), gx[i].numpy().copy()) for i, ref in enumerate(refs)]
        out = mixer.step(x, gx, active)
        assert in_place == (out.data_ptr() >= mixer.G.data_ptr() + M * D * 8 and out.stride(0) != D)
        n = min(t + 1, M)
        got_w = _slot_weights(mixer.weights, t, n, M)
        for i in range(B):
            assert np.allclose(out[i].numpy(), want[i][0], rtol=1e-9, atol=1e-11), (t, i)
            assert np.allclose(got_w[i], want[i][1], rtol=1e-6, atol=1e-9), (t, i)
        assert np.allclose(mixer.weights.sum(1).numpy(), 1.0, atol=1e-10)
        x = out
    assert mixer.fallbacks == [0, 0]


@pytest.mark.parametrize("linsolve", ["lu", "elimination"])
@pytest.mark.parametrize(("kind", "lam", "beta"), [("I", 0.0, 1.0), ("II", 0.0, 1.0), ("I", 1e-5, 1.0),
                                                   ("II", 1e-5, 0.7)])  # fmt: skip
def test_static_mixer_matches_the_reference_with_a_padded_system(kind, lam, beta, linsolve):
    """The fixed-size system (empty slots padded out) gives the n-slot weights, exactly zero
    for empty slots; slots and the step count live on the device."""
    A, b = _contraction(1)
    mixer = StaticAndersonMixer(m=M, lam=lam, beta=beta, kind=kind, linsolve=linsolve)
    refs = [ReferenceAnderson(M, lam, beta, kind) for _ in range(B)]
    active = torch.ones(B, dtype=torch.bool)
    x = torch.full((B, D), 0.1, dtype=torch.float64)
    for t in range(STEPS):
        gx = _g(x, A, b)
        want = [ref.step(x[i].numpy().copy(), gx[i].numpy().copy()) for i, ref in enumerate(refs)]
        out = mixer.step(x, gx, active).clone()
        n = min(t + 1, M)
        assert int(mixer.count) == t + 1
        got_w = _slot_weights(mixer.weights, t, n, M)
        for i in range(B):
            assert np.allclose(out[i].numpy(), want[i][0], rtol=1e-9, atol=1e-11), (t, i)
            assert np.allclose(got_w[i], want[i][1], rtol=1e-6, atol=1e-9), (t, i)
        if n < M:  # the slots not yet filled take no part
            assert float(mixer.weights[:, n:].abs().max()) < 1e-14
        x = out


@pytest.mark.parametrize("kind", ["I", "II"])
def test_static_mixer_takes_the_fallbacks_of_the_eager_one(kind):
    """The same iterate twice: the bordered system is singular, both retry with 1e-3."""
    x = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)
    gx = torch.tensor([[0.5, 2.5, 0.0]], dtype=torch.float64)
    active = torch.ones(1, dtype=torch.bool)
    eager, static = AndersonMixer(m=4, lam=0.0, kind=kind), StaticAndersonMixer(m=4, lam=0.0, kind=kind)
    for mixer in (eager, static):
        mixer.step(x, gx, active)
        out = mixer.step(x, gx, active)
        assert torch.allclose(out, gx)
    assert eager.fallbacks == [1, 0]
    assert np.allclose(static.weights[0, :2].numpy(), eager.weights[0].numpy(), atol=1e-12)


def test_elimination_solves_like_lapack_and_flags_singular_systems():
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(6, 7, 7, generator=gen, dtype=torch.float64)
    A[:, 0, 0] = 0.0  # a zero first pivot: only partial pivoting gets past it
    A[5] = 0.0
    A[5, :, 0] = 1.0  # rank one: singular
    rhs = torch.randn(6, 7, 1, generator=gen, dtype=torch.float64)
    sol, failed = _solve(A, rhs, "elimination")
    want, info = torch.linalg.solve_ex(A, rhs)
    assert failed.tolist() == (info != 0).tolist() == [False] * 5 + [True]
    assert torch.allclose(sol[:5], want[:5], rtol=1e-10, atol=1e-12)


class _Record(TorchDispatchMode):
    """Records every aten op and the elements of tensors that ops allocate."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.allocated = 0
        self.copied = 0  # the largest copy_ (elements)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(str(func.overloadpacket))
        if func.overloadpacket is torch.ops.aten.copy_:
            self.copied = max(self.copied, args[0].numel())
        schema = func._schema
        fresh = not schema.is_mutable and all(r.alias_info is None for r in schema.returns)  # not a view
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if fresh and isinstance(t, torch.Tensor):
                self.allocated += t.numel()
        return out


@pytest.mark.parametrize("kind", ["I", "II"])
def test_a_step_moves_no_history_copy(kind):
    """A steady-state step concatenates, stacks and clones nothing, allocates nothing of the
    state's size, and keeps its buffers: the history is written in place."""
    Bn, Dn, m = 4, 512, 6
    mixer = AndersonMixer(m=m, lam=0.0, kind=kind, out_in_history=True)
    active = torch.ones(Bn, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(Bn, Dn, generator=gen)
    for _ in range(m + 2):
        x = mixer.step(x, 0.5 * x + torch.randn(Bn, Dn, generator=gen), active)
    buffers = (mixer.Y.data_ptr(), mixer.G.data_ptr(), mixer.P.data_ptr())
    gx = mixer.image_out(x)
    gx.copy_(0.5 * x + 1.0)
    with _Record() as rec:
        mixer.step(x, gx, active)
    assert not {"aten.cat", "aten.stack", "aten.clone"} & set(rec.ops), rec.ops
    assert rec.allocated < Bn * Dn, rec.allocated  # only (B, m)-sized temporaries
    assert rec.copied < Bn * Dn, rec.copied  # x is already next to the residuals, g(x) in its slot
    assert (mixer.Y.data_ptr(), mixer.G.data_ptr(), mixer.P.data_ptr()) == buffers
    bmm = rec.ops.count("aten.bmm")
    assert bmm == (3 if kind == "I" else 2)  # Gram row: 1 (II) or 2 (I) products; the mix: 1


def test_outputs_alternate_between_two_buffers_and_inputs_are_not_written():
    """The solvers rely on this: the step's output is overwritten only by the step after
    next, and x and g(x) passed in are left as they were."""
    mixer = AndersonMixer(m=3, lam=0.0, kind="I")
    active = torch.ones(2, dtype=torch.bool)
    x = torch.randn(2, 5, dtype=torch.float64)
    outs = []
    for _ in range(5):
        gx = 0.3 * x + 1.0
        x_before, gx_before = x.clone(), gx.clone()
        out = mixer.step(x, gx, active)
        assert torch.equal(x, x_before) and torch.equal(gx, gx_before)
        outs.append((out, out.clone()))
        x = out
    assert outs[-1][0].data_ptr() == outs[-3][0].data_ptr() != outs[-2][0].data_ptr()
    assert torch.equal(outs[-2][0], outs[-2][1])  # the previous output is still intact


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk"):
        AndersonMixer(m=3, chunk=0)
    with pytest.raises(ValueError, match="linsolve"):
        StaticAndersonMixer(m=3, linsolve="qr")
