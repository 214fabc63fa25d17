"""Module name -> role, per architecture family. The one place architecture knowledge lives.

A role names what a parameter does in a transformer block, so methods can say "train the query and
first-MLP biases" (BitFit's 0.04% subset) without knowing any architecture. Matching is on the
*module* path (parameter name minus ``.weight``/``.bias``), by exact trailing segments, never by
substring: ``"bias" in name`` also matches ``unbiased_proj.weight``.

A model of no known family still gets the roles structure can find (norm and embedding layers by type,
heads by conventional name); asking it for a role only a table knows (query, mlp_in, ...) raises an
error that shows its module names and a ``pattern`` selection to use instead.
"""
from __future__ import annotations

import re

import torch.nn as nn

from selectune.masks import plain_named_parameters

ROLES = ("query", "key", "value", "qkv", "attn_out", "mlp_in", "mlp_out", "norm", "head", "embed", "other")
# Roles that only a family table can assign; the others are found by structure on any nn.Module.
ARCHITECTURE_ROLES = ("query", "key", "value", "qkv", "attn_out", "mlp_in", "mlp_out")

# (trailing module-path segments, role); the first matching row wins, so specific rows come first.
# BERT / RoBERTa / ELECTRA family (HF naming).
_BERT = [
    (("attention", "self", "query"), "query"),
    (("attention", "self", "key"), "key"),
    (("attention", "self", "value"), "value"),
    (("attention", "output", "dense"), "attn_out"),
    (("attention", "output", "LayerNorm"), "norm"),
    (("intermediate", "dense"), "mlp_in"),
    (("output", "dense"), "mlp_out"),
    (("output", "LayerNorm"), "norm"),
    (("embeddings", "LayerNorm"), "norm"),
    (("embeddings", "word_embeddings"), "embed"),
    (("embeddings", "position_embeddings"), "embed"),
    (("embeddings", "token_type_embeddings"), "embed"),
    # The CLS pooler counts as head: in sentence-embedding checkpoints (all-MiniLM-L6-v2) it is a
    # leftover never trained for classification, and frozen it made BitFit predict one class only.
    (("pooler", "dense"), "head"),
    (("classifier",), "head"),
    (("classifier", "dense"), "head"),  # RoBERTa / ELECTRA classification head
    (("classifier", "out_proj"), "head"),
]
# DistilBERT: its own names for the same block (q_lin/k_lin, ffn.lin1/lin2, two LayerNorms per block).
_DISTILBERT = [
    (("attention", "q_lin"), "query"),
    (("attention", "k_lin"), "key"),
    (("attention", "v_lin"), "value"),
    (("attention", "out_lin"), "attn_out"),
    (("ffn", "lin1"), "mlp_in"),
    (("ffn", "lin2"), "mlp_out"),
    (("sa_layer_norm",), "norm"), (("output_layer_norm",), "norm"),
    (("embeddings", "LayerNorm"), "norm"),
    (("embeddings", "word_embeddings"), "embed"),
    (("embeddings", "position_embeddings"), "embed"),
    # pre_classifier is DistilBERT's pooler (dense + ReLU on [CLS]); like BERT's it counts as head.
    (("pre_classifier",), "head"), (("classifier",), "head"),
]
# GPT-2 (transformers Conv1D; c_attn fuses q, k and v into one (768, 2304) weight, so it gets "qkv").
_GPT2 = [
    (("attn", "c_attn"), "qkv"),
    (("attn", "c_proj"), "attn_out"),
    (("mlp", "c_fc"), "mlp_in"),
    (("mlp", "c_proj"), "mlp_out"),
    (("ln_1",), "norm"), (("ln_2",), "norm"), (("ln_f",), "norm"),
    (("wte",), "embed"), (("wpe",), "embed"),
    (("score",), "head"), (("lm_head",), "head"),
]
# LLaMA / Mistral / Qwen2 decoders.
_LLAMA = [
    (("self_attn", "q_proj"), "query"),
    (("self_attn", "k_proj"), "key"),
    (("self_attn", "v_proj"), "value"),
    (("self_attn", "o_proj"), "attn_out"),
    (("mlp", "gate_proj"), "mlp_in"),
    (("mlp", "up_proj"), "mlp_in"),
    (("mlp", "down_proj"), "mlp_out"),
    (("input_layernorm",), "norm"), (("post_attention_layernorm",), "norm"), (("norm",), "norm"),
    (("embed_tokens",), "embed"),
    (("score",), "head"), (("lm_head",), "head"),
]
# T5 / mT5: no biases anywhere except a classification head; wi (ReLU) or wi_0 + wi_1 (gated) feed the MLP.
_T5 = [
    *((("SelfAttention", a), r) for a, r in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "attn_out"))),
    *((("EncDecAttention", a), r) for a, r in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "attn_out"))),
    # A learned (buckets, heads) table added to attention scores by relative position: position embedding.
    (("SelfAttention", "relative_attention_bias"), "embed"),
    (("DenseReluDense", "wi"), "mlp_in"), (("DenseReluDense", "wi_0"), "mlp_in"), (("DenseReluDense", "wi_1"), "mlp_in"),
    (("DenseReluDense", "wo"), "mlp_out"),
    (("layer_norm",), "norm"), (("final_layer_norm",), "norm"),
    (("shared",), "embed"), (("embed_tokens",), "embed"),
    (("lm_head",), "head"),
    (("classification_head", "dense"), "head"), (("classification_head", "out_proj"), "head"),
]
# selectune's own tabular MLP (selectune.train.tabular.TabularMLP).
_TABULAR = [
    (("head",), "head"),
    (("norm",), "norm"),
]
FAMILIES = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT,
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
    "t5": _T5, "mt5": _T5,
    "selectune-tabular-mlp": _TABULAR,
}
# Used when the model declares no known family (any nn.Module): norm layers by type, common head names.
_GENERIC_HEAD_NAMES = {"classifier", "head", "score", "lm_head", "fc_out", "output_layer"}


def model_family(model: nn.Module) -> str | None:
    """The family key of ``model`` (HF ``config.model_type``), or None for a plain module."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    return model_type if model_type in FAMILIES else None


def _match(path: tuple[str, ...], rows) -> str | None:
    for tail, role in rows:
        if len(path) >= len(tail) and path[-len(tail):] == tail:
            return role
    return None


def module_roles(model: nn.Module) -> dict[str, str]:
    """Map every module path that owns parameters directly to its role."""
    rows = FAMILIES.get(model_family(model) or "", [])
    roles: dict[str, str] = {}
    for path, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        parts = tuple(path.split(".")) if path else ()
        role = _match(parts, rows)
        if role is None:
            role = _generic_role(parts, module)
        roles[path] = role
    return roles


def is_norm_module(module: nn.Module) -> bool:
    """A normalisation layer, by type, or by class name for the many custom ones (LlamaRMSNorm, T5LayerNorm)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)):
        return True
    return type(module).__name__.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d"))


def _generic_role(parts: tuple[str, ...], module: nn.Module) -> str:
    if is_norm_module(module):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "embed"
    if parts and parts[0] in _GENERIC_HEAD_NAMES:
        return "head"
    return "other"


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Map every parameter name (as in ``named_parameters``) to its role."""
    by_module = module_roles(model)
    out = {}
    for name, _ in plain_named_parameters(model):  # a masked (parametrized) weight under its plain name
        module_path = name.rsplit(".", 1)[0] if "." in name else ""
        out[name] = by_module.get(module_path, "other")
    return out


def parse_roles(roles: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Accept ``"query,mlp_in"``, ``"query+mlp_in"`` or a list; validate against ROLES."""
    if roles is None or roles == "" or roles == "all":
        return None
    if isinstance(roles, str):
        roles = [r for r in roles.replace("+", ",").split(",") if r.strip()]
    roles = tuple(r.strip() for r in roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; choose from {', '.join(ROLES)} (e.g. roles=query,mlp_in)")
    return roles


def pattern_hint(model: nn.Module) -> str:
    """A sample of ``model``'s module paths and a ``pattern`` selection built from them, for error messages:
    a regex over parameter names works on any model."""
    paths = [p for p, m in model.named_modules() if p and any(True for _ in m.parameters(recurse=False))]
    sample = ", ".join(paths[:8]) + (f", ... ({len(paths)} in all)" if len(paths) > 8 else "")
    example = "|".join(re.escape(p) + r"\..*" for p in paths[:2]) or ".*"
    return (f"Its modules include: {sample}. Select by parameter name instead: --method 'pattern:include={example}' "
            "(a regex matched against whole parameter names; use | between alternatives, since commas separate options).")


def unknown_architecture_error(model: nn.Module, wanted: str) -> ValueError:
    """The error for a selection that needs architecture knowledge this model's family lacks."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = f"model_type {model_type!r}" if model_type else "no HF config.model_type"
    return ValueError(f"{wanted} needs to know the architecture, but {type(model).__name__} ({family}) is not a known "
                      f"family (known: {', '.join(sorted(FAMILIES))}). {pattern_hint(model)}")


def require_family(model: nn.Module, roles: tuple[str, ...] | list[str] | None, wanted: str) -> None:
    """Raise ``unknown_architecture_error`` if ``roles`` holds a role only a family table can find."""
    needs_table = sorted(set(roles or ()) & set(ARCHITECTURE_ROLES))
    if needs_table and model_family(model) is None:
        raise unknown_architecture_error(model, f"{wanted} with role(s) {', '.join(needs_table)}")
