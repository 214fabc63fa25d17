"""Issue 14's goals for the recipe benchmark, in one place: benchmarks/recipe.py writes them into recipe.json and
benchmarks/readme_table.py renders them (every goal, measured or not yet). Light on purpose: no torch import."""
from __future__ import annotations

METHODS = ("bitfit", "full", "head", "random:budget=0.005", "lora:r=8", "beft", "ia3")  # the seven the issue names
TASKS = ("rating", "condition")
BITFIT = "bitfit"
PEFT_RIVALS = ("lora:r=8", "beft", "ia3")
FULL_GAP = {"condition": 0.02, "rating": 0.03}  # how far under full fine-tuning BitFit may be, in macro-F1


def goals(tasks: dict[str, dict], seeds: int) -> list[dict]:
    """Every goal on every task: ``met`` True or False with the paired difference behind it, or None while the rival
    (or BitFit) has no row yet."""
    rows = []
    for name in TASKS:
        task = tasks.get(name, {})
        methods, differences = task.get("methods", {}), task.get("bitfit_minus", {})
        wanted = [(rival, f"BitFit >= {rival} ({seeds}-seed mean macro-F1)", 0.0) for rival in PEFT_RIVALS]
        wanted.append(("full", f"BitFit within {100 * FULL_GAP[name]:.0f} points of full fine-tuning", -FULL_GAP[name]))
        for rival, goal, floor in wanted:
            d = differences.get(rival, {}).get("macro_f1")
            row = {"task": name, "goal": goal, "rival": rival, "met": None if d is None else bool(d["value"] >= floor),
                   "difference": d}
            if d is not None and rival == "full":
                row.update(bitfit=methods[BITFIT]["test"]["macro_f1"], full=methods["full"]["test"]["macro_f1"])
            rows.append(row)
    return rows
