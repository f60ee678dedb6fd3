"""Two summarised sweeps side by side (``jiio analyze PATH --compare A B``)."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.analysis.intervals import Interval, PerSample, compare_values
from orchestrator.analysis.text_layout import fmt
from orchestrator.driver.hints import jiio

__all__ = ["compare_summaries", "compare_text"]


def _interval(row: dict[str, Any], metric: str) -> Interval:
    """The row's interval, with its per-sample values when the summary found them on known
    samples: two sweeps' best trials are compared paired when those are the same samples
    (equal sample keys: equal data, seed, batches and, for solve sweeps, checkpoint)."""
    per = row.get(f"{metric}_per_sample")
    per = per if isinstance(per, PerSample) else None
    ci = row.get(f"{metric}_ci")
    if ci and all(isinstance(v, (int, float)) for v in ci):
        return Interval(
            float(ci[0]), float(ci[1]), row.get(f"{metric}_n"), row.get(f"{metric}_ci_method"), per
        )
    return Interval(n=row.get(f"{metric}_n"))


def _side(s: dict[str, Any]) -> dict[str, Any]:
    main = s["metrics"][0] if s.get("metrics") else None
    best = (s.get("best") or [None])[0]
    imp = (s.get("importance") or {}).get("objective") or {}
    div = (s.get("importance") or {}).get("divergence") or {}
    return {
        "sweep": s["sweep"],
        "state": s.get("state"),
        "trials": s["trials"],
        "requested": s.get("requested"),
        **{f"status {k}": v for k, v in sorted(s.get("status", {}).items())},
        "running": s.get("running", 0),
        "time_h": round(sum((s.get("time_s") or {}).values()) / 3600, 3),
        "objective": f"{main} ({s['modes'][0]})" if main else None,
        "best trial": best["trial_id"] if best else None,
        "best value": best.get(main) if best else None,
        "best 95% CI": _interval(best, main).text() if best else None,
        **{f"best {p}": best.get(p) for p in (s.get("space") or {}) if best},
        "paper value": (s.get("paper") or {}).get(main) if main else None,
        "best vs paper": (s.get("verdict") or {}).get("text"),
        "most important": next(iter(imp), None),
        "most important for divergence": next(iter(div), None),
    }


def compare_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Both sides (flat rows) and the verdict on their best trials."""
    out: dict[str, Any] = {"a": _side(a), "b": _side(b), "summaries": [a, b]}
    ma, mb = (s["metrics"][0] if s.get("metrics") else None for s in (a, b))
    if not (a.get("best") and b.get("best")):
        out["verdict"] = {"significant": None, "text": "nothing to compare: a sweep has no ranked trial"}
    elif ma != mb or a["modes"][0] != b["modes"][0]:
        out["verdict"] = {
            "significant": None,
            "text": f"the sweeps optimise different objectives ({ma}, {mb}): their best values are "
            "not compared",
        }
    else:
        ba, bb = a["best"][0], b["best"][0]
        out["verdict"] = compare_values(
            (f"{a['sweep']}'s best", float(ba[ma]), _interval(ba, ma)),
            (f"{b['sweep']}'s best", float(bb[ma]), _interval(bb, ma)),
            ma,
            a["modes"][0],
        )
        if a.get("noise") or b.get("noise"):  # a trial with one seed: its interval misses the training noise
            out["verdict"]["evaluation_only"] = True
            out["verdict"]["text"] += (
                "; these intervals cover evaluation noise only (one training seed per configuration): "
                f"`{jiio()} confirm` on each sweep measures what retraining moves"
            )
    return out


def compare_text(result: dict[str, Any]) -> str:
    a, b = result["a"], result["b"]
    keys = list(dict.fromkeys([*a, *b]))
    width = max(len(k) for k in keys)
    lines = [f"{'':{width}s}  {fmt(a['sweep'], 28)}  {fmt(b['sweep'], 28)}"]
    for k in keys[1:]:
        if k == "best vs paper":
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, float) and not math.isfinite(va):
            va = None
        lines.append(f"{k:{width}s}  {fmt(va, 28)}  {fmt(vb, 28)}")
    for side in (a, b):
        if side.get("best vs paper"):
            lines.append(f"{side['sweep']}: {side['best vs paper']}")
    lines += ["", result["verdict"]["text"]]
    return "\n".join(lines)
