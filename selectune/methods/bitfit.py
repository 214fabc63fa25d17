"""BitFit (Ben Zaken et al., 2022): train only bias terms, plus new (randomly initialised) parameters.

Biases are found by structure: the ``bias`` Parameter of a Linear, Conv1d/2d, transformers ``Conv1D``
or a norm layer; never by the substring "bias" in a name.

The attention key bias is skipped by default: softmax(q.k + q.b_k) over keys is shift-invariant per
query, since q.b_k is the same for every key, so dL/db_k == 0 exactly (tests/test_selection.py checks
this on a real model). Training it would only spend optimizer state and delta bytes.

Models without biases outside their head (LLaMA, Mistral, T5) are refused rather than silently reduced
to a linear probe; the error points to ``head``, ``layernorm``, ``layers`` and ``pattern``. With
``add_missing_biases=true`` a LLaMA instead gets zero biases on its projections (``bias_insertion.py``):
whole config groups (all of q/k/v/o_proj, or all of gate/up/down_proj) are filled so the merged model's
``attention_bias``/``mlp_bias`` flags hold, but only the biases of the asked-for roles train.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from selectune.methods.bias_insertion import insert_missing_biases, remove_biases
from selectune.methods.spec import MethodSpec
from selectune.roles import is_norm_module, parameter_roles, parse_roles, require_family


@dataclass
class BitFitOptions:
    roles: list[str] | None = field(default=None, metadata={"help": "roles whose biases train, e.g. query+mlp_in (default: all)"})
    include_key_bias: bool = field(default=False, metadata={"help": "also train the attention key bias (its gradient is zero)"})
    head_weights: bool = field(default=False, metadata={"help": "also train the weights of head modules (pooler, classifier)"})
    add_missing_biases: bool = field(default=False, metadata={
        "help": "give bias-free projections (LLaMA) zero biases and train them; sets attention_bias/mlp_bias for export"})

    def __post_init__(self):
        parsed = parse_roles(self.roles)
        self.roles = list(parsed) if parsed is not None else None


def _has_bias(module: nn.Module) -> bool:
    if not isinstance(getattr(module, "bias", None), nn.Parameter):
        return False
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_norm_module(module):
        return True
    # transformers' Conv1D (GPT-2's fused projections) by class name: importing it would tie us to its path.
    return type(module).__name__ == "Conv1D"


def bias_names(model: nn.Module) -> list[str]:
    """Every structural bias parameter of ``model``."""
    return sorted(f"{path}.bias" if path else "bias" for path, module in model.named_modules() if _has_bias(module))


def select_bitfit(model: nn.Module, roles: list[str] | None = None, include_key_bias: bool = False, head_weights: bool = False,
                  add_missing_biases: bool = False) -> list[str]:
    require_family(model, roles, "bitfit")
    inserted = insert_missing_biases(model, roles) if add_missing_biases else []
    try:
        return _choose_biases(model, roles, include_key_bias, head_weights)
    except ValueError:
        remove_biases(model, inserted)  # a refused selection leaves the model as it found it
        raise


def _choose_biases(model: nn.Module, roles: list[str] | None, include_key_bias: bool, head_weights: bool) -> list[str]:
    role_of = parameter_roles(model)
    wanted = set(roles) if roles else None
    biases = bias_names(model)
    chosen = []
    for name in biases:
        role = role_of[name]
        if role == "key" and not include_key_bias:
            continue
        if wanted is None or role in wanted:
            chosen.append(name)
    if head_weights and (wanted is None or "head" in wanted):
        chosen += [n for n, r in role_of.items() if r == "head"]
    # Only head biases (or none) where the body was asked for: the result would be a linear probe.
    if not chosen or (wanted != {"head"} and all(role_of[n] == "head" for n in chosen)):
        asked = f"with role(s) {'+'.join(sorted(wanted))} " if wanted else ""
        where = "in" if wanted == {"head"} else "outside the task head of"
        present = sorted({role_of[n] for n in biases}) or ["none"]
        raise ValueError(
            f"bitfit found no bias terms {asked}{where} {type(model).__name__} (roles that have biases "
            f"here: {', '.join(present)}); {'it would train only the head' if chosen else 'only new parameters would train'}. Use --method head for that, or layernorm, "
            "layers:last=2 or pattern:include=... for a model without biases (LLaMA, Mistral and T5 have none; "
            "on LLaMA, add_missing_biases=true inserts zero biases to train)."
            + (" The key bias is skipped unless include_key_bias=true." if wanted and "key" in wanted and not include_key_bias else "")
        )
    return sorted(set(chosen))


SPEC = MethodSpec(
    name="bitfit",
    summary="bias terms only (optionally a subset of roles), plus new parameters such as a fresh classifier",
    options=BitFitOptions,
    select=select_bitfit,
    default_lr=1e-3,
)
