"""The comparison's figures (matplotlib PNGs): test metric vs trainable parameters, vs time, and the cost bars.

Points are the seed mean of the test metric at each method's chosen learning rate; bars are its 95% bootstrap CI
over test rows (``summary.summarise``; ± one standard deviation over seeds where a metric has no CI). The
majority-class floor is drawn where the task has one. Tick labels never overlap: long method names are wrapped,
colliding x labels are turned, and a label that still collides with its neighbour is left out (``untangle_ticks``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

PEFT_COLOR, SELECTIVE_COLOR = "tab:orange", "tab:blue"


# Label offsets (points) tried in turn until a label's box overlaps no label placed before it.
LABEL_OFFSETS = [(5, 4), (12, -14), (-12, 6), (-12, -14), (12, 16), (12, -26), (-12, 18), (-12, -26), (12, 28), (12, -38)]


def _label_points(ax, labels: list[tuple[str, float, float]]) -> None:
    """Name each point without two names on top of each other (methods with near-equal scores sit close)."""
    ax.figure.canvas.draw()  # fixes the axes limits so boxes are measured where they will be drawn
    renderer, placed = ax.figure.canvas.get_renderer(), []
    for text, x, y in labels:
        for dx, dy in LABEL_OFFSETS:
            leader = None if (dx, dy) == LABEL_OFFSETS[0] else {"arrowstyle": "-", "color": "gray", "lw": 0.6, "shrinkB": 4}
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                               ha="left" if dx > 0 else "right", arrowprops=leader)  # a moved name keeps a line to its point
            box = note.get_window_extent(renderer).expanded(1.02, 1.1)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == LABEL_OFFSETS[-1]:
                placed.append(box)
                break
            note.remove()


def _scatter(ax, summaries, x_key: str, metric: str, floor: float | None, log_x: bool = False) -> None:
    if log_x:
        ax.set_xscale("log")  # before the labels are placed: their boxes are measured on the final axes
    for s in summaries:
        test = s["test"][metric]
        color = PEFT_COLOR if s["kind"] == "peft" else SELECTIVE_COLOR
        ax.errorbar(s[x_key], test["mean"], yerr=_error_bar(test), fmt="o", color=color, capsize=3)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1)
        ax.annotate("majority class", (0.01, floor), xycoords=("axes fraction", "data"), textcoords="offset points",
                    xytext=(0, 3), fontsize=8, color="gray")
    ax.set_ylabel(f"test {metric} (mean over seeds, 95% CI)")
    ax.grid(True, alpha=0.3)
    ax.plot([], [], "o", color=SELECTIVE_COLOR, label="selective (selectune)")
    ax.plot([], [], "o", color=PEFT_COLOR, label="PEFT baseline (peft)")
    ax.legend(loc="lower right", fontsize=8)
    _label_points(ax, [(s["method"], s[x_key], s["test"][metric]["mean"]) for s in summaries])


def _error_bar(stat: dict[str, Any]) -> Any:
    """(2, 1) distances below and above the mean to the CI's ends; the seed sd (or 0) where there is no CI."""
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
        return [[max(stat["mean"] - stat["ci_low"], 0.0)], [max(stat["ci_high"] - stat["mean"], 0.0)]]
    return stat.get("sd") or 0.0


def plot_comparison(summaries: list[dict[str, Any]], metric: str, out_dir: str | Path, title: str,
                    floor: float | None = None) -> list[Path]:
    out = Path(out_dir)
    return [_save(fig, out / name) for name, fig in comparison_figures(summaries, metric, title, floor).items()]


def comparison_figures(summaries: list[dict[str, Any]], metric: str, title: str, floor: float | None = None) -> dict[str, Any]:
    """File name -> matplotlib figure (not yet laid out: ``finish_layout`` does that)."""
    figures = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _scatter(ax, summaries, "trainable_parameters", metric, floor, log_x=True)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_title(f"{title}: {metric} vs trainable parameters", fontsize=10)
    figures["accuracy_vs_parameters.png"] = fig

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _scatter(ax, summaries, "train_seconds", metric, floor)
    ax.set_xlabel("training time, seconds (mean over seeds)")
    ax.set_title(f"{title}: {metric} vs training time", fontsize=10)
    figures["accuracy_vs_time.png"] = fig

    names = [textwrap.fill(s["method"], 22) for s in summaries]  # a long method string wraps instead of running into the bars
    lines = max(name.count("\n") + 1 for name in names)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, (0.18 * lines + 0.27) * len(summaries) + 1.6), sharey=True)
    colors = [PEFT_COLOR if s["kind"] == "peft" else SELECTIVE_COLOR for s in summaries]
    left.barh(names, [s["peak_memory_mb"] or 0.0 for s in summaries], color=colors)
    left.set_xlabel("peak training memory beyond the weights (MB)")
    right.barh(names, [1000 * s["median_step_seconds"] for s in summaries], color=colors)
    right.set_xlabel("median optimizer step (ms)")
    left.invert_yaxis()
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{title}: training cost", fontsize=10)
    figures["memory.png"] = fig
    return figures


def _visible(labels) -> list:
    return [t for t in labels if t.get_visible() and t.get_text()]


def _colliding(labels, renderer) -> bool:
    boxes = [t.get_window_extent(renderer) for t in _visible(labels)]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def untangle_ticks(fig) -> None:
    """Turn colliding x tick labels by 30 degrees; then hide any tick label (x or y) whose box overlaps the last one kept."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        xlabels = ax.get_xticklabels(which="both")
        if _colliding(xlabels, renderer):
            for label in xlabels:
                label.set_rotation(30)
                label.set_horizontalalignment("right")
                label.set_rotation_mode("anchor")
    fig.tight_layout()
    fig.canvas.draw()
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(which="both"), ax.get_yticklabels(which="both")):
            kept = []
            for label in sorted(_visible(labels), key=lambda t: (t.get_window_extent(renderer).x0, t.get_window_extent(renderer).y0)):
                box = label.get_window_extent(renderer)
                if any(box.overlaps(other) for other in kept):
                    label.set_visible(False)
                else:
                    kept.append(box)


def finish_layout(fig) -> None:
    fig.tight_layout()
    untangle_ticks(fig)


def _save(fig, path: Path) -> Path:
    finish_layout(fig)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
