"""LayerNorm tuning: train the gains and biases of every normalisation layer, plus new parameters.

Norm layers are found by role ``norm`` (the family tables in roles.py) or by structure (LayerNorm,
RMSNorm, BatchNorm, GroupNorm and custom classes such as LlamaRMSNorm and T5LayerNorm), so the method
works on any nn.Module. That is 2 x hidden parameters per LayerNorm (1 x hidden per RMSNorm), and
unlike BitFit it applies to models without biases such as LLaMA and T5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from selectune.methods.spec import MethodSpec
from selectune.roles import is_norm_module, parameter_roles, pattern_hint


@dataclass
class LayerNormOptions:
    pass


def select_layernorm(model: nn.Module) -> list[str]:
    by_structure = {f"{path}.{name}" if path else name
                    for path, module in model.named_modules() if is_norm_module(module)
                    for name, _ in module.named_parameters(recurse=False)}
    chosen = {n for n, role in parameter_roles(model).items() if role == "norm"} | by_structure
    # named_parameters drops a tied duplicate; a name it does not list cannot be trained by that name.
    chosen &= {n for n, _ in model.named_parameters()}
    if not chosen:
        raise ValueError(f"layernorm found no normalisation layers in {type(model).__name__}. {pattern_hint(model)}")
    return sorted(chosen)


SPEC = MethodSpec(name="layernorm", summary="gains and biases of the normalisation layers (LayerNorm, RMSNorm)",
                  options=LayerNormOptions, select=select_layernorm, default_lr=1e-3)
