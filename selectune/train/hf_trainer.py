"""Training a selection with Hugging Face ``transformers.Trainer``, with checkpoints that hold only the delta.

A selection leaves the model a plain ``nn.Module``, so the stock ``Trainer`` trains it unchanged; but its checkpoints
write every weight (``model.safetensors``: the whole base) at each save. ``DeltaTrainer`` writes the selection's
tensors instead (``checkpoint-N/delta/``: the delta format of ``save_delta``, a few hundred kB for BitFit on MiniLM),
beside the Trainer's own optimizer, scheduler, RNG and ``trainer_state.json`` files (the optimizer only holds state
for the trained tensors). ``trainer.train(resume_from_checkpoint=True)`` loads the last delta back onto the model and
continues where it stopped; ``load_best_model_at_end`` loads the best one. The run ends in ``save_delta``::

    model, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, output_loading_info=True)
    selection = selectune.select(model, "bitfit", new_parameters=sorted(info["missing_keys"]))
    trainer = DeltaTrainer(model=model, args=TrainingArguments(output_dir="out/trainer", save_steps=50, ...),
                           train_dataset=rows, selection=selection)
    trainer.train()                     # or train(resume_from_checkpoint=True) after an interruption
    selectune.save_delta(model, selection, "out/delta")

``examples/hf_trainer.py`` is a runnable version; ``tests/test_hf_trainer.py`` runs it and checks resumption.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import Trainer

from selectune.delta import DeltaError, load_delta, save_delta
from selectune.selection import Selection

DELTA_FOLDER = "delta"
"""Inside each ``checkpoint-N/`` folder: the selection's tensors, in the delta format."""
TRAINING_ARGS_FILE = "training_args.json"


class DeltaTrainer(Trainer):
    """``transformers.Trainer`` whose checkpoints (and ``save_model``) hold only ``selection``'s tensors."""

    def __init__(self, *args: Any, selection: Selection, delta_metadata: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.selection = selection
        self.delta_metadata = dict(delta_metadata or {})

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The delta instead of full weight shards; the arguments as JSON (the stock Trainer pickles them)."""
        if not self.args.should_save:
            return
        out = Path(output_dir if output_dir is not None else self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_delta(self.accelerator.unwrap_model(self.model), self.selection, out / DELTA_FOLDER, metadata=self.delta_metadata)
        (out / TRAINING_ARGS_FILE).write_text(self.args.to_json_string() + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_checkpoint_delta(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        self._load_checkpoint_delta(self.state.best_model_checkpoint)

    def _load_checkpoint_delta(self, checkpoint: str | os.PathLike, model=None) -> None:
        folder = Path(checkpoint) / DELTA_FOLDER
        if not (folder / "delta_config.json").is_file():
            raise DeltaError(f"{checkpoint} holds no {DELTA_FOLDER}/ folder: it was not written by DeltaTrainer. Resume a "
                             "DeltaTrainer run from its own checkpoint-N folder, or start without resume_from_checkpoint.")
        config = json.loads((folder / "delta_config.json").read_text())
        if sorted(config["selection"]["trainable"]) != sorted(self.selection.trainable):
            raise DeltaError(f"{checkpoint} trained another selection ({config['selection']['method']}, "
                             f"{len(config['selection']['trainable'])} tensors) than this trainer's; resume with the same select() call.")
        load_delta(self.accelerator.unwrap_model(model or self.model), folder)  # refuses another base by fingerprint
