"""Full fine-tuning: every parameter trains. The baseline every selective method is measured against."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from selectune.methods.spec import MethodSpec


@dataclass
class FullOptions:
    pass


def select_full(model: nn.Module) -> list[str]:
    return sorted(n for n, _ in model.named_parameters())


SPEC = MethodSpec(name="full", summary="every parameter (the baseline)", options=FullOptions, select=select_full, default_lr=3e-5)
