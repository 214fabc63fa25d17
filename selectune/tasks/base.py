"""What a task is: the one place that knows how a kind of data becomes a model, batches, a loss, predictions,
metrics and a served answer. Every stage (train, evaluate, gate, compare, serve, registry) asks its task;
none branches on what kind of task it is.

Adding a task (causal LM, token classification) = one module in ``selectune/tasks/`` with a ``Task`` subclass
and one ``register_task`` line in ``selectune/tasks/__init__.py``; ``tests/test_task_conformance.py`` then runs
it through train -> delta -> merge -> predict = serve -> gate -> report with no new test code.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from selectune.config import PreprocessingConfig
from selectune.tasks.errors import InputError, InputLimits


@dataclass
class LoadedModel:
    """A loaded base model and what the loader knows about it."""

    model: nn.Module
    new_parameters: list[str] = field(default_factory=list)
    """Parameters the checkpoint lacked (a new classifier, a fresh MLP): initialised at random, so they train
    under every method (``select(..., new_parameters=)``) and the base fingerprint leaves them out."""
    processor: Any = None
    """What turns raw inputs into tensors for this model (a tokenizer), or None when the task needs none."""


@dataclass
class Example:
    """What a task's ``write_example`` leaves in a folder: a tiny base model, data files and the options of
    ``selectune.train.run.train`` that train it (the conformance suite runs every registered task through it)."""

    train: str
    test: str
    validation: str
    train_options: dict[str, Any]
    request_inputs: list[Any]
    """Inputs of a served request (``POST /predict``) for the first rows of ``test``, in order."""
    criteria: str
    """A criteria YAML (``selectune gate``) whose rules apply to this task."""


class Task(ABC):
    """A task's settings (columns, labels) plus everything each stage needs from it.

    Subclasses are dataclasses with ``label_col`` and ``labels`` fields and set the class variables below.
    """

    name: ClassVar[str]
    """Registry name; written as ``kind`` in the task metadata of every delta and merged model."""
    hf_task_type: ClassVar[str]
    """The Hugging Face task type a model card names (``model-index`` results), e.g. ``text-classification``."""
    metric_family: ClassVar[str]
    """Which metric set scores its outputs: ``classification`` ((N, C) probabilities) or ``regression`` ((N,)
    values). Handed to the generic metric, bootstrap, criteria and data-check functions."""
    outputs_probabilities: ClassVar[bool]
    """Whether outputs are (N, C) class probabilities (thresholds, AUROC, calibration apply) rather than values."""
    served: ClassVar[bool] = True
    """Whether ``selectune serve`` answers for it (a task without a serving endpoint yet sets False)."""
    label_col: str
    labels: list[str] | None

    # ---- columns and data ---------------------------------------------------------------------
    @property
    @abstractmethod
    def input_columns(self) -> list[str]:
        """The data columns the model reads (besides the label)."""

    @abstractmethod
    def data_options(self) -> dict[str, Any]:
        """Keyword arguments for ``selectune.data`` (``load_splits``, ``check_frame``, ``run_checks``): which columns
        hold the inputs (``text_col`` / ``feature_cols``) and the label type (``task``)."""

    def use_preprocessing(self, settings: PreprocessingConfig, model: str) -> None:
        """Take the input preprocessing flags (``--impute``, ``--categorical-cols``) before the data are read; ``model``
        is the base ``train`` was given (a saved base brings its own). A task without input preprocessing refuses them."""
        if settings.requested:
            raise ValueError("--impute, --missing-indicators and --categorical-cols apply to tabular data (--feature-cols) only; "
                             "drop them for this task")

    @abstractmethod
    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        """(N,) class indices or target values of ``frame``'s labels."""

    @abstractmethod
    def encode(self, frame: pd.DataFrame, with_labels: bool = True) -> dict[str, Any]:
        """Whole frame -> dict of per-row sequences (tensors or lists), ``labels`` included when asked and present."""

    def examples(self, frame: pd.DataFrame, with_labels: bool = True) -> list[dict[str, Any]]:
        """Per-row examples for a DataLoader."""
        encoded = self.encode(frame, with_labels)
        return [{k: v[i] for k, v in encoded.items()} for i in range(len(frame))]

    @abstractmethod
    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Examples -> one batch of tensors."""

    # ---- model --------------------------------------------------------------------------------
    @abstractmethod
    def load_model(self, model: str, train_frame: pd.DataFrame | None = None, *, hidden: list[int] | None = None,
                   with_tokenizer: bool = True) -> LoadedModel:
        """Load the base model at ``model`` for this task. ``train_frame``/``hidden`` build a new base where the task
        can (a tabular MLP); ``with_tokenizer=False`` skips a tokenizer (looking at parameters needs none).
        Options that do not apply to a task are ignored."""

    @abstractmethod
    def save_model(self, model: nn.Module, out_dir: str | os.PathLike) -> None:
        """Write a plain model folder that loads with plain ``from_pretrained``."""

    @classmethod
    @abstractmethod
    def claims_model_dir(cls, path: str | os.PathLike) -> bool:
        """Whether the folder holds a base model this task runs on (serving and ``inspect`` ask, with no data)."""

    @classmethod
    def prefers_model_dir(cls, path: str | os.PathLike) -> bool:
        """Whether the folder was saved as this task's own model class, so that this task, rather than another that can
        also run on it, serves it; default: False."""
        return False

    @classmethod
    @abstractmethod
    def load_base(cls, path: str, n_outputs: int = 2, with_tokenizer: bool = True) -> LoadedModel:
        """A base model before any task settings are known (serving, ``inspect``), in eval mode; a fresh head gets
        ``n_outputs`` outputs where the task adds one."""

    # ---- loss, outputs, metrics ---------------------------------------------------------------
    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """Width of the model's output (classes, or 1)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
             class_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss, logits) of ``model`` on ``batch``."""

    @abstractmethod
    def outputs(self, model: nn.Module, logits: torch.Tensor) -> np.ndarray:
        """Logits -> what metrics score: (N, C) probabilities or (N,) values in original units."""

    @property
    @abstractmethod
    def default_metric(self) -> str:
        """Validation metric for keep-best and early stopping when the user names none."""

    @abstractmethod
    def score(self, outputs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
        """Point estimates of every metric that applies to this task."""

    @abstractmethod
    def ci_metrics(self, metric: str) -> list[str]:
        """Metrics ``compare`` reports with confidence intervals: the chosen one first."""

    @abstractmethod
    def subgroup_score(self, metric: str, y_true: np.ndarray, outputs: np.ndarray) -> float:
        """``metric`` on one subgroup's rows (``compare --group-cols``)."""

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What ``outputs`` reads for a batch without labels: the model's logits, unless the task scores otherwise."""
        return model(**batch).logits

    def loss_metrics(self, loss: float) -> dict[str, float]:
        """Metrics that follow from the mean held-out loss (a language model's perplexity); none by default."""
        return {}

    def row_losses(self, model: nn.Module, frame: pd.DataFrame, batch_size: int) -> np.ndarray | None:
        """(N, 2) per-row summed loss and token count on FRAME's labels, for loss metrics with CIs (``gate``); None where
        the task has no such metric."""
        return None

    @classmethod
    def method_defaults(cls, method: str) -> dict[str, Any]:
        """Options of ``method`` this task turns on unless the user sets them (causal-lm: BitFit inserts missing biases)."""
        return {}

    def generate_columns(self, model: nn.Module, frame: pd.DataFrame, max_new_tokens: int) -> dict[str, Any]:
        """Columns ``predict`` adds by generating (a causal LM's answers); none by default."""
        return {}

    def answer_samples(self, model: nn.Module, frame: pd.DataFrame) -> list[dict[str, str]] | None:
        """A fixed few rows of FRAME answered by ``model`` ({"prompt", "answer"} each) for ``gate`` to save and ``report`` to
        show base and update side by side (a generative task's answers); None where the task has no free answers."""
        return None

    def class_weights(self, label_ids: torch.Tensor, mode: str | None) -> torch.Tensor | None:
        """Loss weights per output for ``mode`` (``balanced``), or None where they do not apply."""
        return None

    def majority_baseline(self, train_ids: np.ndarray, test_ids: np.ndarray) -> dict[str, float] | None:
        """Metrics of always answering the most frequent training label, or None where there is no such floor."""
        return None

    def positive_label(self, given: str | None) -> str | None:
        """The class that sensitivity, specificity and thresholds treat as positive, or None where none applies."""
        return None

    def unseen_labels(self, frame: pd.DataFrame) -> list[str]:
        """Labels in ``frame`` the model cannot predict (never seen in training), sorted."""
        return []

    @abstractmethod
    def prediction_columns(self, outputs: np.ndarray) -> dict[str, Any]:
        """Columns ``predict`` writes: ``prediction`` and any per-class scores (``prob_<label>``)."""

    # ---- serving ------------------------------------------------------------------------------
    @abstractmethod
    def encode_request(self, inputs: list[Any], limits: InputLimits, processor: Any) -> list[dict[str, Any]]:
        """A request body's ``inputs`` -> one example per item, refusing a bad item with ``InputError`` (4xx)."""

    @classmethod
    @abstractmethod
    def collate_request(cls, examples: list[dict[str, Any]], processor: Any) -> dict[str, torch.Tensor]:
        """Encoded request items (possibly of several deltas on one base) -> one batch, as offline."""

    @classmethod
    def forward_request(cls, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C) outputs of a batch of served requests (``collate_request``), which ``format_outputs`` reads; default:
        the model's logits. A causal LM scores its labels here."""
        return model(**batch).logits

    def encode_scoring(self, prompt: Any, messages: Any, labels: Any, limits: InputLimits) -> tuple["Task", dict[str, Any]]:
        """A ``/v1/score`` request -> (the task formatting its answer, over its own ``labels`` if given; the example);
        refused with ``InputError`` by a task that does not score prompts (the default)."""
        raise InputError(f"this is a {self.name} model; POST /v1/score scores the labels of causal-lm models only. "
                         "Use POST /v1/predict.", 400)

    def encode_generation(self, prompt: Any, messages: Any, max_new_tokens: Any, limits: InputLimits) -> dict[str, Any]:
        """A ``/v1/generate`` request -> the example greedy decoding runs ({prompt_ids, max_new_tokens, stop_ids,
        pad_id}); refused with ``InputError`` by a task that does not generate (the default)."""
        raise InputError(f"this is a {self.name} model; POST /v1/generate answers causal-lm models only. "
                         "Use POST /v1/predict.", 400)

    def decode_generation(self, token_ids: list[int]) -> str:
        """Generated token ids -> the answer's text (tasks that generate)."""
        raise NotImplementedError(f"{self.name} does not generate")

    @abstractmethod
    def format_outputs(self, model: nn.Module, logits: torch.Tensor) -> list[dict[str, Any]]:
        """(n, C) logits -> one JSON-able answer per example (the server's response)."""

    def limited_to(self, model: nn.Module, processor: Any) -> "Task":
        """This task as ``model`` can run it (a server calls it at load, whatever the delta's config says); default:
        unchanged. A text task clamps its ``max_length`` to the model's positions."""
        return self

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What a served delta's task reads, for ``GET /models``."""

    # ---- metadata -----------------------------------------------------------------------------
    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """JSON-able settings, ``kind`` = ``name``; ``from_metadata`` reads it back."""

    @classmethod
    @abstractmethod
    def from_metadata(cls, data: dict[str, Any]) -> "Task":
        ...

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The train/compare options that describe this task (``text_col``, ``feature_cols``, ``task``, ``max_length``):
        ``from_options(label_col=..., **task.options())`` gives it back (``update`` retrains a version with them)."""

    @classmethod
    @abstractmethod
    def from_options(cls, *, label_col: str, text_col: str | None, feature_cols: list[str], task: str,
                     max_length: int) -> "Task | None":
        """This task for the train/compare options, or None when the options describe another task."""

    @classmethod
    @abstractmethod
    def write_example(cls, folder: Path, seed: int = 0) -> Example:
        """A tiny base model and data files in ``folder`` that train in seconds (the conformance suite)."""


# Short fake drug reviews the tasks' tiny examples (``write_example``) are made of: (good, bad).
EXAMPLE_REVIEWS = (["great relief from pain", "worked well for me", "no side effects at all", "felt much better quickly"],
                   ["terrible headaches after", "did not help at all", "made me dizzy and sick", "awful nausea every morning"])


def write_example_splits(folder: Path, frame: Any) -> dict[str, str]:
    """train/validation/test CSVs of 32/16/24 rows, ``frame(n, offset)`` making each (offsets keep their rows apart)."""
    paths = {name: str(folder / f"{name}.csv") for name in ("train", "validation", "test")}
    for (name, path), (n, offset) in zip(paths.items(), ((32, 0), (16, 100), (24, 200))):
        frame(n, offset).to_csv(path, index=False)
    return paths


@contextmanager
def quiet_transformers():
    """transformers' load report and progress bars off while a task loads a model: the report is ours to give (new
    parameters), not a wall of warnings."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def read_model_type(path: str | os.PathLike) -> str | None:
    """``model_type`` of the folder's config.json, or None (no config, unreadable)."""
    return _read_config(path).get("model_type")


def is_causal_lm_dir(path: str | os.PathLike) -> bool:
    """Whether the folder holds a decoder LM with its LM head (config.json's ``architectures``: LlamaForCausalLM,
    GPT2LMHeadModel), not a sequence classifier of the same family (LlamaForSequenceClassification): a LLaMA or
    GPT-2 ``model_type`` alone fits both, so the saved architecture decides which task a folder is for."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = _read_config(path).get("architectures") or []
    return bool(architectures) and set(architectures) <= set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The folder's config.json as a dict, or {} (no config, unreadable)."""
    import json

    config = Path(path) / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
