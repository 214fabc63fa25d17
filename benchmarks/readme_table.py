"""Render the README's results tables from benchmarks/results/*.json (never typed by hand).

    python benchmarks/readme_table.py            # print the tables
    python benchmarks/readme_table.py --write    # replace the block between the markers in README.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # `python benchmarks/readme_table.py`: this repo's benchmarks package

from benchmarks.recipe_goals import METHODS, TASKS, goals  # noqa: E402  (the recipe's goals, one place)
BEGIN, END = "<!-- results:begin (benchmarks/readme_table.py) -->", "<!-- results:end -->"


MEAN_POOLED = ("drug_reviews_mean_pooling.json", 'python benchmarks/drug_reviews.py --model minilm-mean --methods "bitfit;full" '
               '--lrs "bitfit=1e-3;full=1e-4" --dropouts "bitfit=model;full=model" --seeds "bitfit=0,1,2;full=0,1,2" '
               '--out benchmarks/results/drug_reviews_mean_pooling.json')
LONGER = ("drug_reviews_20_epochs.json", 'python benchmarks/drug_reviews.py --epochs 20 --methods "bitfit;full" --lrs "bitfit=1e-3;full=1e-4" '
          '--dropouts "bitfit=model,0;full=model" --seeds "bitfit=0;full=0" --out benchmarks/results/drug_reviews_20_epochs.json')


def dropout_text(dropout: float | None) -> str:
    """None (the model's own dropout) -> "model"; 0.0 -> "0"."""
    return "model" if dropout is None else f"{dropout:g}"


def grid_text(grid: dict) -> str:
    """{"bitfit": {"lr": [...], "dropout": [None, 0.0], "seeds": [0, 1, 2]}} -> "bitfit: lr 0.001, 0.003 × dropout model, 0; seeds 0,1,2"."""
    def one(g):
        dropout = ", ".join(map(dropout_text, g["dropout"]))
        return f"lr {', '.join(f'{lr:g}' for lr in g['lr'])} × dropout {dropout}; seeds {','.join(map(str, g['seeds']))}"
    return "; ".join(f"{m}: {one(g)}" for m, g in grid.items())


def accuracy_table(name: str = "drug_reviews.json", command: str = "python benchmarks/drug_reviews.py") -> str:
    data = json.loads((RESULTS / name).read_text())
    r = data["recipe"]
    grid = {m: data["grid"][m] for m in data["chosen"]}
    model = ("all-MiniLM-L6-v2 read by mean pooling (`--model minilm-mean`, what `--model minilm` means since 0.2: one appended "
             "BERT layer, selectune/pooling.py)" if r.get("model") == "minilm-mean" else "all-MiniLM-L6-v2 through its CLS pooler (`minilm-cls`)")
    lines = [
        f"Drug-review rating (3 classes), {model}, {r['epochs']} epochs, batch {r['batch_size']}, max length "
        f"{r['max_length']}, class weight {r['class_weight']}; learning rate and dropout (\"model\" = MiniLM's own 0.1) per method "
        f"chosen by validation macro-F1 averaged over the method's seeds, from {grid_text(grid)} (`{command}`). "
        f"Single-run columns are seed {r['seed']}.",
        "",
        "| method | lr | dropout | trainable % | delta size | val macro-F1 | test accuracy | test macro-F1 | test macro-F1 over seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = data["majority_baseline"]
    lines.append(f"| majority class | – | – | – | – | – | {base['accuracy']:.3f} | {base['macro_f1']:.3f} | – |")
    for method, c in data["chosen"].items():
        lines.append(f"| {method} | {c['lr']:g} | {dropout_text(c['dropout'])} | {c['trainable_percent']:.3f} | {c['delta_bytes'] / 1000:,.0f} KB | "
                     f"{c['val_macro_f1']:.3f} | {c['test_accuracy']:.3f} | {c['test_macro_f1']:.3f} | {over_seeds(c)} |")
    return "\n".join(lines)


def over_seeds(chosen: dict) -> str:
    """Mean ± sd of test macro-F1 of the chosen setting over the method's seeds, with each seed's value."""
    if len(chosen.get("seeds", [])) < 2:
        return "seed 0 only"
    each = ", ".join(f"{v:.3f}" for v in chosen["test_macro_f1_by_seed"])
    return f"{chosen['test_macro_f1_mean']:.3f} ± {chosen['test_macro_f1_sd']:.3f} (seeds {','.join(map(str, chosen['seeds']))}: {each})"


def settings_table(name: str = "drug_reviews.json", methods: tuple[str, ...] = ("full", "bitfit")) -> str:
    """Every grid setting of the multi-seed methods: mean validation (what chose) beside mean test (never used to choose)."""
    data = json.loads((RESULTS / name).read_text())
    lines = ["Every setting of the multi-seed grids, mean over the seeds (each seed also redraws the 90-review validation split). "
             "Validation chose the marked row; the test column was never used to choose.", "",
             "| method | lr | dropout | val macro-F1 | test macro-F1 | each seed's test macro-F1 | chosen |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        grid, chosen = data["grid"][method], data["chosen"].get(method)
        for lr in grid["lr"]:
            for dropout in grid["dropout"]:
                runs = sorted((r for r in data["runs"] if (r["method"], r["lr"], r.get("dropout")) == (method, lr, dropout)
                               and r["seed"] in grid["seeds"]), key=lambda r: r["seed"])
                test = [r["test"]["macro_f1"] for r in runs]
                mark = "yes" if chosen and (chosen["lr"], chosen["dropout"]) == (lr, dropout) else ""
                lines.append(f"| {method} | {lr:g} | {dropout_text(dropout)} | {statistics.fmean(r['val_macro_f1'] for r in runs):.3f} | "
                             f"{statistics.fmean(test):.3f} | {', '.join(f'{t:.3f}' for t in test)} | {mark} |")
    return "\n".join(lines)


def mean_pooling_table() -> str:
    """CLS head (what selectune trains and merges) vs a mean-pooled head, same recipe, seeds and learning rates."""
    mean = json.loads((RESULTS / "mean_pooling.json").read_text())
    cls = json.loads((RESULTS / "drug_reviews.json").read_text())
    lines = [f"The same 8-epoch recipe and seeds with a mean-pooled head ({mean['head']}) instead of the CLS pooler, each method at "
             f"{', '.join(f'{m} lr {lr:g}' for m, lr in mean['lrs'].items())}, MiniLM's own dropout (`python benchmarks/mean_pooling.py`). "
             "Not something selectune trains: such a model does not load as a classifier with plain `from_pretrained`.", "",
             "| method | head | test macro-F1 over seeds | each seed | gap to full, same head |", "|---|---|---|---|---|"]
    # the CLS runs at the mean-pooled runs' lr, the model's dropout and seeds: test macro-F1 per seed
    cls_f1 = {method: [r["test"]["macro_f1"] for r in sorted(cls["runs"], key=lambda r: r["seed"])
                       if (r["method"], r["lr"], r.get("dropout")) == (method, mean["lrs"][method], None) and r["seed"] in m["seeds"]]
              for method, m in mean["methods"].items()}
    heads = {"CLS pooler (drug_reviews.json, same lr and dropout)": cls_f1,
             "mean pooling (mean_pooling.json)": {method: m["test_macro_f1_by_seed"] for method, m in mean["methods"].items()}}
    for head, by_method in heads.items():
        full = statistics.fmean(by_method["full"])
        for method, f1 in by_method.items():
            spread = f" ± {statistics.stdev(f1):.3f}" if len(f1) > 1 else ""
            gap = "–" if method == "full" else f"{100 * (statistics.fmean(f1) - full):+.1f} pt"
            lines.append(f"| {method} | {head} | {statistics.fmean(f1):.3f}{spread} | {', '.join(f'{v:.3f}' for v in f1)} | {gap} |")
    return "\n".join(lines)


def step_table(path: Path = RESULTS / "step_time.json", what: str = "MiniLM", command: str = "python benchmarks/step_time.py") -> str:
    data = json.loads(path.read_text())
    lines = [
        f"Training step on {what}, batch {data['batch']}×{data['length']}, {data['device']} ({data['torch_threads']} threads), "
        f"median of {data['rounds']} interleaved rounds (`{command}`).",
        "",
        "| method | step time | × full | peak memory beyond weights | × full | trainable params | delta size |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, m in data["methods"].items():
        lines.append(f"| {method} | {m['median_step_seconds']:.3f} s | {m['step_time_ratio_to_full']:.2f} | "
                     f"{m['peak_memory_beyond_weights_mb']:,.0f} MB | {m['memory_ratio_to_full']:.2f} | "
                     f"{m['trainable_parameters']:,} ({m['trainable_percent']:.3f}%) | {m['delta_bytes'] / 1000:,.0f} KB |")
    return "\n".join(lines)


def sparse_table() -> str:
    d = json.loads((RESULTS / "sparse_cost.json").read_text())
    return "\n".join([
        f"FISH mask at {d['budget']:.1%} on MiniLM, after {d['steps']} AdamW steps on drug-review batches "
        "(`python benchmarks/sparse_cost.py`).",
        "",
        "| masked entries | delta size | of the dense base | optimizer state | with dense masking | ratio |",
        "|---|---|---|---|---|---|",
        f"| {d['mask_entries']:,} in {d['masked_tensors']} tensors (+{d['whole_tensors_trained']} whole tensors: biases, classifier) | "
        f"{d['delta_bytes'] / 1000:,.0f} KB | {d['delta_fraction_of_base']:.2%} | {d['optimizer_state_bytes_masked'] / 1e6:.2f} MB | "
        f"{d['optimizer_state_bytes_dense_masking'] / 1e6:.2f} MB | {d['optimizer_state_ratio']:.3f} |",
    ])


def render() -> str:
    gpu = step_table(RESULTS / "h200" / "step_time_h200.json",
                     "a MiniLM-shaped BERT with random weights (the real weights could not be carried to the GPU machine)")
    longer = [accuracy_table(*LONGER)] if (RESULTS / LONGER[0]).is_file() else []
    pooled = [mean_pooling_table()] if (RESULTS / "mean_pooling.json").is_file() else []
    pooled += [accuracy_table(*MEAN_POOLED)] if (RESULTS / MEAN_POOLED[0]).is_file() else []
    return "\n\n".join([BEGIN, accuracy_table(), settings_table(), *longer, *pooled, step_table(), gpu.replace("cuda", "one NVIDIA H200, fp32"), sparse_table(), END])


# ---- the comparison with PEFT (benchmarks/training_cost.py, compare_*.py, low_data.py) ---------------------------

def _stat(stat: dict | None, ci: bool = False) -> str:
    if not stat:
        return "–"
    text = f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat.get("sd") is not None else "")
    return text + (f" [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]" if ci and stat.get("ci_low") is not None else "")


def _method_rows(methods: list[dict]) -> list[str]:
    return [f"| {s['method']} | {'peft' if s['kind'] == 'peft' else 'selectune'} | {s['lr']:g} | {s['trainable_percent']:.3f} | "
            f"{s['delta_bytes'] / 1000:,.0f} KB | {_stat(s['validation'])} | {_stat(s['test']['macro_f1'], ci=True)} | "
            f"{_stat(s['test']['accuracy'])} | {s['train_seconds']:.0f} s |" for s in methods]


METHOD_HEADER = ["| method | from | lr | trainable % | delta / adapter | val macro-F1 | test macro-F1 [95% CI] | test accuracy | train time |",
                 "|---|---|---|---|---|---|---|---|---|"]


def compare_text_tables() -> str:
    data = json.loads((RESULTS / "compare_drug_reviews.json").read_text())
    r = data["recipe"]
    parts = []
    for task in sorted(data["tasks"].values(), key=lambda t: not t["task"].startswith("rating")):  # rating first
        sizes, base = task["sizes"], task["majority_baseline"]
        lines = [f"Drug reviews, {task['task']}: {sizes['train']} training / {sizes['validation']} validation / {sizes['test']} test reviews, "
                 f"all-MiniLM-L6-v2 through its CLS pooler (`minilm-cls`), {r['epochs']} epochs, batch {r['batch_size']}, max length {r['max_length']}, class weight "
                 f"{r['class_weight']}, seed {r['seeds']}, each method's default learning rate "
                 f"(`python benchmarks/compare_drug_reviews.py`).", "", *METHOD_HEADER,
                 f"| majority class | – | – | – | – | – | {base['macro_f1']:.3f} | {base['accuracy']:.3f} | – |",
                 *_method_rows(task["methods"]), "",
                 f"Recommendation (tolerance {task['recommendation']['tolerance']:g} on validation): **{task['recommendation']['recommended']}**. "
                 f"{task['recommendation']['reasoning']}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def compare_tabular_table() -> str:
    d = json.loads((RESULTS / "compare_tabular.json").read_text())
    u, sizes, none = d["update_recipe"], d["sizes"], d["base_without_update"]
    lines = [f"Tabular base → update: {d['data']}; base: TabularMLP {d['base_recipe']['hidden']}, `full`, "
             f"{d['base_recipe']['epochs']} epochs on old.csv; update: {sizes['train']} / {sizes['validation']} / {sizes['test']} rows, "
             f"{u['epochs']} epochs, seeds {u['seeds']}, learning rate chosen on validation from each default × 1/3, 1, 3 "
             f"(`python benchmarks/compare_tabular.py`).", "", *METHOD_HEADER,
             f"| base, no update | – | – | – | – | – | {none['macro_f1']:.3f} | {none['accuracy']:.3f} | – |",
             *_method_rows(d["methods"])]
    return "\n".join(lines)


def low_data_table() -> str:
    d = json.loads((RESULTS / "low_data.json").read_text())
    r, sizes = d["recipe"], sorted(d["sizes"].values(), key=lambda s: s["train_rows"])
    methods = [m for m in r["methods"].split(",") if m in sizes[0]["methods"]]  # the command's order (JSON keys come back sorted)
    lines = [f"Low-data curve, drug-review rating: test macro-F1 (mean ± sd over seeds) by number of training reviews, batch "
             f"{r['batch_size']}, max length {r['max_length']}, at least {r['min_epochs']} epochs and {r['min_steps']} optimizer steps, "
             "default learning rates (`python benchmarks/low_data.py`, figure `benchmarks/results/low_data.png`).", "",
             "| training reviews | epochs | seeds | " + " | ".join(methods) + " |", "|---" * (3 + len(methods)) + "|"]
    for s in sizes:
        lines.append(f"| {s['train_rows']} | {s['epochs']} | {','.join(map(str, s['seeds']))} | "
                     + " | ".join(_stat(s["methods"][m]["test"]["macro_f1"]) for m in methods) + " |")
    return "\n".join(lines)


def goals_table() -> str:
    """Issue 5's goals against the measured figures, each from the JSON named in its row."""
    cost = json.loads((RESULTS / "training_cost.json").read_text())
    cpu = json.loads((RESULTS / "step_time.json").read_text())
    gpu = json.loads((RESULTS / "h200" / "step_time_h200.json").read_text())
    rows = ["| goal | measured | met |", "|---|---|---|"]
    ratios = [(cost["methods"]["bitfit"]["step_time_ratio_to_full"], f"training_cost.json, {cost['device']} {cost['torch_threads']} thread(s)"),
              (cpu["methods"]["bitfit"]["step_time_ratio_to_full"], f"step_time.json, {cpu['device']} {cpu['torch_threads']} threads"),
              (gpu["methods"]["bitfit"]["step_time_ratio_to_full"], "step_time_h200.json, H200")]
    rows.append("| BitFit step time ≤ 0.70× full | " + "; ".join(f"{r:.2f}× ({where})" for r, where in ratios) + " | "
                + ("yes" if all(r <= 0.70 for r, _ in ratios) else "no") + " |")
    f1 = []
    for name in ("drug_reviews.json", LONGER[0], MEAN_POOLED[0]):
        if not (RESULTS / name).is_file():
            continue
        lead = json.loads((RESULTS / name).read_text())
        chosen = lead["chosen"]
        if not {"bitfit", "full"} <= set(chosen):
            continue
        seeds = min(len(chosen[m].get("seeds", [0])) for m in ("bitfit", "full"))
        mean = "test_macro_f1_mean" if seeds > 1 else "test_macro_f1"
        f1.append((chosen["bitfit"][mean], chosen["full"][mean], f"{name}, {lead['recipe']['epochs']} epochs, max length "
                   f"{lead['recipe']['max_length']}" + (f", mean of {seeds} seeds" if seeds > 1 else "")))
    beft = []
    if (RESULTS / "compare_drug_reviews.json").is_file():
        data = json.loads((RESULTS / "compare_drug_reviews.json").read_text())
        rating = {s["method"]: s["test"]["macro_f1"]["mean"] for s in data["tasks"]["rating"]["methods"]}
        where = f"compare_drug_reviews.json, {data['recipe']['epochs']} epochs, max length {data['recipe']['max_length']}"
        if "full" in rating:
            f1.append((rating["bitfit"], rating["full"], where))
        if "beft" in rating:
            beft.append((rating["bitfit"], rating["beft"], where))
    if (RESULTS / "low_data.json").is_file():
        low = json.loads((RESULTS / "low_data.json").read_text())
        whole = max(low["sizes"].values(), key=lambda s: s["train_rows"])  # the whole training file
        if {"bitfit", "full"} <= set(whole["methods"]):
            f1.append((whole["methods"]["bitfit"]["test"]["macro_f1"]["mean"], whole["methods"]["full"]["test"]["macro_f1"]["mean"],
                       f"low_data.json, {whole['train_rows']} reviews, {whole['epochs']} epochs, max length {low['recipe']['max_length']}, "
                       f"mean of {len(whole['seeds'])} seeds"))
    rows.append("| BitFit test macro-F1 ≥ full − 1 pt (rating) | " + "; ".join(f"{b:.3f} vs {f:.3f}, {100 * (b - f):+.1f} pt ({w})" for b, f, w in f1)
                + " | " + ("yes" if all(b >= f - 0.01 for b, f, _ in f1) else "no") + " |")
    if beft:
        rows.append("| BitFit test macro-F1 ≥ PEFT BEFT (rating) | " + "; ".join(f"{b:.3f} vs {e:.3f}, {100 * (b - e):+.1f} pt ({w})" for b, e, w in beft)
                    + " | " + ("yes" if all(b >= e for b, e, _ in beft) else "no") + " |")
    return "Goals of issue 5 against the measurements (on 379 test reviews a single seed's differences of a few points are within the CIs above).\n\n" + "\n".join(rows)


def render_compare() -> str:
    parts = [step_table(RESULTS / "training_cost.json", "MiniLM, full fine-tuning vs selectune BitFit vs PEFT LoRA, (IA)³ and BEFT",
                        "python benchmarks/training_cost.py")]
    for name, table in (("compare_drug_reviews", compare_text_tables), ("compare_tabular", compare_tabular_table),
                        ("low_data", low_data_table)):
        if (RESULTS / f"{name}.json").is_file():
            parts.append(table())
    parts.append(goals_table())
    begin, end = markers("compare")
    return "\n\n".join([begin, *parts, end])


# Each README block between its markers is rendered by one function; tests/test_readme.py checks them all.
def render_serve() -> str:
    import sys

    sys.path.insert(0, str(ROOT))  # run as a script, `benchmarks` is not on the path
    from benchmarks.serve_table import render_body

    begin, end = markers("serve-results")
    return "\n".join([begin, render_body(), end])


# ---- causal LM (benchmarks/causal_lm.py) ---------------------------------------------------------------------------

CAUSAL_LM_COMMAND = "python benchmarks/causal_lm.py"


def _ci_cell(stat: dict) -> str:
    """``0.412 [0.370, 0.455]`` (the mean over seeds and the 95% CI of that mean), ``± sd`` with several seeds."""
    text = f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat.get("sd") else "")
    return text + (f" [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]" if stat.get("ci_low") is not None else "")


def causal_lm_tables(result: dict) -> str:
    """The methods table and the goals table of one causal_lm.json."""
    recipe, sizes = result["recipe"], result["sizes"]
    load = result["machine_load"]["at_start"]
    head = (f"SmolLM2-135M-Instruct rating drug reviews asked as an instruction (`{result.get('command', CAUSAL_LM_COMMAND)}`): {sizes['train']} training "
            f"reviews (up to {recipe['train_per_class']} per class), {recipe['epochs']} epoch(s) of batch {recipe['batch_size']}, max "
            f"length {recipe['max_length']}; test accuracy and macro-F1 on all {sizes['test']} test reviews by label scoring, mean over "
            f"seeds with the 95% bootstrap CI of that mean. Step time and peak training memory (optimizer state included: "
            f"{result['memory_how']}) as ratios to full fine-tuning, runs interleaved in one process; load average "
            f"{load['load_average']['1min']:.2f} on {load['cores']} cores at the start" + (f" (busy: {load['busy_ok']})" if load.get("busy_ok") else "") + ".")
    rows = ["| method | lr | seeds | test macro-F1 | test accuracy | step time / full | peak memory / full | delta bytes |",
            "|---|---|---|---|---|---|---|---|"]
    zero = result["zero_shot"]["test"]
    rows.append(f"| zero-shot (deterministic) | – | – | {_ci_cell(zero['macro_f1'])} | {_ci_cell(zero['accuracy'])} | – | – | – |")
    for method, s in result["methods"].items():
        memory = s.get("peak_memory_ratio_to_full")
        rows.append(f"| {method} ({'peft' if s['kind'] == 'peft' else 'selectune'}) | {s['lr']:g} | {len(s['seeds'])} | "
                    f"{_ci_cell(s['test']['macro_f1'])} | {_ci_cell(s['test']['accuracy'])} | {s['step_time_ratio_to_full']:.2f}× | "
                    + ("–" if memory is None else f"{memory:.2f}×") + f" | {s['delta_bytes']:,} |")
    goals = ["| goal (issue 16) | measured | met |", "|---|---|---|"]
    for goal in result["goals"]:
        measured = goal["measured"]
        text = " vs ".join(f"{m:.3f}" for m in measured) if isinstance(measured, list) else (
            f"{measured:,}" if isinstance(measured, int) else f"{measured:.3f}" if measured is not None else "–")
        goals.append(f"| {goal['goal']} | {text} | {'yes' if goal['met'] else 'no'} |")
    return "\n\n".join([head, "\n".join(rows), "\n".join(goals)])


CAUSAL_SERVE_COMMAND = "python benchmarks/causal_lm_serve.py"
CAUSAL_SERVE_NAMES = {"mixed": "mixed batch, 16 BitFit deltas (selectune)", "merged": "merged model alone (same decoder)",
                      "merged_hf_generate": "merged model alone (HF generate)", "lora_mixed": "PEFT LoRA r=8, 16 adapters (generate)"}


def causal_serve_table(result: dict) -> str:
    """The generation-throughput table and its two goals from one causal_lm_serve.json."""
    config, load = result["config"], result["machine_load"]["at_start"]
    head = (f"Mixed-batch generation (`{CAUSAL_SERVE_COMMAND}`): {config['prompts']} drug-review prompts, {config['new_tokens']} greedy "
            f"tokens each, cycling over {config['deltas']} deltas ({result['synthetic']}); median of {config['rounds']} interleaved rounds, "
            f"{result['torch_threads']} torch threads, load average {load['load_average']['1min']:.2f} on {load['cores']} cores at the start"
            + (f" (busy: {load['busy_ok']})" if load.get("busy_ok") else "") + ". Delta 0's mixed rows give the merged model's tokens: "
            + ("yes." if result["mixed_delta0_tokens_equal_merged"] else "NO."))
    rows = ["| configuration | tokens/s | vs merged |", "|---|---|---|"]
    for name, c in result["configurations"].items():
        rows.append(f"| {CAUSAL_SERVE_NAMES.get(name, name)} | {c['tokens_per_s']:.1f} | {c['ratio_vs_merged']:.2f}× |")
    goals = ["| goal (issue 16) | met |", "|---|---|"] + [f"| {goal} | {'yes' if met else 'no'} |" for goal, met in result["goals"].items()]
    return "\n\n".join([head, "\n".join(rows), "\n".join(goals)])


def render_causal_lm(path: Path | None = None, serve_path: Path | None = None) -> str:
    """The causal-LM results and goals, or (before the first run) what to run to get them; then generation serving's."""
    path = path or RESULTS / "causal_lm.json"
    serve_path = serve_path or RESULTS / "causal_lm_serve.json"
    begin, end = markers("causal-lm-results")
    if not path.is_file():
        body = (f"Not measured yet: `{CAUSAL_LM_COMMAND}` writes benchmarks/results/causal_lm.json (about 30 minutes on an idle 2-core "
                "CPU), then `python benchmarks/readme_table.py --write` puts its methods and goals tables here.")
    else:
        # causal_lm.json, then any other recipe's run (`--out benchmarks/results/causal_lm_<recipe>.json`) after it
        others = sorted(p for p in path.parent.glob(path.stem + "_*.json") if p.name != serve_path.name)
        body = "\n\n".join(causal_lm_tables(json.loads(p.read_text())) for p in [path, *others])
    if serve_path.is_file():
        body += "\n\n" + causal_serve_table(json.loads(serve_path.read_text()))
    return "\n\n".join([begin, body, end])


RECIPE_COMMAND = "python benchmarks/recipe.py"


def recipe_goals(result: dict | None) -> list[tuple[str, str, str]]:
    """Issue 14's goals on both tasks as (goal, measured, met), from benchmarks/recipe_goals.py: every goal the issue
    names, measured or not (yet)."""
    seeds = len((result or {}).get("recipe", {}).get("seeds", [0] * 5))
    rows = []
    for g in goals((result or {}).get("tasks", {}), seeds):
        d = g["difference"]
        measured = "not measured yet" if d is None else (f"BitFit − {g['rival']} {100 * d['value']:+.1f} pt "
                                                        f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]")
        rows.append((f"{g['task']}: {g['goal']}", measured, {None: "–", True: "yes", False: "no"}[g["met"]]))
    return rows


def recipe_tables(result: dict) -> str:
    """Per task: each method's cross-validated setting, fold scores, seed-mean test macro-F1 with its CI and BitFit's
    paired difference; then issue 14's goals."""
    r = result["recipe"]
    parts = [f"All-MiniLM-L6-v2 read by mean pooling (`{r['model']}`), settings per method by `selectune tune`: {r['cv']}-fold "
             f"cross-validation of the training file (stratified, the same folds for every method; grid: each method's default "
             f"lr × 1/3, 1, 3, epochs 3, 5, 8{', ' + ', '.join(r['grid']) if r['grid'] else ', dropout 0, 0.1'}), then a refit on "
             f"all training rows per seed ({', '.join(map(str, r['seeds']))}) scored once on the test file; batch "
             f"{r['batch_size']}, max length {r['max_length']}, class weight {r['class_weight']}. Test macro-F1 is the mean over "
             f"seeds with its 95% bootstrap CI over test rows; BitFit − method is a paired bootstrap of the seed means on the "
             f"same resampled rows ({r['bootstrap']} resamples) (`{RECIPE_COMMAND}`)."]
    for name in TASKS:
        task = result["tasks"].get(name)
        if not task:
            parts.append(f"Drug reviews, {name}: not measured yet.")
            continue
        methods, minus = task["methods"], task["bitfit_minus"]
        first = next(iter(methods.values()))
        lines = [f"Drug reviews, {task['task']}: {first['sizes']['train']} training / {first['sizes']['test']} test reviews; "
                 f"majority class {first['majority_baseline']['macro_f1']:.3f} test macro-F1.", "",
                 "| method | lr | epochs | dropout | CV macro-F1 (folds) | test macro-F1 [95% CI] | each seed | BitFit − method [95% CI] | trainable % |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for method in [m for m in METHODS if m in methods] + sorted(set(methods) - set(METHODS)):
            row, f1 = methods[method], methods[method]["test"]["macro_f1"]
            folds = ", ".join(f"{v:.3f}" for v in row["cv"]["folds"])
            d = minus.get(method, {}).get("macro_f1")
            paired = f"{100 * d['value']:+.1f} pt [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" if d else "–"
            seeds = ", ".join(f"{v:.3f}" for v in row["test_macro_f1_by_seed"])
            lines.append(f"| {method} | {row['setting']['lr']:g} | {row['setting']['epochs']} | {dropout_text(row['setting']['dropout'])} | "
                         f"{row['cv']['mean']:.3f} ({folds}) | {f1['mean']:.3f} [{f1['ci_low']:.3f}, {f1['ci_high']:.3f}] | {seeds} | "
                         f"{paired} | {row['trainable_percent']:.3f} |")
        missing = [m for m in METHODS if m not in methods]
        if missing:
            lines += ["", f"Not measured yet on {name}: {', '.join(missing)}."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render_recipe(path: Path | None = None) -> str:
    """Issue 14's evidence (benchmarks/results/recipe.json) and its goals, measured or not yet."""
    path = path or RESULTS / "recipe.json"
    begin, end = markers("recipe-results")
    result = json.loads(path.read_text()) if path.is_file() else None
    body = recipe_tables(result) if result else (f"Not measured yet: `{RECIPE_COMMAND}` writes benchmarks/results/recipe.json.")
    goals = ["| goal (issue 14) | measured | met |", "|---|---|---|"] + [f"| {g} | {m} | {ok} |" for g, m, ok in recipe_goals(result)]
    return "\n\n".join([begin, body, "\n".join(goals), end])


BLOCKS = {"results": render, "compare": render_compare, "serve-results": render_serve, "causal-lm-results": render_causal_lm,
          "recipe-results": render_recipe}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin (benchmarks/readme_table.py) -->", f"<!-- {name}:end -->"


def readme_block(text: str, name: str = "results") -> str:
    begin, end = markers(name)
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[start:stop]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render_block in BLOCKS.items():
        block = render_block()
        if args.write:
            text = text.replace(readme_block(text, name), block)
        print(block)
    if args.write:
        readme.write_text(text)


if __name__ == "__main__":
    main()
