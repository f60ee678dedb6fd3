"""What the plots draw, read from their matplotlib artists (issue 18 point 7/2): headings and
captions in the report, each parallel-coordinates axis in its own units, pruned values drawn
apart in the progress plot, the paper's configuration in the parameter plots, whole
iterations on the traces' axis, and no legend over a data point."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.analysis import plots
from orchestrator.analysis.engine import Source
from orchestrator.analysis.report import write_html
from orchestrator.analysis.summary import summarize

from ._planted import BEST, PAPER, planted


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    root = tmp_path_factory.mktemp("p")
    store = planted(str(root), n=5)
    row = {"trial_id": "pr", "status": "pruned", **BEST, "alpha_x": 0.9, "robust_acc": 0.5, "wall_s": 3.0}
    store.write("trials", "s", "pr", [row])
    figs: dict[str, object] = {}
    real = plots.save
    mp = pytest.MonkeyPatch()

    def keep(fig, out_dir, name):
        fig.canvas.draw()
        figs[name.split("-", 1)[1][: -len(".png")]] = fig
        path = f"{out_dir}/{name}"
        with open(path, "wb") as f:  # the report embeds the file's bytes; the figure is read above
            f.write(b"\x89PNG\r\n\x1a\n")
        return path

    mp.setattr(plots, "save", keep)
    src = Source(store)
    s = summarize(src, "s")
    s["plots"] = plots.plot_all(src, s, str(root / "out"))
    mp.undo()
    assert real is plots.save
    with open(write_html(s, str(root / "out" / "r.html"), str(root)), encoding="utf-8") as f:
        html = f.read()
    yield figs, html
    import matplotlib.pyplot as plt

    for f in figs.values():
        plt.close(f)


def test_report_headings_are_titles_with_a_caption(drawn):
    figs, html = drawn
    assert "<h3>Search progress</h3>" in html and "<h3>Parallel coordinates</h3>" in html
    assert "<h3>s-progress.png</h3>" not in html
    assert html.count("<figcaption>") == len(figs) and html.count("<h3>") == len(figs)


def test_parallel_axes_are_in_their_own_units(drawn):
    figs, _ = drawn
    ax = figs["parallel"].axes[0]
    assert "scaled" not in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:3] == ["alpha_z (log)", "alpha_mu (log)", "alpha_x (log)"] and labels[-1] == "robust_acc"
    ticks = [(t.get_position()[0], float(t.get_text())) for t in ax.texts if t.get_gid() == "axis-tick"]
    by_axis: dict[int, list[float]] = {}
    for x, v in ticks:
        by_axis.setdefault(round(x + 0.05), []).append(v)
    assert sorted(by_axis) == [0, 1, 2, 3] and all(len(v) >= 2 for v in by_axis.values())
    assert all(0.2 <= v <= 1.0 for v in by_axis[0])  # alpha_z's own range, not [0, 1] scaled
    assert min(by_axis[3]) >= 0.3 and max(by_axis[3]) <= 0.95  # robust_acc in its units


def test_progress_has_a_title_and_pruned_values_drawn_apart(drawn):
    figs, _ = drawn
    ax = figs["progress"].axes[0]
    assert ax.get_title()
    lines = {line.get_label(): line for line in ax.get_lines()}
    final, pruned = lines["completed (final value)"], lines["pruned (value at its last rung)"]
    assert pruned.get_markerfacecolor() == "none" and final.get_markerfacecolor() != "none"
    assert list(pruned.get_ydata()) == [0.5]
    assert np.nanmax(lines["best so far (completed)"].get_ydata()) == 0.95


def test_the_papers_configuration_is_marked_in_the_parameter_plots(drawn):
    figs, _ = drawn
    for ax, name in zip(figs["params"].axes, ("alpha_z", "alpha_mu", "alpha_x"), strict=True):
        marks = [line for line in ax.get_lines() if line.get_label() == "paper's configuration"]
        assert len(marks) == 1 and marks[0].get_xdata()[0] == PAPER[name]


def test_traces_iteration_axis_has_whole_ticks(drawn):
    figs, _ = drawn
    ax = figs["traces"].axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_no_legend_covers_a_data_point(drawn):
    figs, _ = drawn
    for name, fig in figs.items():
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        boxes = [leg.get_window_extent() for leg in legends]
        for ax in fig.axes:
            points = [
                c.get_offset_transform().transform(c.get_offsets())
                for c in ax.collections
                if len(c.get_offsets()) and c.get_offset_transform() == ax.transData
            ]
            points += [
                line.get_transform().transform(
                    np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
                )
                for line in ax.get_lines()
                if line.get_transform() == ax.transData and len(line.get_xdata())
            ]
            for xy in points:
                xy = xy[np.isfinite(xy).all(axis=1)]
                for box in boxes:
                    inside = (
                        (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
                    )
                    assert not inside.any(), f"{name}: a legend covers {xy[inside][:3]}"


def test_parallel_colour_scale_is_the_objective_in_its_units(drawn):
    figs, _ = drawn
    lines = figs["parallel"].axes[0].collections[0]
    values = lines.get_array()
    assert values.min() >= 0.3 and values.max() == 0.95  # robust_acc itself, not scaled to [0, 1]
