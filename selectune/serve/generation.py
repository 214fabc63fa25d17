"""Greedy decoding of many requests in one batch, each with its own delta: one forward per step for all of them.

The prompts are left-padded to one width, so every row's next token sits in the last column; positions count
each row's own tokens (``cumsum`` of its mask), so a padded row sees exactly what it would see alone. One KV cache
holds every row: row i of each layer's keys and values belongs to request i. When a row ends (its end-of-sequence
token, or its ``max_new_tokens``), it leaves the batch: the cache, the mask, the positions and the path's rows
(``BoundModel.keep``: which delta each remaining example uses) are narrowed to the rows still generating.

On the mixed path each step is one forward pass of the shared base with every row's biases gathered from the
tables, so each answer is the one its delta gives alone (merged, unpadded) up to float rounding.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from selectune.serve.paths import BoundModel


@dataclass
class Generation:
    """One request's greedy continuation."""

    token_ids: list[int]
    """The generated ids, its end-of-sequence token included when it stopped on one."""
    finish_reason: str
    """``stop`` (it produced an end-of-sequence token) or ``length`` (it reached its ``max_new_tokens``)."""
    step_logits: list[torch.Tensor] = field(default_factory=list, repr=False)
    """(V,) next-token logits of every step, when asked for (tests compare them with the delta merged alone)."""


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and mask of ``prompts`` padded on the left to the longest."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask


def greedy_decode(bound: BoundModel, prompts: list[list[int]], max_new_tokens: list[int], stop_ids: list[Collection[int]],
                  pad_id: int, keep_logits: bool = False) -> list[Generation]:
    """Greedy continuations of ``prompts`` (token ids, each non-empty) on ``bound`` (row i of the pass = prompt i),
    each up to its ``max_new_tokens[i]`` (>= 1) or its first token in ``stop_ids[i]``."""
    from transformers import DynamicCache

    device = next(bound.model.parameters()).device
    ids, mask = (t.to(device) for t in left_padded(prompts, pad_id))
    positions = (mask.cumsum(1) - 1).clamp_min(0)  # (B, P): each row counts from its own first token
    cache = DynamicCache()
    results = [Generation([], "length") for _ in prompts]
    live = list(range(len(prompts)))  # request index of each row still in the batch
    while live:
        out = bound.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()  # (b, V) next-token logits of each live row
        cache = out.cache
        chosen = logits.argmax(-1)  # (b,)
        staying = []
        for row, request in enumerate(live):
            result, token = results[request], int(chosen[row])
            result.token_ids.append(token)
            if keep_logits:
                result.step_logits.append(logits[row].clone())
            if token in stop_ids[request]:
                result.finish_reason = "stop"
            elif len(result.token_ids) < max_new_tokens[request]:
                staying.append(row)
        if len(staying) < len(live):  # finished rows stop: narrow everything to the rows still generating
            if not staying:
                break
            index = torch.tensor(staying, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            bound.keep(index)
            mask, positions, chosen = mask[index], positions[index], chosen[index]
            live = [live[row] for row in staying]
        ids = chosen.unsqueeze(1)  # (b, 1): each row's new token is the next step's only input
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], 1)
        positions = positions[:, -1:] + 1
    return results
