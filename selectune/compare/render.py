"""The comparison as terminal text: one row per method, then the recommendation and its warnings."""
from __future__ import annotations

from typing import Any

from selectune.text_table import table


def _pm(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat.get("sd") is not None else "")


def _ci(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("ci_low") is None:
        return "–"
    return f"[{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def render_comparison(result: dict[str, Any]) -> str:
    if "folds" in result:  # compare --cv K: the settings were chosen by cross-validation
        return render_tune(result)
    metric = result["metric"]
    second = "accuracy" if "accuracy" in result["methods"][0]["test"] else "mae"
    rows = []
    base = result.get("majority_baseline")
    if base:
        rows.append({"method": "majority class", f"test {metric}": f"{base.get(metric, float('nan')):.3f}",
                     f"test {second}": f"{base.get(second, float('nan')):.3f}"})
    for s in result["methods"]:
        rows.append({
            "method": s["method"], "lr": f"{s['lr']:g}", "trainable": f"{s['trainable_parameters']:,}",
            "%": f"{s['trainable_percent']:.3f}", f"val {metric}": _pm(s["validation"]),
            f"test {metric}": _pm(s["test"].get(metric)), "95% CI": _ci(s["test"].get(metric)),
            f"test {second}": _pm(s["test"].get(second)), "train s": f"{s['train_seconds']:.0f}",
            "step ms": f"{1000 * s['median_step_seconds']:.0f}",
            "peak MB": "–" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}",
            "delta KB": f"{s['delta_bytes'] / 1000:,.0f}",
        })
    columns = ["method", "lr", "trainable", "%", f"val {metric}", f"test {metric}", "95% CI", f"test {second}", "train s",
               "step ms", "peak MB", "delta KB"]
    config = result["config"]
    advice = result["recommendation"]
    lines = [
        f"{len(result['methods'])} methods × seeds {config['seeds']}, {config['train_config']['epochs']} epochs, "
        f"{result['split_protocol']['sizes']['train']} training rows; lr chosen on validation"
        + (" from default × 1/3, 1, 3" if config["lr_sweep"] else " (method defaults)")
        + f"; 95% CI: bootstrap over test rows of the seed mean ({config['bootstrap_resamples']} resamples)",
        table(rows, columns),
        "",
        f"Recommendation ({advice['metric']} on {advice['split']}, tolerance {advice['tolerance']:g}, cheapest by {advice['prefer']}): "
        f"{advice['recommended']}",
        f"  {advice['reasoning']}",
    ]
    lines += _advice_tail(advice)
    lines.append(f"wrote {result['out']}/compare.json and " + ", ".join(result["plots"]))
    return "\n".join(lines)


def _advice_tail(advice: dict[str, Any]) -> list[str]:
    lines = [f"  {w}" for w in advice["warnings"]]
    lines += [f"  note: {n}" for n in advice["notes"]]
    if advice.get("tolerance_rule"):
        lines.append(f"  tolerance: {advice['tolerance_rule']}")
    return lines


def render_tune(result: dict[str, Any]) -> str:
    """``selectune tune``: per method the chosen setting, its score on each fold and their mean, then the test score."""
    metric, config, advice = result["metric"], result["config"], result["recommendation"]
    rows = []
    for s in result["methods"]:
        folds = s["validation"]["folds"]
        rows.append({"method": s["method"], "lr": f"{s['lr']:g}", "epochs": str(s["epochs"]), "dropout": f"{s['dropout']:g}",
                     "CV folds": " ".join(f"{v:.3f}" for v in folds), f"CV {metric}": _pm(s["validation"]),
                     f"test {metric}": _pm(s["test"].get(metric)), "95% CI": _ci(s["test"].get(metric)),
                     "trainable": f"{s['trainable_parameters']:,}", "train s": f"{s['train_seconds']:.0f}"})
    columns = ["method", "lr", "epochs", "dropout", "CV folds", f"CV {metric}", f"test {metric}", "95% CI", "trainable", "train s"]
    lines = [f"{len(result['methods'])} methods; lr, epochs and dropout chosen by {config['cv']}-fold cross-validation of the "
             f"{result['split_protocol']['sizes']['train']} training rows (the same folds for every method), refitted on all of "
             f"them with seeds {config['seeds']}, scored once on {result['split_protocol']['sizes']['test']} test rows; "
             f"95% CI: bootstrap over test rows of the seed mean",
             table(rows, columns), "",
             f"Recommendation ({advice['metric']} on {advice['split']}, cheapest by {advice['prefer']}): {advice['recommended']}",
             f"  {advice['reasoning']}"]
    lines += _advice_tail(advice)
    lines.append(f"wrote {result['out']}/tune.json and " + ", ".join(result["plots"]))
    return "\n".join(lines)
