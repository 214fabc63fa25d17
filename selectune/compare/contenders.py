"""A contender is one method string of ``selectune compare``: a selective method (``bitfit:roles=query+mlp_in``)
or a PEFT baseline (``lora:r=16``), prepared on a freshly loaded model so that the same loop trains either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch.nn as nn

from selectune.compare.peft_baselines import PEFT_BASELINES, wrap_with_peft
from selectune.delta import DELTA_WEIGHTS, save_delta
from selectune.methods import METHODS, get_method, parse_method
from selectune.selection import Selection, select

PEFT_WEIGHTS = "adapter_model.safetensors"


@dataclass
class Contender:
    text: str
    """The method string as given (``bitfit:roles=query+mlp_in``); names the contender in every output."""
    name: str
    options: dict[str, Any]
    kind: str
    """``selective`` (selectune.methods) or ``peft`` (a baseline from the peft package)."""
    default_lr: float
    needs_data: bool = False

    @property
    def is_peft(self) -> bool:
        return self.kind == "peft"


@dataclass
class PreparedRun:
    """A model ready for ``fit``: what trains, how many parameters, and how to save what trained."""

    contender: Contender
    model: nn.Module
    options: dict[str, Any]
    trainable_parameters: int
    total_parameters: int
    """Parameters of the base model (a PEFT adapter's own are not counted), so % is comparable across methods."""
    selection: Selection | None = None
    peft_config: dict[str, Any] | None = field(default=None)
    new_parameters: list[str] = field(default_factory=list)
    """Names (in ``model``) of the parameters initialised at random: they train at ``new_lr``."""

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / max(self.total_parameters, 1)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the delta (selective) or the adapter (PEFT, with its modules_to_save); return the weights file."""
        out = Path(out_dir)
        if self.selection is not None:
            return save_delta(self.model, self.selection, out) / DELTA_WEIGHTS
        self.model.save_pretrained(str(out))
        return out / PEFT_WEIGHTS


def parse_contenders(text: str, method_defaults: Callable[[str], dict[str, Any]] = lambda name: {}) -> list[Contender]:
    """``"full,bitfit:roles=query+mlp_in,include_key_bias=true,lora:r=16,ia3"`` -> contenders.

    Commas separate methods, and also a method's options: a piece with ``=`` but no ``:`` continues the
    options of the method before it. ``;`` separates methods too (then commas are options only).
    ``method_defaults``: the task's defaults of a selective method (``Task.method_defaults``), under the options given.
    """
    pieces = [p.strip() for p in (text.split(";") if ";" in text else _split_commas(text)) if p.strip()]
    if not pieces:
        raise ValueError("--methods is empty; give e.g. full,bitfit,head,lora")
    contenders, seen = [], set()
    for piece in pieces:
        name, options = parse_method(piece)
        if name in PEFT_BASELINES:
            baseline = PEFT_BASELINES[name]
            contender = Contender(piece, name, baseline.resolve_options(options), "peft", baseline.default_lr)
        elif name in METHODS:
            spec = get_method(name)
            contender = Contender(piece, name, spec.resolve_options({**method_defaults(name), **options}), "selective", spec.default_lr,
                                  spec.needs_data)
        else:
            raise ValueError(f"unknown method {name!r} in --methods; selective: {', '.join(sorted(METHODS))}; "
                             f"PEFT baselines: {', '.join(PEFT_BASELINES)}")
        if piece in seen:
            raise ValueError(f"method {piece!r} is listed twice in --methods; list each once")
        seen.add(piece)
        contenders.append(contender)
    return contenders


def _split_commas(text: str) -> list[str]:
    out: list[str] = []
    for piece in text.split(","):
        if "=" in piece and ":" not in piece and out and ":" in out[-1]:
            out[-1] += "," + piece  # an option of the method before
        else:
            out.append(piece)
    return out


def prepare(model: nn.Module, contender: Contender, batches: Iterable[dict] | None = None, *,
            new_parameters: Iterable[str] = ()) -> PreparedRun:
    """Choose what trains on ``model`` (selective: ``select``; PEFT: wrap it) and count it.
    ``new_parameters``: what the loader initialised at random (they train under every contender)."""
    total = sum(p.numel() for p in model.parameters())
    if contender.is_peft:
        wrapped, options, config, new = wrap_with_peft(model, contender.name, contender.options, new_parameters)
        trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        return PreparedRun(contender, wrapped, options, trainable, total, peft_config=config, new_parameters=new)
    selection = select(model, contender.name, new_parameters=list(new_parameters), batches=batches if contender.needs_data else None,
                       **contender.options)
    return PreparedRun(contender, model, selection.options, selection.trainable_parameters, selection.total_parameters,
                       selection=selection, new_parameters=selection.new_parameters)
