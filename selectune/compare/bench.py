"""What every training run of a comparison shares (``Bench``), and one run: a fresh base prepared for a contender and
fitted (``train_contender``). ``compare`` (validation split) and ``tune`` (cross-validation folds) both train through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from selectune.compare.contenders import Contender, prepare
from selectune.compare.cost import PeakMemory
from selectune.config import TrainConfig
from selectune.tasks import Task
from selectune.train.loop import fit, make_accelerator


@dataclass
class Bench:
    """What every run shares: the task, the base, the same rows and labels, the settings (lr and seed set per run)."""
    task: Task
    model_path: str
    splits: Any
    rows: dict[str, list[dict]]
    y: dict[str, np.ndarray]
    config: TrainConfig
    hidden: list[int]


def train_contender(contender: Contender, bench: Bench, train_rows: list[dict], val_rows: list[dict], config: TrainConfig,
                    train_frame: pd.DataFrame | None = None):
    """A fresh base (seeded by ``config.seed``), prepared for ``contender`` and fitted on ``train_rows`` (validated on
    ``val_rows`` each epoch); (trained model, PreparedRun, FitResult, accelerator, PeakMemory). ``train_frame``: the
    rows a new tabular MLP takes its input statistics from (default: the whole training split)."""
    torch.manual_seed(config.seed)  # the new classifier's initialisation
    frame = bench.splits.train if train_frame is None else train_frame
    loaded = bench.task.load_model(bench.model_path, frame, hidden=bench.hidden)
    batches = None
    if contender.needs_data:
        # Data-driven masks (fish, lt_sft) are fitted on the first training batches, as `selectune train` does.
        loader = DataLoader(train_rows, batch_size=config.batch_size, shuffle=False, collate_fn=bench.task.collate)
        batches = list(islice(loader, 32))
    prepared = prepare(loaded.model, contender, batches, new_parameters=loaded.new_parameters)
    accelerator = make_accelerator(config)
    with PeakMemory(accelerator.device) as peak:
        fitted = fit(prepared.model, bench.task, train_rows, val_rows, config, config.lr, accelerator,
                     new_parameters=prepared.new_parameters)
    return accelerator.unwrap_model(prepared.model), prepared, fitted, accelerator, peak
