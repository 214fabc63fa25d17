"""What a method is: a selection function, its options dataclass, a summary and a default learning rate."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    options: type
    """A dataclass; its fields are the method's options, validated by ``resolve_options``."""
    select: Callable[..., list[str]]
    default_lr: float
    """Learning rate used when the user gives none (bias-only needs ~30x full fine-tuning's)."""

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        fields = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(options) - fields)
        if unknown:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"method {self.name!r} has no option(s) {unknown}; its options are: {allowed}")
        return dataclasses.asdict(self.options(**options))

    def option_docs(self) -> list[tuple[str, Any, str]]:
        """(name, default, help) per option, for ``selectune methods``."""
        return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(self.options)]
