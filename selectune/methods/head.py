"""Head only (a linear probe): the task head trains, the encoder stays frozen.

For BERT-family models the head role includes the CLS pooler (see roles.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from selectune.methods.spec import MethodSpec
from selectune.roles import parameter_roles


@dataclass
class HeadOptions:
    pass


def select_head(model: nn.Module) -> list[str]:
    names = sorted(n for n, role in parameter_roles(model).items() if role == "head")
    if not names:
        # e.g. T5ForConditionalGeneration: lm_head is tied to the embeddings and listed once, under "shared".
        raise ValueError(f"{type(model).__name__} has no separate head parameters (a head tied to the embeddings counts as "
                         "embed); use another method, e.g. pattern:include=... over its parameter names")
    return names


SPEC = MethodSpec(name="head", summary="the task head only (pooler + classifier): a linear probe", options=HeadOptions, select=select_head, default_lr=1e-3)
