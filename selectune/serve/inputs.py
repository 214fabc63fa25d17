"""Request inputs -> model inputs, validated with messages a client can act on; batches of them -> tensors.

The delta's task validates and encodes its own inputs (``Task.encode_request``: text models take strings,
tabular models ``{feature: number}`` objects); encoding happens when a request arrives, so a bad item is
refused (4xx) before it can reach a batch shared with others.
"""
from __future__ import annotations

from typing import Any

import torch

from selectune.tasks import InputError, InputLimits, Task

__all__ = ["InputError", "InputLimits", "check_count", "encode_inputs", "collate"]


def check_count(inputs: list[Any], limits: InputLimits) -> None:
    if not inputs:
        raise InputError("inputs is empty; send at least one item, e.g. {\"model\": NAME, \"inputs\": [\"text\"]}")
    if len(inputs) > limits.max_items:
        raise InputError(f"inputs has {len(inputs)} items; at most {limits.max_items} per request. Split the request.", 413)


def encode_inputs(task: Task, processor, inputs: list[Any], limits: InputLimits) -> list[dict[str, Any]]:
    """One dict per input, as the task encodes it (``processor``: the base's tokenizer, or None)."""
    check_count(inputs, limits)
    return task.encode_request(inputs, limits, processor)


def collate(task_class: type[Task], processor, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Examples (possibly of several deltas on one base) -> one batch, as offline (text: padded to the longest)."""
    return task_class.collate_request(examples, processor)
