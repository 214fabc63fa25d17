"""The recommendation: the cheapest method within a stated tolerance of the best on the VALIDATION split.

The test split plays no part in the choice (it is reported, not optimised). "Cheapest" is by the cost the user
prefers: trainable parameters (the size of what must be stored, reviewed and shipped per update), median step
time, or peak training memory beyond the weights. When the recommended method is not the best one, each
validation subgroup the user named is checked, and a warning is given where the recommended method trails the
best by more than the tolerance there.
"""
from __future__ import annotations

from typing import Any

from selectune.evaluate.metrics import HIGHER_IS_BETTER

COSTS = {"parameters": ("trainable_parameters", "trainable parameters"),
         "time": ("median_step_seconds", "median step time"),
         "memory": ("peak_memory_mb", "peak memory beyond the weights")}
# Metrics on a 0-1 scale are discussed in points (0.01 = 1 pt); the others in their own units.
POINT_METRICS = {"accuracy", "macro_f1", "auroc", "auprc", "sensitivity", "specificity", "ppv", "npv"}


def gap_text(metric: str, gap: float) -> str:
    return f"{100 * gap:.1f} pt" if metric in POINT_METRICS else f"{gap:.3g}"


def ratio_text(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference == 0:
        return "n/a"
    ratio = value / reference
    return f"1/{1 / ratio:.0f}" if 0 < ratio < 0.2 else f"{ratio:.2f}×"


def shortfall(metric: str, value: float, best: float) -> float:
    """How far ``value`` trails ``best`` (>= 0 when worse), whichever direction the metric improves in."""
    return best - value if HIGHER_IS_BETTER.get(metric, True) else value - best


def check_choice_settings(settings: Any) -> None:
    """The fields ``compare`` and ``tune`` share: ``prefer``, ``tolerance``, ``bootstrap`` and ``seeds``."""
    if settings.prefer not in COSTS:
        raise ValueError(f"--prefer must be one of {', '.join(COSTS)}, got {settings.prefer!r}")
    if settings.tolerance < 0:
        raise ValueError(f"--tolerance must be >= 0 (0.01 = 1 point), got {settings.tolerance}")
    if settings.bootstrap < 100:
        raise ValueError(f"--bootstrap must be at least 100 resamples, got {settings.bootstrap}")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise ValueError(f"--seeds must list distinct integers such as 0,1,2; got {','.join(map(str, settings.seeds))!r}")


def scaled_tolerance(summaries: list[dict[str, Any]], metric: str, tolerance: float) -> dict[str, Any]:
    """``--tolerance`` in the metric's units. On a 0-1 metric (macro-F1, accuracy, AUROC, R²) as given: 0.01 = 1 point.
    On any other (RMSE, MAE: units of the target; loss) that fraction of the best validation value, so 0.01 means 1% of
    the best RMSE: an absolute 0.01 on an RMSE of ~50 would call a 0.2 difference far inside the CIs decisive."""
    if metric in POINT_METRICS or metric == "r2":
        return {"absolute": tolerance, "relative": False, "rule": f"{gap_text(metric, tolerance)} (absolute on a 0-1 metric)"}
    higher = HIGHER_IS_BETTER.get(metric, True)
    best = max(s["validation"]["mean"] if higher else -s["validation"]["mean"] for s in summaries) * (1 if higher else -1)
    absolute = tolerance * abs(best)
    return {"absolute": absolute, "relative": True,
            "rule": f"{100 * tolerance:g}% of the best validation {metric} ({best:.4g}): {absolute:.3g} {metric} units"}


def recommend(summaries: list[dict[str, Any]], metric: str, tolerance: float, prefer: str = "parameters",
              subgroups: dict[str, dict[str, dict[str, dict[str, Any]]]] | None = None, min_group_n: int = 10) -> dict[str, Any]:
    """Pick from per-method summaries (each: method, validation.mean, and the cost fields of COSTS).

    subgroups: method -> column -> value -> {"n": rows, "score": mean over seeds} on the validation split.
    """
    if prefer not in COSTS:
        raise ValueError(f"--prefer must be one of {', '.join(COSTS)}, got {prefer!r}")
    if tolerance < 0:
        raise ValueError(f"--tolerance must be >= 0 (in {metric} units; 0.01 = 1 pt), got {tolerance}")
    key, cost_label = COSTS[prefer]
    if any(s.get(key) is None for s in summaries):
        raise ValueError(f"--prefer {prefer}: {cost_label} was not measured for every method on this platform; use --prefer parameters")
    higher = HIGHER_IS_BETTER.get(metric, True)
    best = max(summaries, key=lambda s: s["validation"]["mean"] if higher else -s["validation"]["mean"])
    best_value = best["validation"]["mean"]
    within = [s for s in summaries if shortfall(metric, s["validation"]["mean"], best_value) <= tolerance + 1e-12]
    # Cheapest first; among equal costs the better validation score.
    chosen = min(within, key=lambda s: (s[key], shortfall(metric, s["validation"]["mean"], best_value)))
    tol = gap_text(metric, tolerance)
    names = ", ".join(s["method"] for s in within)
    if chosen is best:
        cheaper = f"fewer {cost_label}" if prefer == "parameters" else f"a lower {cost_label}"
        reasoning = (f"{best['method']} has the best validation {metric} ({best_value:.3f}), and no method within {tol} of it "
                     f"has {cheaper} (within {tol}: {names}).")
    else:
        gap = shortfall(metric, chosen["validation"]["mean"], best_value)
        reasoning = (f"{chosen['method']} is within {gap_text(metric, gap)} of the best, {best['method']} (validation {metric} "
                     f"{chosen['validation']['mean']:.3f} vs {best_value:.3f}), at "
                     f"{ratio_text(chosen['trainable_parameters'], best['trainable_parameters'])} of its trainable parameters, "
                     f"{ratio_text(chosen['median_step_seconds'], best['median_step_seconds'])} its median step time and "
                     f"{ratio_text(chosen.get('peak_memory_mb'), best.get('peak_memory_mb'))} its peak memory beyond the weights; "
                     f"it has the lowest {cost_label} of the {len(within)} methods within {tol} ({names}).")
    warnings, too_small = [], []
    if subgroups and chosen is not best:
        for column, values in subgroups[chosen["method"]].items():
            for value, cheap in values.items():
                top = subgroups[best["method"]][column][value]
                if cheap["n"] < min_group_n:
                    too_small.append(f"{column}={value} (n={cheap['n']})")
                    continue
                gap = shortfall(metric, cheap["score"], top["score"])
                if gap > tolerance + 1e-12:
                    warnings.append(f"WARNING: on validation subgroup {column}={value} (n={cheap['n']}), {chosen['method']} trails "
                                    f"{best['method']} by {gap_text(metric, gap)} ({metric} {cheap['score']:.3f} vs {top['score']:.3f}), "
                                    f"more than the {tol} tolerance.")
    notes = []
    if too_small:
        notes.append(f"subgroups with fewer than {min_group_n} validation rows were not judged: {', '.join(too_small)}")
    if subgroups and chosen is best:
        notes.append("the recommended method is the best overall, so no subgroup trade-off was made")
    return {"recommended": chosen["method"], "best": best["method"], "metric": metric, "split": "validation",
            "tolerance": tolerance, "prefer": prefer, "within_tolerance": [s["method"] for s in within],
            "reasoning": reasoning, "warnings": warnings, "notes": notes}


def reference_recommendation(reference: dict[str, Any], tolerance: float = 0.01) -> dict[str, Any] | None:
    """What ``compare`` would recommend from a benchmark JSON's chosen rows (``benchmarks/drug_reviews.py``): the same
    rule on their validation macro-F1 (mean over seeds where recorded), cheapest by trainable share. None without rows."""
    rows = []
    for method, r in reference.get("chosen", {}).items():
        value = r.get("val_macro_f1_mean", r.get("val_macro_f1"))
        if value is None or r.get("trainable_percent") is None:
            return None
        rows.append({"method": method, "validation": {"mean": value}, "trainable_parameters": r["trainable_percent"],
                     "median_step_seconds": None, "peak_memory_mb": None})
    if not rows:
        return None
    return recommend(rows, "macro_f1", scaled_tolerance(rows, "macro_f1", tolerance)["absolute"])
