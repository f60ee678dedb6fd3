"""Output of ``jiio bench`` (:mod:`orchestrator.bench`): the JSON-safe copy of a result, the
text tables, and the latent benchmark's loss-versus-time plot (paper Fig. 3)."""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from orchestrator.bench._common import _device_name

__all__ = [
    "_f",
    "_finite",
    "_header",
    "_plot_latent",
    "_render",
    "_render_attack",
    "_render_latent",
]


def _plot_latent(
    path: str,
    curves: dict[str, dict[str, list[float]]],
    rows: list[dict[str, Any]],
    device: torch.device,
    size: str,
    args: argparse.Namespace,
) -> str:
    """Paper Fig. 3: reconstruction loss against wall time, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for c, row in zip(curves.values(), rows, strict=True):
        label = ("Adam " if row["method"] == "adam" else "JIIO ") + str(row["steps"])
        (line,) = ax.plot(c["seconds"], c["loss"], label=label)
        ax.plot([row["seconds"]], [row["loss"]], "o", color=line.get_color(), markersize=5)
    main = next(r for r in rows if r["method"] == "jiio" and r["steps"] == args.jiio_iters)
    ax.axhline(main["loss"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("reconstruction loss (summed SE per image)")
    ax.set_yscale("log")
    title = f"{size} MDEQ decoder, {args.dataset}, batch {args.batch}, {_device_name(device)}"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    legend = f"dots: loss re-solved at the result\ndotted: JIIO {args.jiio_iters}'s loss"
    ax.legend(title=legend, title_fontsize=8, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _header(out: dict[str, Any]) -> list[str]:
    cfg, model = out["config"], out["model"]
    deq = cfg["deq"]
    if model["source"] == "checkpoint":
        src = f"checkpoint {model['path']}"
    else:
        src = f"trained here, {model['steps']} steps in {model['seconds']:.1f} s"
    start, end = out["load_average_start"], out["load_average"]
    load = f"{_f(start[0] if start else None, '.2f')} -> {_f(end[0] if end else None, '.2f')}"
    return [
        f"jiio bench {out['bench']} | {out['device']} ({out['device_type']}, {out['threads']} threads) "
        f"| torch {out['torch']} | load average {load}",
        f"model: {cfg['size']} MDEQ on {cfg['dataset']}, {model['parameters']} parameters, {src} "
        f"| held-out batch {cfg['batch']} | median of {cfg['reps']} interleaved reps "
        f"| baseline DEQ {deq['solver']} {deq['max_iter']}/{deq['backward_max_iter']}",
    ]


def _render_attack(out: dict[str, Any]) -> list[str]:
    cfg, p, j = out["config"], out["pgd"], out["jiio"]
    P, J = f"PGD-{p['steps']}", f"JIIO-{j['steps']}"
    lines = [
        f"clean accuracy {out['model']['clean_accuracy']:.3f} | L2 eps {cfg['eps']} | PGD step "
        f"{cfg['pgd_step_size']} (normalised) | JIIO z0 {cfg['jiio_z0']}",
        f"{'method':8s}{'steps':>6s}{'seconds':>10s}{'accuracy':>10s}{'CE loss':>10s}{'max |d|':>10s}",
    ]
    for r in out["rows"]:
        lines.append(
            f"{r['method']:8s}{r['steps']:6d}{r['seconds']:10.3f}{r['accuracy']:10.3f}"
            f"{r['loss']:10.4f}{r['max_perturbation']:10.4f}"
        )
    same = "yes" if out["equal_or_better_strength"] else "no"
    lines.append(
        f"speedup {P} / {J}: {out['speedup']:.2f}x | {J} equal or better strength: {same} "
        f"(CE {j['loss']:.4f} vs {p['loss']:.4f}, accuracy {j['accuracy']:.3f} vs {p['accuracy']:.3f})"
    )
    if out["speed_ratio_at_equal_strength"] is not None:
        k = out["equal_strength_pgd_steps"]
        lines.append(
            f"speed ratio at equal or better strength: {out['speed_ratio_at_equal_strength']:.2f}x "
            f"(PGD-{k}, the cheapest PGD row whose CE >= {J}'s)"
        )
    else:
        lines.append(
            f"speed ratio at equal or better strength: {P} never reached {J}'s CE; at least "
            f"{out['speed_ratio_at_equal_strength_lower_bound']:.2f}x"
        )
    if out["speed_ratio_at_equal_loss"] is not None:
        lines.append(
            f"per PGD step: PGD reaches {J}'s CE after {out['pgd_steps_to_jiio_loss']} steps, "
            f"{out['pgd_seconds_to_jiio_loss']:.3f} s: {out['speed_ratio_at_equal_loss']:.2f}x"
        )
    lines.append(f"all perturbations within eps: {'yes' if out['within_eps'] else 'NO'}")
    return lines


def _render_latent(out: dict[str, Any]) -> list[str]:
    cfg, a, j, jl = out["config"], out["adam"], out["jiio"], out["jiio_long"]
    A, J = f"Adam-{a['steps']}", f"JIIO-{j['steps']}"
    jc = cfg["jiio"]
    lines = [
        f"latent {cfg['latent_dim']}, loss at the zero latent {out['model']['start_loss']:.3f} | Adam lr "
        f"{cfg['adam_lr']} | JIIO alpha_x {cfg['alpha_x']}, Anderson m={jc['anderson_m']} "
        f"type {jc['anderson_type']}, z0 {cfg['jiio_z0']}",
        f"{'method':8s}{'steps':>6s}{'seconds':>10s}{'loss':>10s}{'JIIO obj':>10s}",
    ]
    for r in out["rows"]:
        obj = _f(r.get("objective"), ".3f")
        lines.append(f"{r['method']:8s}{r['steps']:6d}{r['seconds']:10.3f}{r['loss']:10.3f}{obj:>10s}")
    line = f"speedup {A} / {J}: {out['speedup']:.2f}x"
    if jl:
        line += f" | {A} / JIIO-{jl['steps']}: {out['speedup_long']:.2f}x"
    lines.append(line + f" | loss {J} {j['loss']:.3f}, {A} {a['loss']:.3f}")
    if out["speed_ratio_at_equal_loss"] is not None:
        lines.append(
            f"speed ratio at equal loss: {out['speed_ratio_at_equal_loss']:.2f}x (Adam reaches {J}'s loss "
            f"after {out['adam_steps_to_jiio_loss']} steps, {out['adam_seconds_to_jiio_loss']:.3f} s)"
        )
    else:
        lines.append(
            f"speed ratio at equal loss: {A} never reached {J}'s loss; at least "
            f"{out['speed_ratio_at_equal_loss_lower_bound']:.2f}x"
        )
    if out["plot"]:
        lines.append(f"loss-versus-time curves: {out['plot']}")
    return lines


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _render(out: dict[str, Any]) -> str:
    body = _render_attack(out) if out["bench"] == "attack" else _render_latent(out)
    return "\n".join(_header(out) + body)
