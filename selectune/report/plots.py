"""Figures for the report, drawn with matplotlib from saved curve points; each returns PNG bytes.

Nothing here computes a metric: the points come from the evaluation file the gate wrote. PNG bytes are
deterministic for the same points (no timestamp in the metadata), so the same run gives the same report.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

COLORS = {"base": "#6c757d", "update": "#1f6fd1"}
FALLBACK = ["#1f6fd1", "#e07b00", "#2a9d4b", "#b23a48", "#7b5cd6"]


def _color(name: str, i: int) -> str:
    # "base (in use)" and "base: negative" are the base's colour too
    key = next((k for k in COLORS if name == k or name.startswith((k + " ", k + ":"))), None)
    return COLORS[key] if key else FALLBACK[i % len(FALLBACK)]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def roc_figure(curves: dict[str, dict], title: str = "ROC curve") -> bytes:
    """curves: name -> {"fpr": [...], "tpr": [...], "label": legend text, "linestyle": optional}; a name starting with
    "base" or "update" takes that model's colour."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for i, (name, c) in enumerate(curves.items()):
        ax.step(c["fpr"], c["tpr"], where="post", color=_color(name, i), ls=c.get("linestyle", "-"), lw=2, label=c.get("label", name))
    ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1, label="chance")
    ax.set(xlabel="1 − specificity (false positive rate)", ylabel="sensitivity (true positive rate)", title=title,
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def pr_figure(curves: dict[str, dict], prevalence: float | None = None, title: str = "Precision–recall curve") -> bytes:
    """curves: model name -> {"recall": [...], "precision": [...], "label": ...}; prevalence draws the chance line."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for i, (name, c) in enumerate(curves.items()):
        ax.step(c["recall"], c["precision"], where="post", color=_color(name, i), ls=c.get("linestyle", "-"), lw=2,
                label=c.get("label", name))
    if prevalence is not None:
        ax.axhline(prevalence, ls=":", color="#999", lw=1, label=f"chance (prevalence {prevalence:.3f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def calibration_figure(curves: dict[str, dict], title: str = "Calibration") -> bytes:
    """curves: model name -> {"predicted": [...] mean predicted per bin, "observed": [...], "count": [...] optional,
    "label": ...}. Marker area follows the bin's row count, so near-empty bins do not look like evidence."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1, label="perfect calibration")
    for i, (name, c) in enumerate(curves.items()):
        color = _color(name, i)
        ax.plot(c["predicted"], c["observed"], color=color, lw=1.5, label=c.get("label", name))
        counts = c.get("count")
        if counts:
            top = max(max(counts), 1)
            ax.scatter(c["predicted"], c["observed"], s=[12 + 120 * n / top for n in counts], color=color, alpha=0.7, zorder=3)
    ax.set(xlabel="mean predicted probability (bin)", ylabel="observed frequency (bin)", title=title,
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def subgroup_figure(metric: str, groups: Sequence[str], estimates: dict[str, Sequence[tuple[float, float, float]]],
                    unreliable: Sequence[bool] = (), title: str = "") -> bytes:
    """A forest plot: per group (rows) and model (colour), the point estimate with its 95% CI.

    estimates: model name -> one (value, low, high) per group, NaN where undefined. Groups flagged
    unreliable (below the minimum n) are drawn hollow and named with an asterisk, not hidden.
    """
    unreliable = list(unreliable) or [False] * len(groups)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.42 * len(groups) * max(len(estimates), 1)))
    n_models = max(len(estimates), 1)
    for m, (name, values) in enumerate(estimates.items()):
        color, labelled = _color(name, m), False
        for g, (value, low, high) in enumerate(values):
            if value != value:  # NaN: undefined in this group (e.g. one class only)
                continue
            y = g + (m - (n_models - 1) / 2) * 0.28  # models side by side within a group's row
            xerr = [[max(value - low, 0)], [max(high - value, 0)]] if low == low and high == high else None
            ax.errorbar(value, y, xerr=xerr, fmt="o", color=color, mfc="white" if unreliable[g] else color, ms=6, capsize=3,
                        label=None if labelled else name)
            labelled = True
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([f"{g} *" if u else str(g) for g, u in zip(groups, unreliable)])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (95% CI)")
    ax.set_title((title or f"{metric} by subgroup") + ("  (* below minimum n: CI unreliable)" if any(unreliable) else ""), fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def history_figure(history: list[dict], metric: str, title: str = "Training history") -> bytes:
    """Train loss and the validation metric per epoch, from metrics.json's history (train loss alone for a run with
    no validation rows)."""
    epochs = [h["epoch"] for h in history]
    validated = any("val_loss" in h for h in history)
    fig, left = plt.subplots(figsize=(6.0, 3.4))
    left.plot(epochs, [h.get("train_loss", float("nan")) for h in history], "o-", color="#6c757d", label="train loss")
    left.set(xlabel="epoch", ylabel="loss")
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if validated:
        left.plot(epochs, [h.get("val_loss", float("nan")) for h in history], "s--", color="#adb5bd", label="validation loss")
        right = left.twinx()
        right.plot(epochs, [h.get(f"val_{metric}", float("nan")) for h in history], "o-", color="#1f6fd1", label=f"validation {metric}")
        right.set_ylabel(f"validation {metric}")
        lines = left.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        left.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
    else:
        left.legend(fontsize=8, loc="best")
    left.set_title(title, fontsize=10)
    left.grid(alpha=0.3)
    return _png(fig)
