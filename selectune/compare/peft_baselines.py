"""PEFT baselines from the real ``peft`` package: LoRA, (IA)³ and BEFT, wrapped so the same loop trains them.

These are not selective methods (they add modules rather than choosing existing tensors), so they are not in
``selectune.methods``; they exist to be measured against it. A wrapped model is still an ``nn.Module`` whose
forward returns ``.logits``, so ``selectune.train.loop.fit`` trains it unchanged.

What trains besides the adapter: every module holding a ``head``-role parameter (BERT: the CLS pooler and the
new classifier) and every module with a parameter the checkpoint lacked, through PEFT's ``modules_to_save``.
That keeps the comparison fair: the stale pooler and the random classifier train under every method (PEFT
trains the pooler's whole dense layer, weight included; ``bitfit`` trains its bias, ``bitfit:head_weights=true``
its weight too). The fresh classifier keeps its own ``--new-lr`` inside the wrapper, as in selective runs.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch.nn as nn

from selectune.roles import parameter_roles

# PEFT's names inside a wrapped model: base_model.model.<name>, and a trainable copy of each saved module.
WRAPPER_PREFIX = "base_model.model."
SAVED_COPY = ".modules_to_save.default"


@dataclass
class LoraOptions:
    r: int = field(default=8, metadata={"help": "rank of the low-rank update"})
    alpha: int = field(default=16, metadata={"help": "scaling numerator: the update is scaled by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    targets: str = field(default="", metadata={"help": "module names joined by + (query+value); empty: PEFT's default for the architecture"})


@dataclass
class IA3Options:
    targets: str = field(default="", metadata={"help": "module names joined by +; empty: PEFT's default for the architecture"})
    feedforward: str = field(default="", metadata={"help": "targets whose input (not output) is scaled, joined by +; empty: PEFT's default"})


@dataclass
class BeftOptions:
    targets: str = field(default="", metadata={"help": "module names joined by +; empty: PEFT's default (the value projections)"})


@dataclass(frozen=True)
class PeftBaseline:
    name: str
    summary: str
    options: type
    make_config: Callable[..., Any]
    """(options dict, target_modules or None, modules_to_save, task_type) -> a peft config."""
    default_lr: float

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"PEFT baseline {self.name!r} has no option(s) {unknown}; its options are: {', '.join(sorted(known))}")
        return dataclasses.asdict(self.options(**options))


def _names(text: str) -> list[str] | None:
    return [t for t in str(text).split("+") if t] or None


def _lora_config(options, targets, modules_to_save, task_type):
    from peft import LoraConfig

    return LoraConfig(r=options["r"], lora_alpha=options["alpha"], lora_dropout=options["dropout"], target_modules=targets,
                      modules_to_save=modules_to_save, task_type=task_type)


def _ia3_config(options, targets, modules_to_save, task_type):
    from peft import IA3Config

    feedforward = _names(options["feedforward"])
    if targets is not None and feedforward is None:
        feedforward = []  # explicit targets with no feedforward list: scale every target's output
    return IA3Config(target_modules=targets, feedforward_modules=feedforward, modules_to_save=modules_to_save, task_type=task_type)


def _beft_config(options, targets, modules_to_save, task_type):
    from peft import BeftConfig

    return BeftConfig(target_modules=targets, modules_to_save=modules_to_save, task_type=task_type)


PEFT_BASELINES: dict[str, PeftBaseline] = {b.name: b for b in (
    # lr: LoRA ~5e-4 on BERT-size encoders (Hu et al. 2021 use 4e-4..5e-4); (IA)³ 3e-3 (Liu et al. 2022);
    # BEFT trains biases, like BitFit: 1e-3.
    PeftBaseline("lora", "PEFT LoRA: low-rank updates of the attention query/value weights", LoraOptions, _lora_config, 5e-4),
    PeftBaseline("ia3", "PEFT (IA)3: learned scaling of key/value/feed-forward activations", IA3Options, _ia3_config, 3e-3),
    PeftBaseline("beft", "PEFT BEFT: new zero-initialised biases on the value projections", BeftOptions, _beft_config, 1e-3),
)}


def module_of(parameter_name: str) -> str:
    return parameter_name.rpartition(".")[0]


def original_name(wrapped_name: str) -> str:
    """``base_model.model.classifier.modules_to_save.default.weight`` -> ``classifier.weight``."""
    name = wrapped_name[len(WRAPPER_PREFIX):] if wrapped_name.startswith(WRAPPER_PREFIX) else wrapped_name
    return name.replace(SAVED_COPY, "")


def default_targets(model: nn.Module, roles: dict[str, str]) -> list[str] | None:
    """None where PEFT knows the architecture; else every Linear outside the head (e.g. selectune's TabularMLP)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return None
    linear = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and roles.get(f"{n}.weight") != "head")
    if not linear:
        raise ValueError(f"PEFT has no default target modules for {type(model).__name__} and it has no Linear layer outside its head; "
                         "give targets=NAME+NAME in the method string, e.g. lora:targets=fc1+fc2")
    return linear


def wrap_with_peft(model: nn.Module, name: str, options: dict[str, Any], new_parameters: Iterable[str] = ()):
    """Wrap ``model`` with the PEFT baseline ``name``; return (peft model, resolved options, the peft config as a dict,
    the names of ``new_parameters`` inside the wrapper).

    The head-role modules and modules with new parameters train too (``modules_to_save``); the new ones keep
    their own learning rate: the loop gets their names inside the wrapper (``fit(..., new_parameters=)``).
    """
    from peft import get_peft_model
    from transformers import PreTrainedModel

    baseline = PEFT_BASELINES[name]
    resolved = baseline.resolve_options(options)
    roles = parameter_roles(model)
    new = set(new_parameters)
    keep = sorted({module_of(n) for n, role in roles.items() if role == "head"} | {module_of(n) for n in new})
    targets = _names(resolved.get("targets", "")) or default_targets(model, roles)
    task_type = "SEQ_CLS" if isinstance(model, PreTrainedModel) else None
    config = baseline.make_config(resolved, targets, keep or None, task_type)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` while wrapping: a note between the two
        # libraries that the user can do nothing about, printed once per run (dozens of times in `tune`)
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        wrapped = get_peft_model(model, config)
    wrapped_new = sorted(n for n, p in wrapped.named_parameters() if p.requires_grad and original_name(n) in new)
    # PEFT keeps module lists as sets; JSON (and a reader) wants them sorted.
    as_dict = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    return wrapped, resolved, as_dict, wrapped_new
