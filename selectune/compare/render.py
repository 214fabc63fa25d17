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
    lines += [f"  {w}" for w in advice["warnings"]]
    lines += [f"  note: {n}" for n in advice["notes"]]
    lines.append(f"wrote {result['out']}/compare.json and " + ", ".join(result["plots"]))
    return "\n".join(lines)
