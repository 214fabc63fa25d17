"""What a method is: a selection function, its options dataclass, a summary and a default learning rate.

A selection function returns the names of whole tensors to train, ``list[str]``, or, for element masks, a
``MaskedResult``. A method with ``needs_data`` is called as ``select(model, batches=..., **options)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

REQUIRED = "(required)"


@dataclass
class MaskedResult:
    """What an element-mask method chose: tensors that train whole, and bool masks (the parameter's shape)."""

    whole: list[str]
    """Trained whole (biases, when the method trains them); new parameters are added by ``select``."""
    masks: dict[str, torch.Tensor]
    """Parameter name -> bool mask; only the True entries train."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    options: type
    """A dataclass; its fields are the method's options, validated by ``resolve_options``."""
    select: Callable[..., "list[str] | MaskedResult"]
    default_lr: float
    """Learning rate used when the user gives none (bias-only needs ~30x full fine-tuning's)."""
    example: str = ""
    """A typical CLI method string (``layers:last=1``), shown in errors; needed when an option is required.
    The conformance suite runs every method through it; defaults to the bare name."""
    needs_data: bool = False
    """The method is fitted on batches (fish, lt_sft): ``select`` is called with ``batches=`` (dicts that
    ``model(**batch)`` turns into an output with ``.loss``)."""
    takes_new_parameters: bool = False
    """``select`` is called with ``new_parameters=`` (names the checkpoint lacked): element masks keep those
    out of their budget, since they train whole anyway."""

    @property
    def example_text(self) -> str:
        return self.example or self.name

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        fields = dataclasses.fields(self.options)
        unknown = sorted(set(options) - {f.name for f in fields})
        if unknown:
            allowed = ", ".join(sorted(f.name for f in fields)) or "none"
            raise ValueError(f"method {self.name!r} has no option(s) {unknown}; its options are: {allowed}")
        # A missing required option would otherwise surface as a TypeError from the dataclass.
        missing = [f.name for f in fields if f.name not in options and _is_required(f)]
        if missing:
            raise ValueError(f"method {self.name!r} needs option(s) {', '.join(missing)}, e.g. --method '{self.example_text}'")
        return dataclasses.asdict(self.options(**options))

    def option_docs(self) -> list[tuple[str, Any, str]]:
        """(name, default, help) per option, for ``selectune methods``; the default of a required one is ``(required)``."""
        return [(f.name, _default(f), f.metadata.get("help", "")) for f in dataclasses.fields(self.options)]


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return REQUIRED if f.default_factory is dataclasses.MISSING else f.default_factory()
