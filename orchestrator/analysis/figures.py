"""What every sweep plot shares: headless matplotlib, saving, legend placement, colours, log axes.

Why a module of its own: :mod:`~orchestrator.analysis.plots` and
:mod:`~orchestrator.analysis.traces` both draw with these, and neither imports the other's
internals (plots calls traces; traces needs nothing from plots).
"""

from __future__ import annotations

import os

__all__ = ["COLORS", "legend_outside", "log_axis", "pyplot", "save"]


def legend_outside(ax, **kw):
    """The axes' legend to the right of it, where it covers no data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)


#: the colour of a trial by its status, the same in every plot
COLORS = {"completed": "tab:blue", "diverged": "tab:red", "pruned": "tab:gray", "error": "black"}


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (imported on first use: the text
    report needs no matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out_dir: str, name: str) -> str:
    """Write ``fig`` as ``out_dir/name`` (110 dpi) and close it; the file's path."""
    plt = pyplot()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_axis(axis) -> None:
    """Ticks of a log axis as plain numbers at 1, 2, 5 x 10^k (no crowded minor labels)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())
