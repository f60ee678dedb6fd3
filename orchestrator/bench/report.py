"""Output of ``jiio bench`` (:mod:`orchestrator.bench`): the JSON-safe copy of a result, the
text tables, and the latent benchmark's loss-versus-time plot (paper Fig. 3)."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import torch

from orchestrator.bench.setup import device_name

__all__ = ["best_warm", "json_safe", "plot_attack", "plot_latent", "render"]


def best_warm(baselines: dict[str, Any] | None, key: str, higher: bool) -> dict[str, str]:
    """Per warm family (``jfb``, ``ift-K``), the label of its strongest step size at the full
    step budget by ``key``: the one curve per family a plot draws beside the cold baseline."""
    best: dict[str, str] = {}
    for label, d in (baselines or {}).items():
        if d.get("family") in (None, "cold"):
            continue
        fam = "jfb" if d["family"] == "jfb" else f"ift-{d['backward_iters']}"
        end = d["curve"][key][-1]
        if fam not in best:
            best[fam] = label
            continue
        other = baselines[best[fam]]["curve"][key][-1]
        if (end > other) if higher else (end < other):
            best[fam] = label
    return best


def plot_latent(
    path: str,
    curves: dict[str, dict[str, list[float]]],
    rows: list[dict[str, Any]],
    device: torch.device,
    size: str,
    args: argparse.Namespace,
    baselines: dict[str, Any] | None = None,
    clock: str = "wall",
) -> str:
    """Paper Fig. 3: reconstruction loss against time, one curve per method; dashed, the warm
    baselines (``baselines``: :func:`orchestrator.bench.strong.compare`'s), the best rate per
    family."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)

    def positive(c: dict[str, list[float]]) -> tuple[list[float], list[float]]:
        """The points after the start (the time axis is logarithmic: the methods differ 10-fold)."""
        pts = [(t, v) for t, v in zip(c["seconds"][1:], c["loss"][1:], strict=True) if t > 0]
        return [t for t, _ in pts], [v for _, v in pts]

    for c, row in zip(curves.values(), rows, strict=True):
        label = row.get("label") or ("Adam " if row["method"] == "adam" else "JIIO ") + str(row["steps"])
        if row["method"] == "adam":
            label += " cold (paper)"
        (line,) = ax.plot(*positive(c), label=label)
        ax.plot([row["seconds"]], [row["loss"]], "o", color=line.get_color(), markersize=5)
    for label in best_warm(baselines, "loss", False).values():
        c = baselines[label]["curve"]  # type: ignore[index]
        ax.plot(*positive(c), "--", linewidth=1.2, label=f"{label} (warm)")
    ax.set_xscale("log")
    main = next(r for r in rows if r["method"] == "jiio" and r["steps"] == args.jiio_iters)
    ax.axhline(main["loss"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"{'CPU' if clock == 'cpu' else 'wall'} time (s)")
    ax.set_ylabel("reconstruction loss (summed SE per image)")
    ax.set_yscale("log")
    n = getattr(args, "samples", args.batch)
    title = (
        f"{size} MDEQ decoder, {args.dataset}, {n} samples in batches of {args.batch}, {device_name(device)}"
    )
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    legend = (
        f"dots: loss re-solved at the result\ndotted: JIIO {args.jiio_iters}'s loss\n"
        "JIIO curves: its own objective"
    )
    ax.legend(title=legend, title_fontsize=8, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.set_size_inches(9.0, 4.2)  # the legend right of the axes: it covers no curve
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_attack(path: str, out: dict[str, Any]) -> str:
    """Strength against time: the paper's cold PGD per-step curve (with its 95% band), the warm
    baselines (dashed; per family the step size strongest at the full budget) and every JIIO
    variant (95% intervals), by cross-entropy (left) and accuracy under attack (right)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    c, cfg = out["pgd_curve"], out["config"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    ks = range(1, len(c["seconds"]))
    t = [c["seconds"][k] for k in ks]
    warm = out.get("baselines") or {}
    drawn = list(best_warm(warm, "loss", True).values())  # the same baselines in both panels
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ys = [c[key][k] for k in ks]
        ax.plot(t, ys, "-o", color="black", markersize=3, label=f"PGD-k cold (paper), k = 1..{len(t)}")
        for label in drawn:
            w = warm[label]["curve"]
            name = f"{label} (warm), k = 1..{len(t)}"
            ax.plot(w["seconds"][1:], w[key][1:], "--", linewidth=1.2, label=name)
        if key == "loss":
            ax.fill_between(
                t,
                [c["loss_ci"][k][0] for k in ks],
                [c["loss_ci"][k][1] for k in ks],
                color="black",
                alpha=0.12,
                linewidth=0,
            )
        for r in out["rows"]:
            if r["method"] != "jiio":
                continue
            lo, hi = r[f"{key}_ci"]
            ax.errorbar(
                [r["seconds"]],
                [r[key]],
                yerr=[[r[key] - lo], [hi - r[key]]],
                fmt="s",
                markersize=5,
                capsize=3,
                label=r["label"] if len(r["label"]) <= 40 else r["label"][:37] + "...",
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        clock = "CPU" if out.get("clock") == "cpu" else "wall"
        ax.set_xlabel(f"{clock} time per batch of {cfg['batch']} (s, median)")
        ax.set_ylabel("cross-entropy at the attack point" if key == "loss" else "accuracy under attack")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # below the plots: covers no data
    legend = {"title": "95% intervals", "title_fontsize": 7, "fontsize": 7}
    fig.legend(handles, labels, loc="lower center", ncol=4, **legend)
    src = out["model"].get("path") or "trained here"
    fig.suptitle(
        f"{cfg['size']} MDEQ, {cfg['dataset']}, {src}, L2 eps {cfg['eps']}, "
        f"{cfg['samples']} samples, {out['device']}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08 + 0.035 * ((len(labels) + 3) // 4), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None (``--json`` output must be strict JSON)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
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
        f"| {cfg.get('samples', cfg['batch'])} held-out samples, batches of {cfg['batch']} | {cfg['reps']} "
        f"interleaved pass(es), median {out.get('clock', 'wall')} time per batch "
        f"| baseline DEQ {deq['solver']} {deq['max_iter']}/{deq['backward_max_iter']}",
    ]


def _ci(r: dict[str, Any], key: str, fmt: str) -> str:
    lo, hi = r.get(f"{key}_ci", (None, None))
    return f"{format(r[key], fmt)} [{_f(lo, fmt)}, {_f(hi, fmt)}]"


def _ratio(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"


def _vs_main(out: dict[str, Any], main: str, key: str, better: str) -> list[str]:
    lines = []
    for name, v in out["versus"].items():
        if name == main or "vs_main" not in v:
            continue
        m, d = v["vs_main"], v["vs_main"]["loss_diff"]
        lines.append(
            f"  {name}: {_ratio(m['speed'])} as fast as {main}; {key} difference {d['mean']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}] ({better})"
        )
    return [f"against {main} (paired per batch and per sample):", *lines] if lines else []


def _render_attack(out: dict[str, Any]) -> list[str]:
    cfg, p = out["config"], out["pgd"]
    P = f"PGD-{p['steps']}"
    lines = [
        f"clean accuracy {out['model']['clean_accuracy']:.3f} | L2 eps {cfg['eps']} | PGD step "
        f"{cfg['pgd_step_size']} (normalised) | JIIO z0 {cfg['jiio_z0']} | {cfg['samples']} samples in "
        f"batches of {cfg['batch']}, {cfg['timing_runs']} paired timing runs | [95% intervals]",
        f"{'method':26s}{'s/batch':>9s}{'accuracy under attack':>24s}{'CE at attack point':>26s}"
        f"{'max |d|':>9s}",
    ]
    for r in out["rows"]:
        lines.append(
            f"{r['label']:26s}{r['seconds']:9.3f}{_ci(r, 'accuracy', '.3f'):>24s}"
            f"{_ci(r, 'loss', '.3f'):>26s}{r['max_perturbation']:9.4f}"
        )
    lines.append(
        f"{'JIIO variant':26s}{'speedup vs ' + P:>22s}{'equal CE: PGD steps, ratio':>34s}"
        f"{'equal accuracy: steps, ratio':>34s}"
    )
    for name, v in out["versus"].items():
        cells = []
        for by in ("equal_loss", "equal_accuracy"):
            e = v[by]
            if e["step"] is None:
                tied = f" (tied from {e['step_low']})" if e["step_low"] is not None else ""
                cells.append(f"never{tied}; >= {e['lower_bound']:.2f}x")
            else:
                span = f"{e['step_low']}-{_f(e['step_high'], 'd') if e['step_high'] is not None else '>'}"
                cells.append(f"{e['step']} ({span}) {_ratio(e['ratio'])}")
        lines.append(f"{name:26s}{_ratio(v['speedup']):>22s}{cells[0]:>34s}{cells[1]:>34s}")
    lines.append(
        "equal CE / accuracy: the first PGD step whose per-sample paired difference to the JIIO "
        "variant has mean >= 0; (a-b): the steps from 'cannot be told apart' to 'stronger beyond doubt'"
    )
    lines += _vs_main(out, f"jiio-{cfg['jiio_iters']}", "CE", "> 0: stronger")
    if "baseline_rows" in out:
        lines += _render_strong(out, ("loss", "margin", "accuracy"), "PGD")
    lines.append(f"all perturbations within eps: {'yes' if out['within_eps'] else 'NO'}")
    if out.get("plot"):
        lines.append(f"strength-versus-time plot: {out['plot']}")
    return lines


def _render_latent(out: dict[str, Any]) -> list[str]:
    cfg, a, j, jl = out["config"], out["adam"], out["jiio"], out["jiio_long"]
    A, J = f"Adam-{a['steps']}", f"JIIO-{j['steps']}"
    jc = cfg["jiio"]
    lines = [
        f"latent {cfg['latent_dim']}, loss at the zero latent {out['model']['start_loss']:.3f} | Adam lr "
        f"{cfg['adam_lr']} | JIIO alpha_x {cfg['alpha_x']}, Anderson m={jc['anderson_m']} "
        f"type {jc['anderson_type']}, z0 {cfg['jiio_z0']} | {cfg['samples']} samples in batches of "
        f"{cfg['batch']}, {cfg['timing_runs']} paired timing runs | [95% intervals]",
        f"{'method':26s}{'s/batch':>9s}{'loss (summed SE per image)':>30s}{'JIIO obj':>10s}",
    ]
    for r in out["rows"]:
        obj = _f(r.get("objective"), ".3f")
        lines.append(f"{r['label']:26s}{r['seconds']:9.3f}{_ci(r, 'loss', '.3f'):>30s}{obj:>10s}")
    lines.append(f"{'JIIO variant':26s}{'speedup vs ' + A:>24s}{'equal loss: Adam steps, ratio':>40s}")
    for name, v in out["versus"].items():
        e = v["equal_loss"]
        if e["step"] is None:
            tied = f" (tied from {e['step_low']})" if e["step_low"] is not None else ""
            cell = f"never{tied}; >= {e['lower_bound']:.2f}x"
        else:
            hi = "d" if e["step_high"] is not None else ""
            span = f"{e['step_low']}-{format(e['step_high'], hi) if hi else '>'}"
            cell = f"{e['step']} ({span}) {_ratio(e['ratio'])}"
        lines.append(f"{name:26s}{_ratio(v['speedup']):>24s}{cell:>40s}")
    lines += _vs_main(out, f"jiio-{cfg['jiio_iters']}", "loss", "< 0: better")
    if "baseline_rows" in out:
        lines += _render_strong(out, ("loss",), "Adam")
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
    lines.append(
        "equal loss: the first Adam step whose per-image paired difference to the JIIO variant has "
        "mean <= 0; (a-b): the steps from 'cannot be told apart' to 'better beyond doubt'"
    )
    if out["plot"]:
        lines.append(f"loss-versus-time curves: {out['plot']}")
    return lines


def _fastest(r: dict[str, Any]) -> str:
    """One cell: the fastest baseline reaching a strength, its step and the speed ratio."""
    if r["baseline"] is None:
        lb = r.get("lower_bound")
        return "none reaches it" + (f"; >= {lb:.2f}x" if lb is not None else "")
    lo, hi = r["range"]
    return f"{r['baseline']}@{r['step']} {_ratio(r['ratio'])} ({_f(lo, '.2f')}-{_f(hi, '.2f')})"


def _render_strong(out: dict[str, Any], measures: tuple[str, ...], unit: str) -> list[str]:
    """The strong baselines' part of the tables: every baseline at its full step budget,
    every JIIO variant against the fastest baseline reaching it, and the fixed targets."""
    cfg = out["config"]
    lines = [
        f"baselines at {unit}-{cfg.get('pgd_steps') or cfg.get('adam_steps')} (cold: the paper's; warm: "
        f"forward {cfg['warm']['forward']}; backward {cfg['warm']['backward']}):",
        f"{'baseline':22s}{'s/batch':>9s}"
        + "".join(f"{m:>26s}" for m in measures)
        + f"{'fwd it/step':>12s}{'bwd it/step':>12s}",
    ]
    for r in out["baseline_rows"]:
        c = out["baselines"][r["label"]]["curve"]
        fw = statistics.fmean(c["forward_iters"]) if c.get("forward_iters") else None
        bw = statistics.fmean(c["backward_iters"]) if c.get("backward_iters") else None
        cells = "".join(f"{_ci(r, m, '.3f'):>26s}" for m in measures)
        lines.append(f"{r['label']:22s}{r['seconds']:9.3f}{cells}{_f(fw, '.1f'):>12s}{_f(bw, '.1f'):>12s}")
    lines.append(
        "JIIO variant against the fastest baseline reaching its strength, by "
        + ", ".join(measures)
        + ": baseline@step ratio [95%] (range over all baselines: 'cannot be told apart' - 'stronger "
        "beyond doubt')"
    )
    for name, v in out["versus"].items():
        lines.append(f"  {name}: " + " | ".join(f"{m} {_fastest(v['fastest'][m])}" for m in measures))
    lines.append(
        "targets set by the baselines (the strongest at the full budget, per sample; fraction: of its "
        "effect from the start):"
    )
    for t in out["targets"]:
        base = f"{t['baseline']}@{t['baseline_step']} {_f(t['baseline_seconds'], '.3f')} s"
        jiio = f"{t['jiio']} {_f(t['jiio_seconds'], '.3f')} s" if t["jiio"] else "no JIIO variant reaches it"
        lines.append(
            f"  {t['measure']} {t['fraction']:g} x {t['set_by']} (mean {t['reference_mean']:.3f}): "
            f"fastest baseline {base}; {jiio}; ratio {_ratio(t['ratio'])}"
        )
    return lines


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render(out: dict[str, Any]) -> str:
    """The text report of a bench result: its header (model, settings, environment) and tables."""
    body = _render_attack(out) if out["bench"] == "attack" else _render_latent(out)
    return "\n".join(_header(out) + body)
