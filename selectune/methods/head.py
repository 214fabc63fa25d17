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
    return sorted(n for n, role in parameter_roles(model).items() if role == "head")


SPEC = MethodSpec(name="head", summary="the task head only (pooler + classifier): a linear probe", options=HeadOptions, select=select_head, default_lr=1e-3)
