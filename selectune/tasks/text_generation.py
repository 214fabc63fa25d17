"""Text generation: a decoder LLM learns free text, with no label set (``--task generation``).

Two shapes of data:
- free-form responses (``--prompt-col``, ``--response-col``): encoded as ``causal-lm`` does (chat template, loss on
  the response tokens, the prompt never cut), but a test response need not occur in training;
- plain language modelling (``--text-col``): one text column, the loss on every token after the first (the first,
  the tokenizer's BOS where it adds one, has nothing before it to be predicted from).

Metrics are the held-out loss and perplexity only (no accuracy: there is no label set to rank); ``gate`` bootstraps
perplexity. The outputs every stage passes around are each row's mean NLL per token (the target is 0), so ``gate``'s
value metrics are of that NLL; judge such a model by ``perplexity``. ``predict`` writes the greedy answer as
``prediction`` (for plain text: a continuation of each text).

``causal-lm`` is the task for responses from a fixed label set; which one runs is the user's choice (``--task``), never
guessed from the data: a label set of more than ``MAX_LABELS`` responses is refused with ``--task generation`` as the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from selectune.tasks.base import EXAMPLE_REVIEWS, Example, write_example_splits
from selectune.tasks.causal_lm import CausalLM
from selectune.tasks.errors import InputError, InputLimits, check_text

TASK_OPTION = "generation"  # the --task value that picks this task
NOT_SERVED = ("text-generation models are not served on /v1/predict or /v1/score (free text has no label set to score): "
              "ask POST /v1/generate for an answer, or `selectune predict`.")


@dataclass
class TextGeneration(CausalLM):
    name: ClassVar[str] = "text-generation"
    metric_family: ClassVar[str] = TASK_OPTION
    outputs_probabilities: ClassVar[bool] = False
    served: ClassVar[bool] = False
    """``/v1/predict`` and ``/v1/score`` refuse (no label set to score); ``/v1/generate`` answers as for ``causal-lm``
    (plain text: the prompt is continued as it is, with no chat template)."""
    label_col: str = "response"
    """The response column (``--response-col``), or with no prompt the text column itself (``--text-col``)."""
    labels: list[str] | None = None
    """Always None: free text has no label set."""

    # ---- columns and data ---------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        return [self.prompt_col or self.label_col]

    def data_options(self) -> dict[str, Any]:
        return {"text_col": self.prompt_col or self.label_col, "feature_cols": None, "task": TASK_OPTION}

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """Plain text as the model reads it: with the tokenizer's special tokens (a BOS first where it adds one)."""
        return [list(ids) for ids in self.tokenizer(list(texts))["input_ids"]]

    def encode(self, frame: pd.DataFrame, with_labels: bool = True) -> dict[str, Any]:
        """As ``causal-lm``, with the response tokens whenever the column is there (the outputs are their NLL), and for plain
        text the first token as the prompt and the rest (cut to ``max_length``, then end of sequence) as the response."""
        has_targets = self.label_col in frame
        if self.prompt_col:
            out = super().encode(frame, with_labels=has_targets)
        else:
            texts = [ids + self.response_ids([""])[0] for ids in self.text_ids(frame[self.label_col].astype(str).tolist())]
            out = {"prompt_ids": [ids[:1] for ids in texts], "response_ids": [ids[1:self.max_length] for ids in texts]}
        if not (with_labels and has_targets):
            out.pop("labels", None)
        elif "labels" not in out:
            out["labels"] = torch.tensor(self.label_ids(frame))
        return out

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        """(N,) zeros: the target of each row's NLL per token (there are no class indices)."""
        return np.zeros(len(frame), dtype=np.float32)

    # ---- loss, outputs, metrics ---------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def default_metric(self) -> str:
        return "perplexity"

    def check_label_set(self) -> None:
        return None  # free text: any number of distinct responses

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None):
        """(mean NLL per response token, (B,) each row's mean NLL per token)."""
        nll, tokens = self.response_nll(model, batch)
        return nll.sum() / tokens.sum().clamp_min(1), (nll / tokens.clamp_min(1)).detach()

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) each row's mean NLL per response token; NaN for rows given without one (``predict`` on prompts alone)."""
        nll, tokens = self.response_nll(model, batch)
        return torch.where(tokens > 0, nll / tokens.clamp_min(1), torch.full_like(nll, float("nan")))

    def outputs(self, model: nn.Module, logits: torch.Tensor) -> np.ndarray:
        return logits.float().cpu().numpy()

    def score(self, outputs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
        return {"n": int(len(y_true))}  # loss and perplexity come from the mean loss (loss_metrics), over tokens rather than rows

    def ci_metrics(self, metric: str) -> list[str]:
        return [metric]

    def subgroup_score(self, metric: str, y_true: np.ndarray, outputs: np.ndarray) -> float:
        return float("nan")

    def unseen_labels(self, frame: pd.DataFrame) -> list[str]:
        return []

    def majority_baseline(self, train_ids: np.ndarray, test_ids: np.ndarray) -> dict[str, float] | None:
        return None

    def positive_label(self, given: str | None) -> str | None:
        if given is not None:
            raise ValueError("--positive-label applies to a label set; a text-generation model has none: drop it")
        return None

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, Any]:
        return {}  # ``prediction`` is the greedy answer (generate_columns)

    def generation_prompts(self, frame: pd.DataFrame) -> list[list[int]]:
        """The prompts, or for plain text each text's first ``max_length`` tokens (a continuation follows)."""
        if self.prompt_col:
            return super().generation_prompts(frame)
        return [ids[:self.max_length] for ids in self.text_ids(frame[self.label_col].astype(str).tolist())]

    def generate_columns(self, model: nn.Module, frame: pd.DataFrame, max_new_tokens: int) -> dict[str, Any]:
        """``prediction``: the greedy answer to each prompt (or continuation of each text)."""
        return {"prediction": super().generate_columns(model, frame, max_new_tokens)["generated"]}

    def format_outputs(self, model: nn.Module, logits: torch.Tensor) -> list[dict[str, Any]]:
        raise InputError(NOT_SERVED, 400)

    def encode_request(self, inputs: list[Any], limits: InputLimits, processor: Any) -> list[dict[str, Any]]:
        raise InputError(NOT_SERVED, 400)

    @classmethod
    def collate_request(cls, examples: list[dict[str, Any]], processor: Any) -> dict[str, torch.Tensor]:
        raise InputError(NOT_SERVED, 400)

    def encode_scoring(self, prompt: Any, messages: Any, labels: Any, limits: InputLimits) -> tuple[Any, dict[str, Any]]:
        raise InputError(NOT_SERVED, 400)

    def _prompt(self, prompt: Any, messages: Any, limits: InputLimits) -> list[int]:
        """A request's prompt ids: as ``causal-lm`` with a prompt column; for plain text the text as training read it
        (special tokens, no chat template), which the answer continues."""
        if self.prompt_col:
            return super()._prompt(prompt, messages, limits)
        if messages is not None or prompt is None:
            raise InputError('this model continues plain text (trained with --text-col): send "prompt" (a text), not "messages".')
        check_text(prompt, "prompt", limits, use="answer")
        return self.text_ids([prompt])[0]

    def describe(self) -> dict[str, Any]:
        return {"prompt_col": self.prompt_col, "text_col": None if self.prompt_col else self.label_col, "max_length": self.max_length}

    # ---- metadata and options -----------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"kind": self.name, "label_col": self.label_col, "labels": None, "prompt_col": self.prompt_col,
                "max_length": self.max_length}

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "TextGeneration":
        return cls(label_col=data["label_col"], prompt_col=data["prompt_col"], max_length=data["max_length"])

    def options(self) -> dict[str, Any]:
        plain = self.prompt_col is None
        return {"text_col": self.label_col if plain else None, "feature_cols": [], "task": TASK_OPTION, "max_length": self.max_length,
                "prompt_col": self.prompt_col, "response_col": None if plain else self.label_col}

    @classmethod
    def from_options(cls, *, label_col: str, text_col: str | None, feature_cols: list[str], task: str, max_length: int,
                     prompt_col: str | None = None, response_col: str | None = None) -> "TextGeneration | None":
        if task != TASK_OPTION or not (prompt_col or text_col):
            return None
        if prompt_col:
            return cls(label_col=response_col or label_col, prompt_col=prompt_col, max_length=max_length)
        return cls(label_col=text_col, prompt_col=None, max_length=max_length)

    @classmethod
    def write_example(cls, folder: Path, seed: int = 0) -> Example:
        """causal-lm's tiny LLaMA, with reviews asked for a free-text answer that differs per row (no label set)."""
        example = CausalLM.write_example(folder, seed)
        good, bad = EXAMPLE_REVIEWS

        def frame(n: int, offset: int) -> pd.DataFrame:
            rows = [(f"Review: {(good if i % 2 == 0 else bad)[(i // 2 + offset) % 4]} (review {i + offset}). Summarise it.",
                     f"{'good' if i % 2 == 0 else 'bad'} review number {i + offset}") for i in range(n)]
            return pd.DataFrame(rows, columns=["question", "answer"])

        paths = write_example_splits(folder, frame)
        return Example(train=paths["train"], validation=paths["validation"], test=paths["test"],
                       train_options={**example.train_options, "task": TASK_OPTION},
                       request_inputs=pd.read_csv(paths["test"])["question"].tolist()[:5],
                       criteria="criteria:\n  - {metric: perplexity, rule: max_worsening, value: 0.5}\n")
