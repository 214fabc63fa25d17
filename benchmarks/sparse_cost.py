"""What a FISH 0.5% mask costs on MiniLM: delta file size against the dense base, and optimizer state of
selectune's masked training (trainable values only) against dense masking (whole tensors trainable, the
gradient multiplied by the mask), both measured after real AdamW steps on drug-review batches.

    python benchmarks/sparse_cost.py          # ~2 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import tempfile
from itertools import islice
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

# `python benchmarks/sparse_cost.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selectune import save_delta, select
from selectune.data import export_bundled, load_splits
from selectune.models import resolve_model
from selectune.train.run import environment
from selectune.tasks import TextClassification


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.005)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sparse_cost.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="sparse-cost-"))
    files = export_bundled("drug-reviews", str(work / "data"))
    splits = load_splits(files["train"], label_col="rating", text_col="review", seed=0)
    task = TextClassification(label_col="rating", labels=splits.labels, text_col="review", max_length=128)

    def fresh():
        return task.load_model(resolve_model("minilm-cls"))

    # selectune's masked training: only the (k,) values of each masked tensor reach the optimizer
    loaded = fresh()  # loads the tokenizer too
    model = loaded.model
    loader = DataLoader(task.examples(splits.train), batch_size=16, shuffle=False, collate_fn=task.collate)
    batches = list(islice(loader, 8))
    selection = select(model, "fish", new_parameters=loaded.new_parameters, batches=batches, budget=args.budget)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for batch in batches[: args.steps]:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    masked_state = state_bytes(optimizer)
    masks = {n: m.clone() for n, m in selection.masks.items()}
    delta_dir = save_delta(model, selection, work / "delta")
    delta_bytes = (delta_dir / "delta.safetensors").stat().st_size
    dense_base_bytes = sum(p.numel() * p.element_size() for p in fresh().model.parameters())
    mask_entries = sum(int(m.sum()) for m in masks.values())
    eligible = sum(m.numel() for m in masks.values())

    # dense masking: the same mask as a gradient hook on whole trainable tensors; Adam keeps full-size state
    model = fresh().model
    whole = set(selection.trainable) - set(selection.masked)
    params = dict(model.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in whole or name in masks)
        if name in masks:
            mask = masks[name].to(param.dtype)
            param.register_hook(lambda grad, mask=mask: grad * mask)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    for batch in batches[: args.steps]:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    dense_state = state_bytes(optimizer)

    result = {
        "benchmark": "sparse_cost", "model": "all-MiniLM-L6-v2", "method": "fish", "budget": args.budget, "steps": args.steps,
        "mask_entries": mask_entries, "eligible_entries": eligible, "masked_tensors": len(masks),
        "whole_tensors_trained": len(whole), "delta_bytes": delta_bytes, "dense_base_bytes": dense_base_bytes,
        "delta_fraction_of_base": delta_bytes / dense_base_bytes,
        "optimizer_state_bytes_masked": masked_state, "optimizer_state_bytes_dense_masking": dense_state,
        "optimizer_state_ratio": masked_state / dense_state, "environment": environment(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"fish {args.budget:.1%}: {mask_entries:,} of {eligible:,} eligible entries in {len(masks)} tensors (+{len(whole)} whole)")
    print(f"delta {delta_bytes / 1e3:,.0f} KB = {result['delta_fraction_of_base']:.2%} of the {dense_base_bytes / 1e6:,.1f} MB base")
    print(f"optimizer state {masked_state / 1e6:.2f} MB vs {dense_state / 1e6:.2f} MB with dense masking ({result['optimizer_state_ratio']:.3f}x)")


if __name__ == "__main__":
    main()
