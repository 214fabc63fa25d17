"""The training loop, on 🤗 Accelerate: devices, mixed precision, gradient accumulation and several
processes (``accelerate launch``) with no change to this code.

Reads top to bottom: setup -> per epoch (train, validate, keep best / stop early) -> restore best.
Only parameters with ``requires_grad`` reach the optimizer, so frozen tensors get no optimizer state.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from selectune.config import TrainConfig  # noqa: F401  (re-exported: fit's settings)
from selectune.masks import plain_name
from selectune.evaluate.metrics import HIGHER_IS_BETTER
from selectune.train.checkpoint import Checkpoints
from selectune.tasks import Task


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("nan")
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    steps: int = 0
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of each optimizer step (forward, backward, update; data loading excluded), for step-time comparisons."""


def make_accelerator(config: TrainConfig) -> Accelerator:
    # Seedable sampler: the shuffle order depends on the seed alone, on one process or many.
    # cpu=True on a machine without an accelerator lets `accelerate launch --multi_gpu`/torchrun run DDP over gloo.
    no_accelerator = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return Accelerator(cpu=no_accelerator, mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def predict(model: nn.Module, task: Task, loader: DataLoader, accelerator: Accelerator) -> tuple[np.ndarray, float]:
    """Outputs for every row of ``loader`` (in order, gathered across processes) and the mean loss."""
    model.eval()
    outputs, losses, counts = [], [], []
    with torch.no_grad():
        for batch in loader:
            has_labels = "labels" in batch
            if has_labels:
                loss, logits = task.loss(model, batch, None)
                labels = batch["labels"]
            else:
                logits = task.forward(model, batch)
            logits = accelerator.gather_for_metrics(logits)
            outputs.append(task.outputs(model, logits))
            if has_labels:
                n = accelerator.gather_for_metrics(labels).shape[0]
                losses.append(float(loss) * n)
                counts.append(n)
    mean_loss = sum(losses) / max(sum(counts), 1) if counts else float("nan")
    return np.concatenate(outputs), mean_loss


def score(task: Task, outputs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    return task.score(outputs, y_true)


def set_dropout(model: nn.Module, p: float | None) -> dict[nn.Dropout, float]:
    """Set every dropout module of ``model`` to probability ``p`` (None: leave them); returns what they had."""
    if p is not None and not 0.0 <= p < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {p}")
    previous = {m: m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    if p is not None:
        for module in previous:
            module.p = p
    return previous


def restore_dropout(previous: dict[nn.Dropout, float]) -> None:
    """Undo :func:`set_dropout`."""
    for module, p in previous.items():
        module.p = p


def fit(model: nn.Module, task: Task, train_rows: list[dict], val_rows: list[dict], config: TrainConfig,
        lr: float, accelerator: Accelerator | None = None, checkpoints: Checkpoints | None = None, *,
        new_parameters: Iterable[str] = ()) -> FitResult:
    """Train the parameters of ``model`` that require grad; validate each epoch; keep the best.

    No ``val_rows``: nothing is scored during training, ``patience`` must be None, and the last epoch is kept
    (``best_epoch`` is the last, ``best_metric`` NaN).

    ``new_parameters``: the selection's ``new_parameters`` (random at load: they train at ``config.new_lr``).
    ``checkpoints``: write one after each epoch; with ``checkpoints.resume``, start after the last complete one.
    """
    config = config.for_task(task.default_metric)  # metric None: the task's default
    if not val_rows and config.patience is not None:
        raise ValueError("--patience stops training when validation stops improving, and there are no validation rows "
                         "(--val-fraction 0): drop --patience, or hold out validation rows")
    previous = set_dropout(model, config.dropout)
    try:
        return _fit(model, task, train_rows, val_rows, config, lr, accelerator, checkpoints, set(new_parameters))
    finally:
        restore_dropout(previous)


def _fit(model: nn.Module, task: Task, train_rows: list[dict], val_rows: list[dict], config: TrainConfig,
         lr: float, accelerator: Accelerator | None, checkpoints: Checkpoints | None, new: set[str]) -> FitResult:
    # setup -> per epoch (train, validate, keep best / stop early, checkpoint) -> restore best
    accelerator = accelerator or make_accelerator(config)
    set_seed(config.seed)
    run = _prepare(model, task, train_rows, val_rows, config, lr, accelerator, new)
    class_weights = task.class_weights(torch.stack([torch.as_tensor(r["labels"]) for r in train_rows]), config.class_weight)
    y_val = np.array([np.asarray(r["labels"]) for r in val_rows])
    progress, first_epoch = _start(run, checkpoints, accelerator)
    for epoch in range(first_epoch, config.epochs + 1):
        train_loss = _train_epoch(run, task, class_weights, config, accelerator, epoch, progress)
        if not val_rows:  # no validation rows (--val-fraction 0): every epoch is the latest, and the last is kept
            progress.result.history.append({"epoch": epoch, "train_loss": train_loss})
            progress.result.best_epoch = epoch
        elif _validate(run, task, y_val, config, accelerator, epoch, train_loss, progress):
            break  # early stopping: no checkpoint of this epoch, as before
        if checkpoints is not None and accelerator.is_main_process:
            progress.result.train_seconds = time.perf_counter() - progress.started
            checkpoints.save(epoch, accelerator.unwrap_model(run.model), run.optimizer, run.scheduler, progress.result,
                             progress.best_state, progress.stale, progress.seen)
    result = progress.result
    result.train_seconds = time.perf_counter() - progress.started
    result.examples_per_second = progress.seen / max(result.train_seconds, 1e-9)
    if config.keep_best and progress.best_state is not None:
        _restore_best(accelerator.unwrap_model(run.model), progress.best_state)
    return result


@dataclass
class _Prepared:
    """The pieces of one fit, after ``accelerator.prepare`` (the model possibly wrapped, e.g. in DDP)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    scheduler: Any


@dataclass
class _Progress:
    """What changes from epoch to epoch; a checkpoint stores it beside the weights and optimizer state."""
    result: FitResult
    best_state: dict[str, torch.Tensor] | None = None  # the trainable tensors of the best epoch (keep_best)
    stale: int = 0  # epochs since the last improvement
    seen: int = 0  # training examples so far, over all processes
    started: float = 0.0  # perf_counter at the start, moved back by the time of the epochs before a resume


def _optimizer(named: list[tuple[str, nn.Parameter]], new: set[str], config: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over up to four groups: pretrained/new x decayed/not; new parameters train at ``config.new_lr``."""
    groups = []
    for is_new in (False, True):
        for decayed in (True, False):
            # Bias-like 1-D tensors are not decayed (standard practice; decaying a bias toward 0 has no prior).
            # A masked weight trains through its 1-D ``values`` (selectune.masks): decayed as the weight would be.
            chosen = [p for n, p in named if (n in new) == is_new and (p.ndim >= 2 or plain_name(n) != n) == decayed]
            if chosen:
                groups.append({"params": chosen, "weight_decay": config.weight_decay if decayed else 0.0,
                               "lr": (config.new_lr or lr) if is_new else lr})
    return torch.optim.AdamW(groups, lr=lr)


def _prepare(model: nn.Module, task: Task, train_rows: list[dict], val_rows: list[dict], config: TrainConfig, lr: float,
             accelerator: Accelerator, new: set[str]) -> _Prepared:
    """Optimizer, loaders and warmup schedule, prepared by the accelerator."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no parameter requires grad: call selectune.select(model, method) before fit")
    if {n for n, _ in named} <= new:
        new = set()  # training from scratch (a fresh MLP): --lr is the learning rate of everything
    optimizer = _optimizer(named, new, config, lr)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_rows, batch_size=config.batch_size, shuffle=True, collate_fn=task.collate, generator=generator)
    val_loader = DataLoader(val_rows, batch_size=config.eval_batch_size, shuffle=False, collate_fn=task.collate)
    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    return _Prepared(*accelerator.prepare(model, optimizer, train_loader, val_loader, scheduler))


def _start(run: _Prepared, checkpoints: Checkpoints | None, accelerator: Accelerator) -> tuple[_Progress, int]:
    """(progress, first epoch): a fresh start, or the state of the last complete checkpoint with ``--resume``."""
    progress = _Progress(FitResult(), started=time.perf_counter())
    if checkpoints is None or not checkpoints.resume:
        return progress, 1
    resumed = checkpoints.restore(accelerator.unwrap_model(run.model), run.optimizer, run.scheduler, FitResult)
    progress = _Progress(resumed.result, resumed.best_state, resumed.stale, resumed.seen,
                         progress.started - resumed.result.train_seconds)  # throughput counts the epochs done before
    run.train_loader.set_epoch(resumed.epoch)  # the seedable sampler shuffles epoch e with seed + e
    return progress, resumed.epoch + 1


def _train_epoch(run: _Prepared, task: Task, class_weights, config: TrainConfig, accelerator: Accelerator, epoch: int,
                 progress: _Progress) -> float:
    """One pass over the training rows; the mean training loss per example."""
    model, result = run.model, progress.result
    model.train()
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}/{config.epochs}", disable=not (config.progress and accelerator.is_main_process),
               dynamic_ncols=True, leave=False)
    epoch_loss, epoch_n = 0.0, 0
    for batch in bar:
        step_started = time.perf_counter()
        with accelerator.accumulate(model):
            loss, _ = task.loss(model, batch, class_weights)
            accelerator.backward(loss)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        loss_value = float(loss.detach())  # waits for the device, so the step time is the step's own
        result.step_seconds.append(time.perf_counter() - step_started)
        n = batch["labels"].shape[0] * accelerator.num_processes
        progress.seen += n
        epoch_loss += loss_value * n
        epoch_n += n
        result.steps += 1
        bar.set_postfix(loss=f"{epoch_loss / epoch_n:.4f}", ex_s=f"{progress.seen / (time.perf_counter() - progress.started):.1f}",
                        refresh=False)
    return epoch_loss / max(epoch_n, 1)


def _validate(run: _Prepared, task: Task, y_val: np.ndarray, config: TrainConfig, accelerator: Accelerator, epoch: int,
              train_loss: float, progress: _Progress) -> bool:
    """Score the epoch on validation, record it, keep the best state; True when patience runs out (stop early)."""
    result = progress.result
    outputs, val_loss = predict(run.model, task, run.val_loader, accelerator)
    metrics = score(task, outputs, y_val)
    metrics["loss"] = val_loss
    metrics.update(task.loss_metrics(val_loss))
    if config.metric not in metrics:
        raise ValueError(f"metric {config.metric!r} is not computed for this task; choose from {sorted(metrics)}")
    row = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in metrics.items()}}
    result.history.append(row)
    value = metrics[config.metric]
    higher = HIGHER_IS_BETTER.get(config.metric, True)
    # best_epoch 0 = no epoch scored yet (best_state alone cannot say so: it stays None without keep_best)
    improved = result.best_epoch == 0 or (value > result.best_metric if higher else value < result.best_metric)
    if accelerator.is_main_process and config.progress:
        tqdm.write(f"epoch {epoch}: train loss {row['train_loss']:.4f}  val {config.metric} {value:.4f}" + ("  (best)" if improved else ""))
    if improved:
        result.best_epoch, result.best_metric, progress.stale = epoch, value, 0
        if config.keep_best:
            unwrapped = accelerator.unwrap_model(run.model)
            progress.best_state = {n: p.detach().clone() for n, p in unwrapped.named_parameters() if p.requires_grad}
        return False
    progress.stale += 1
    return config.patience is not None and progress.stale >= config.patience


def _restore_best(model: nn.Module, best_state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in best_state:
                param.copy_(best_state[name])
