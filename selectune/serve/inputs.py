"""Request inputs -> model inputs, validated with messages a client can act on; batches of them -> tensors.

Text models take strings (tokenised here, truncated at the delta's ``max_length`` as in training);
tabular models take ``{feature: number}`` objects with exactly the delta's features. Encoding happens
when a request arrives, so a bad item is refused (4xx) before it can reach a batch shared with others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from selectune.train.tasks import Task


class InputError(ValueError):
    """A request's inputs cannot be used; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputLimits:
    max_items: int = 32
    """Most inputs in one request."""
    max_text_chars: int = 10_000
    """Longest text accepted, in characters (texts are truncated to the model's max_length tokens anyway)."""


def check_count(inputs: list[Any], limits: InputLimits) -> None:
    if not inputs:
        raise InputError("inputs is empty; send at least one item, e.g. {\"model\": NAME, \"inputs\": [\"text\"]}")
    if len(inputs) > limits.max_items:
        raise InputError(f"inputs has {len(inputs)} items; at most {limits.max_items} per request. Split the request.", 413)


def encode_inputs(task: Task, tokenizer, inputs: list[Any], limits: InputLimits) -> list[dict[str, Any]]:
    """One dict per input: token lists for text, a (F,) feature tensor for tabular."""
    check_count(inputs, limits)
    if task.kind == "text-classification":
        return _encode_texts(task, tokenizer, inputs, limits)
    return _encode_rows(task, inputs)


def _encode_texts(task: Task, tokenizer, inputs: list[Any], limits: InputLimits) -> list[dict[str, Any]]:
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise InputError(f"inputs[{i}] is {type(text).__name__ if text is not None else 'null'}; this model takes texts (strings).")
        if not text.strip():
            raise InputError(f"inputs[{i}] is an empty text; send the text to classify.")
        if len(text) > limits.max_text_chars:
            raise InputError(f"inputs[{i}] has {len(text)} characters; the limit is {limits.max_text_chars}. Shorten the text.", 413)
    encoded = tokenizer(list(inputs), truncation=True, max_length=task.max_length)
    return [{k: v[i] for k, v in encoded.items()} for i in range(len(inputs))]


def _encode_rows(task: Task, inputs: list[Any]) -> list[dict[str, Any]]:
    features = list(task.feature_cols)
    rows = []
    for i, row in enumerate(inputs):
        if not isinstance(row, dict):
            raise InputError(f"inputs[{i}] is {type(row).__name__}; this tabular model takes objects like "
                             f"{{{', '.join(repr(f) + ': 0.0' for f in features[:3])}{', ...' if len(features) > 3 else ''}}}.")
        missing, extra = [f for f in features if f not in row], sorted(set(row) - set(features))
        if missing or extra:
            raise InputError(f"inputs[{i}]: " + "; ".join(filter(None, [
                f"missing feature(s) {missing[:5]}" if missing else "", f"unknown feature(s) {extra[:5]}" if extra else ""]))
                + f". The model takes exactly: {features}.")
        values = []
        for name in features:
            value = row[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"inputs[{i}].{name} is {value!r}; features must be finite numbers.")
            values.append(float(value))
        rows.append({"features": torch.tensor(values, dtype=torch.float32)})
    return rows


def collate(tokenizer, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Examples (possibly of several deltas) -> one batch; text is padded to the batch's longest, as offline."""
    if "features" in examples[0]:
        return {"features": torch.stack([e["features"] for e in examples])}
    return dict(tokenizer.pad(examples, return_tensors="pt"))
