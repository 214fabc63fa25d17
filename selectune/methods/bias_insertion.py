"""Zero biases for bias-free projections, so BitFit can train a LLaMA-style model; the one place selection adds parameters.

A bias of zeros changes nothing: ``x @ W.T + 0 == x @ W.T`` exactly, so outputs are bitwise identical
before training. Export must still load with plain ``from_pretrained``, which builds a bias only where the
config says so, and one config flag covers a whole group of projections (LLaMA's ``attention_bias``:
q, k, v *and* o_proj; ``mlp_bias``: gate, up and down_proj). So whenever one role of a group is asked
for, every bias-free Linear of that group gets a zero bias and the flag is set; the zeros outside the
asked-for roles stay frozen at zero and the merged model's config is still consistent.

Families whose config cannot switch biases on (T5, Mistral, Qwen2's o_proj/MLP in transformers 5.x
build them with a hard-coded ``bias=False``) are refused before anything changes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from selectune.roles import ARCHITECTURE_ROLES, model_family, parameter_roles

# family -> {config flag: roles whose Linear layers that flag gives a bias} (transformers' LlamaConfig).
BIAS_CONFIG_FLAGS: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": {"attention_bias": ("query", "key", "value", "attn_out"), "mlp_bias": ("mlp_in", "mlp_out")},
}


def _bias_free_linears(model: nn.Module, roles: set[str]) -> list[str]:
    """Module paths of ``nn.Linear`` layers without a bias whose weight has one of ``roles``."""
    role_of = parameter_roles(model)
    return [path for path, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.bias is None and role_of.get(f"{path}.weight") in roles]


def _sync_config_flags(model: nn.Module) -> None:
    """Set each flag to whether its group's Linear layers carry biases, so ``save_pretrained`` writes a config
    that ``from_pretrained`` rebuilds with exactly these parameters."""
    flags = BIAS_CONFIG_FLAGS.get(model_family(model) or "", {})
    role_of = parameter_roles(model)
    for flag, roles in flags.items():
        group = [m for p, m in model.named_modules() if isinstance(m, nn.Linear) and role_of.get(f"{p}.weight") in roles]
        if group:
            setattr(model.config, flag, all(m.bias is not None for m in group))


def insert_missing_biases(model: nn.Module, roles: list[str] | None = None) -> list[str]:
    """Give every bias-free Linear in the groups of ``roles`` (default: all) a zero bias; returns the new parameter names.

    Whole config groups are filled (see the module docstring), so asking for ``query`` also inserts zero
    k/v/o_proj biases. Raises ``ValueError``, leaving the model untouched, where the config cannot carry them.
    """
    wanted = set(roles or ARCHITECTURE_ROLES) & set(ARCHITECTURE_ROLES)
    missing = _bias_free_linears(model, wanted)
    if not missing:
        return []  # BERT, GPT-2, ...: every projection already has a bias
    flags = BIAS_CONFIG_FLAGS.get(model_family(model) or "", {})
    role_of = parameter_roles(model)
    covered = {r for group in flags.values() for r in group}
    uncovered = sorted({role_of[f"{p}.weight"] for p in missing} - covered)
    if uncovered:
        raise ValueError(
            f"bitfit add_missing_biases: {type(model).__name__} (model_type {getattr(getattr(model, 'config', None), 'model_type', None)!r}) "
            f"has bias-free {'+'.join(uncovered)} projections and its config has no flag to build biases there, so a merged "
            "model would not load with plain from_pretrained. Use plain bitfit on the biases it has (e.g. roles=query+key+value "
            "on Qwen2), or --method layernorm, layers:last=2 or pattern:include=... instead."
        )
    # Complete every group touched: one flag switches on biases for the whole group at export.
    groups = {g for g in flags.values() if set(g) & {role_of[f"{p}.weight"] for p in missing}}
    return insert_biases(model, [f"{p}.bias" for p in _bias_free_linears(model, {r for g in groups for r in g})])


def insert_biases(model: nn.Module, names: list[str]) -> list[str]:
    """Add zero ``bias`` Parameters named ``names`` (``<linear path>.bias``) and set the config flags; returns ``names``.

    Every name is checked before anything changes: it must end in ``.bias`` and name a bias-free ``nn.Linear``.
    """
    modules = dict(model.named_modules())
    for name in names:
        path, _, leaf = name.rpartition(".")
        module = modules.get(path)
        if leaf != "bias" or not isinstance(module, nn.Linear) or module.bias is not None:
            raise ValueError(f"cannot insert a zero bias {name!r}: it must name the bias of a bias-free nn.Linear in {type(model).__name__}")
    for name in names:
        module = modules[name.rpartition(".")[0]]
        weight = module.weight  # (out_features, in_features)
        module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    _sync_config_flags(model)
    return list(names)


def remove_biases(model: nn.Module, names: list[str]) -> None:
    """Mirror of ``insert_biases``: drop those bias Parameters and reset the config flags."""
    modules = dict(model.named_modules())
    for name in names:
        modules[name.rpartition(".")[0]].register_parameter("bias", None)
    _sync_config_flags(model)
