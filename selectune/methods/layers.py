"""Layer selection: train every parameter of chosen transformer blocks (first k, last k, or index ranges).

Blocks are found by structure, not by name: the outermost ``nn.ModuleList``/``nn.Sequential`` whose
children are all of one class and each contain parameterised submodules (BERT ``encoder.layer``, GPT-2
``h``, LLaMA ``layers``, T5 ``encoder.block`` + ``decoder.block``). Lists of bare Linears (several heads)
and heterogeneous stacks (an MLP's Linear/Norm/ReLU ``Sequential``) are not blocks. Encoder-decoder models
number their blocks in the order data flows through them: encoder 0..n-1, then decoder n..n+m-1, so
``last=1`` is the decoder block nearest the output.

The head is not included: new parameters (a fresh classifier) train under every method anyway, and a
pretrained head can be added with ``pattern``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from selectune.methods.spec import MethodSpec
from selectune.roles import pattern_hint


@dataclass
class LayersOptions:
    first: int = field(default=0, metadata={"help": "train the first K blocks (nearest the embeddings)"})
    last: int = field(default=0, metadata={"help": "train the last K blocks (nearest the head)"})
    ranges: str | None = field(default=None, metadata={"help": "block indices and ranges, e.g. 0-1+5 (use + not commas on the CLI)"})

    def __post_init__(self):
        if self.ranges is not None:
            self.ranges = str(self.ranges)  # the CLI parser turns "5" into the int 5
        for name in ("first", "last"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"layers: {name} must be a whole number >= 0, got {getattr(self, name)!r}")
        if not (self.first or self.last or self.ranges):
            raise ValueError("layers needs blocks to train: first=K, last=K or ranges=0-1+5 (e.g. --method layers:last=2)")
        parse_ranges(self.ranges or "")  # fail on a bad range before any model is loaded


def parse_ranges(text: str) -> list[int]:
    """``"0-1+5"`` or ``"0-1,5"`` -> [0, 1, 5]."""
    indices: set[int] = set()
    for item in filter(None, (part.strip() for part in text.replace("+", ",").split(","))):
        low, dash, high = item.partition("-")
        try:
            start, stop = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"layers: bad block range {item!r}; write indices and ranges like 0-1+5") from None
        if start < 0 or stop < start:
            raise ValueError(f"layers: bad block range {item!r}; ranges go low-high with indices >= 0 (e.g. 0-3)")
        indices.update(range(start, stop + 1))
    return sorted(indices)


def _is_block_stack(module: nn.Module) -> bool:
    children = list(module.children())
    return (isinstance(module, (nn.ModuleList, nn.Sequential)) and len(children) > 0
            and len({type(c) for c in children}) == 1
            and all(any(True for _ in c.parameters()) and any(True for _ in c.children()) for c in children))


def block_paths(model: nn.Module) -> list[str]:
    """Module paths of the transformer blocks, in forward order (encoder before decoder)."""
    stacks: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(outer + ".") for outer in stacks):
            continue  # a list inside a block (T5's per-block `layer`) is part of that block
        if path and _is_block_stack(module):
            stacks.append(path)
    return [f"{stack}.{name}" for stack in stacks for name, _ in dict(model.named_modules())[stack].named_children()]


def select_layers(model: nn.Module, first: int = 0, last: int = 0, ranges: str | None = None) -> list[str]:
    blocks = block_paths(model)
    if not blocks:
        raise ValueError(f"layers found no stack of repeated blocks (an nn.ModuleList of same-class modules) in "
                         f"{type(model).__name__}. {pattern_hint(model)}")
    wanted = set(parse_ranges(ranges or "")) | set(range(min(first, len(blocks))))
    wanted |= set(range(max(len(blocks) - last, 0), len(blocks))) if last else set()
    too_far = sorted(i for i in wanted if i >= len(blocks))
    if too_far or first > len(blocks) or last > len(blocks):
        raise ValueError(f"layers: block index out of range (asked first={first}, last={last}, ranges={ranges!r}); "
                         f"{type(model).__name__} has {len(blocks)} blocks, 0-{len(blocks) - 1}: {blocks[0]} .. {blocks[-1]}")
    prefixes = tuple(blocks[i] + "." for i in sorted(wanted))
    return sorted(n for n, _ in model.named_parameters() if n.startswith(prefixes))


SPEC = MethodSpec(name="layers", summary="every parameter of chosen transformer blocks (first/last K or index ranges)",
                  options=LayersOptions, select=select_layers, default_lr=5e-5, example="layers:last=1")
# default_lr: whole weight matrices train, as in full fine-tuning (3e-5), only fewer of them.
