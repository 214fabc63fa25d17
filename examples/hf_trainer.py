"""BitFit on the bundled drug reviews with Hugging Face ``transformers.Trainer``: checkpoints hold only the delta.

    python examples/hf_trainer.py --out runs/hf-trainer            # all-MiniLM-L6-v2, 3 classes
    python examples/hf_trainer.py --out runs/hf-trainer --resume   # after an interruption: continue from the last checkpoint

Each ``runs/hf-trainer/trainer/checkpoint-N/`` holds ``delta/`` (the selection's tensors) beside the Trainer's optimizer,
scheduler and RNG state, never the base's weights; the run ends in ``selectune.save_delta`` (``runs/hf-trainer/delta``),
which ``selectune evaluate``, ``gate`` and ``serve`` read like any delta.
"""
from __future__ import annotations

import argparse

import pandas as pd
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments, set_seed

import selectune
from selectune.data import export_bundled
from selectune.models import resolve_model
from selectune.train.hf_trainer import DeltaTrainer


def main(out: str, model: str = "minilm", max_steps: int = 60, save_steps: int = 20, rows: int = 600, resume: bool = False,
         stop_after: int | None = None) -> str:
    """Train; return the delta folder. ``stop_after`` ends training early at that step (a stand-in for a crash)."""
    path = resolve_model(model)
    frame = pd.read_csv(export_bundled("drug-reviews", f"{out}/data")["train"]).head(rows)
    labels = sorted(frame["rating"].unique())
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = tokenizer(list(frame["review"]), truncation=True, max_length=64)
    dataset = [{"input_ids": ids, "attention_mask": mask, "labels": labels.index(label)}
               for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["rating"])]

    set_seed(0)  # the new classifier's random start: the same in a run and in its resumption
    net, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels), output_loading_info=True)
    selection = selectune.select(net, "bitfit", new_parameters=sorted(info["missing_keys"]))
    args = TrainingArguments(output_dir=f"{out}/trainer", max_steps=max_steps, save_steps=save_steps, per_device_train_batch_size=16,
                             learning_rate=1e-3, warmup_steps=max_steps // 10, logging_steps=save_steps, report_to=[], seed=0,
                             use_cpu=True, disable_tqdm=True)
    trainer = DeltaTrainer(model=net, args=args, train_dataset=dataset, processing_class=tokenizer, selection=selection,
                           delta_metadata={"labels": labels, "base_model": path})
    if stop_after is not None:
        trainer.add_callback(StopAfter(stop_after))
    trainer.train(resume_from_checkpoint=resume or None)
    selectune.save_delta(net, selection, f"{out}/delta", metadata={"labels": labels, "base_model": path})
    return f"{out}/delta"


class StopAfter:
    """A Trainer callback that ends training after a given step (once its checkpoint is written)."""

    def __init__(self, step: int):
        self.step = step

    def __getattr__(self, name):  # every other TrainerCallback hook: do nothing
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()
    print(main(options.out, options.model, options.max_steps, resume=options.resume))
