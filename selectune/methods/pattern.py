"""Pattern selection: train the parameters whose full names match a regex (and not an exclude regex).

The escape hatch for any architecture roles.py does not know, and for subsets no other method names.
Matching is ``re.fullmatch`` against the whole name from ``named_parameters``, so ``.*\\.bias`` cannot
match ``unbiased_proj.weight`` by accident. On the CLI, options are separated by commas, so write
alternatives with ``|``: ``--method 'pattern:include=.*\\.bias|classifier\\..*,exclude=.*embeddings.*'``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.nn as nn

from selectune.methods.spec import MethodSpec


@dataclass
class PatternOptions:
    include: str = field(metadata={"help": r"regex over whole parameter names, e.g. .*\.bias|classifier\..* (| not commas)"})
    exclude: str | None = field(default=None, metadata={"help": "regex of names to leave frozen even if include matches"})

    def __post_init__(self):
        # The CLI parser turns a value like "1" or "true" into int/bool; a regex is always text.
        self.include = str(self.include)
        self.exclude = None if self.exclude in (None, "") else str(self.exclude)
        for name in ("include", "exclude"):
            try:
                re.compile(getattr(self, name) or "")
            except re.error as err:
                raise ValueError(f"pattern: {name}={getattr(self, name)!r} is not a valid regex ({err})") from None


def select_pattern(model: nn.Module, include: str, exclude: str | None = None) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    matched = [n for n in names if re.fullmatch(include, n)]
    if not matched:
        sample = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        raise ValueError(f"pattern: include={include!r} matches no parameter of {type(model).__name__} (the regex must "
                         f"match the whole name). Its parameters include: {sample}")
    chosen = [n for n in matched if not (exclude and re.fullmatch(exclude, n))]
    if not chosen:
        raise ValueError(f"pattern: exclude={exclude!r} removes all {len(matched)} parameters include={include!r} matched")
    return sorted(chosen)


SPEC = MethodSpec(name="pattern", summary="parameters whose full names match a regex (any architecture)",
                  options=PatternOptions, select=select_pattern, default_lr=1e-3, example=r"pattern:include=.*\.bias")
# default_lr suits small subsets such as biases; pass --lr (~3e-5) when the pattern selects weight matrices.
