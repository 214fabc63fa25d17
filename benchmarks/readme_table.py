"""Render the README's results tables from benchmarks/results/*.json (never typed by hand).

    python benchmarks/readme_table.py            # print the tables
    python benchmarks/readme_table.py --write    # replace the block between the markers in README.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- results:begin (benchmarks/readme_table.py) -->", "<!-- results:end -->"


def accuracy_table() -> str:
    data = json.loads((RESULTS / "drug_reviews.json").read_text())
    r = data["recipe"]
    lines = [
        f"Drug-review rating (3 classes), all-MiniLM-L6-v2, {r['epochs']} epochs, batch {r['batch_size']}, max length "
        f"{r['max_length']}, class weight {r['class_weight']}, seed {r['seed']}; learning rate per method chosen on the "
        f"validation split from {data['lr_grid']} (`python benchmarks/drug_reviews.py`).",
        "",
        "| method | lr | trainable % | delta size | val macro-F1 | test accuracy | test macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    base = data["majority_baseline"]
    lines.append(f"| majority class | – | – | – | – | {base['accuracy']:.3f} | {base['macro_f1']:.3f} |")
    for method, c in data["chosen"].items():
        lines.append(f"| {method} | {c['lr']:g} | {c['trainable_percent']:.3f} | {c['delta_bytes'] / 1000:,.0f} KB | "
                     f"{c['val_macro_f1']:.3f} | {c['test_accuracy']:.3f} | {c['test_macro_f1']:.3f} |")
    return "\n".join(lines)


def step_table(path: Path = RESULTS / "step_time.json", what: str = "MiniLM") -> str:
    data = json.loads(path.read_text())
    lines = [
        f"Training step on {what}, batch {data['batch']}×{data['length']}, {data['device']} ({data['torch_threads']} threads), "
        f"median of {data['rounds']} interleaved rounds (`python benchmarks/step_time.py`).",
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
    return "\n\n".join([BEGIN, accuracy_table(), step_table(), gpu.replace("cuda", "one NVIDIA H200, fp32"), sparse_table(), END])


def readme_block(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    block = render()
    if args.write:
        readme = ROOT / "README.md"
        text = readme.read_text()
        readme.write_text(text.replace(readme_block(text), block))
    print(block)


if __name__ == "__main__":
    main()
