"""The conformance matrix: every registered method (and a few option variants) x every tiny model.

Rows come from the registry (each method's ``example``), so registering a method adds a row and no test
code. Each cell checks the promises every method makes:
  (a) after a few SGD steps exactly the selected tensors changed; everything else is bitwise equal;
  (b) save_delta -> load_delta onto a fresh copy of the base reproduces every tensor exactly;
  (c) the delta-applied model, saved and reloaded with the class's plain ``from_pretrained``, gives the same logits;
  (d) the Selection round-trips through JSON (as it does inside every delta);
  (e) a NaN in a trained tensor is refused by save_delta, and nothing is written.
A cell where a method cannot apply (biases on a bias-free LLaMA) must instead refuse with a clear error.
Methods fitted on data (``spec.needs_data``) get the cell's batch; element-mask methods train through a
parametrization (``selectune.masks``), merged back into plain weights before the tensors are compared.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from selectune import DeltaError, Selection, load_delta, read_delta, save_delta, select
from selectune.delta import DELTA_CONFIG
from selectune.masks import merge_masks, plain_name, trainable_names
from selectune.methods import METHODS, parse_method
from tests.tiny_models import new_parameters, TINY_TEXT_MODELS, PlainNet, tiny_tabular_batch, tiny_tabular_mlp, tiny_text_batch

ROWS = [spec.example_text for spec in METHODS.values()] + [
    "bitfit:roles=query+mlp_in",
    "bitfit:include_key_bias=true,head_weights=true",
    "bitfit:add_missing_biases=true",  # inserts zero biases on LLaMA; changes nothing where biases exist
    "layers:first=1",
    r"pattern:include=.*\.weight,exclude=.*embed.*",
]

# (row, model) -> regex the refusal must match. Every other cell must work.
_NO_BIASES = "no bias terms .*outside the task head"
_NO_BLOCKS = r"no stack of repeated blocks.*pattern:include="
CANNOT_APPLY = {
    **{(row, model): _NO_BIASES for model in ("llama", "t5") for row in ROWS if row.startswith("bitfit")
       and "add_missing_biases" not in row},
    ("bitfit:add_missing_biases=true", "t5"): r"add_missing_biases: .*'t5'.*no flag to build biases",
    ("bitfit:roles=query+mlp_in", "plain"): r"not a known family.*modules include: conv.*pattern:include=",
    ("bitfit:roles=query+mlp_in", "tabular"): "no bias terms with role",
    ("layers:last=1", "plain"): _NO_BLOCKS, ("layers:first=1", "plain"): _NO_BLOCKS,
    ("layers:last=1", "tabular"): _NO_BLOCKS, ("layers:first=1", "tabular"): _NO_BLOCKS,
    (r"pattern:include=.*\.bias", "llama"): "matches no parameter",
    # PlainNet's forward takes a tensor, not a dict of inputs + labels, so it cannot score batches itself.
    **{(row, "plain"): r"needs batches that PlainNet\(\*\*batch\) accepts" for row in ROWS if row.split(":")[0] in ("fish", "lt_sft")},
}


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    batch: Callable[[nn.Module], dict]
    run: Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]
    """(loss, logits) for a batch."""
    reload: Callable[[nn.Module, Path], nn.Module]
    """Save the model the way its users would export it and load it back without selectune."""
    new: Callable[[nn.Module], list[str]] = new_parameters
    """What a loader would return as new (random) parameters of the built model."""


def _run_hf(model, batch):
    out = model(**batch)
    return out.loss, out.logits


def _reload_pretrained(model, out):
    model.save_pretrained(out)
    return type(model).from_pretrained(out)


def _plain_net():
    torch.manual_seed(0)
    return PlainNet()


def _run_plain(net, batch):
    logits = net(batch["x"])
    return F.cross_entropy(logits, batch["labels"]), logits


def _reload_plain(net, out):
    # A plain module's export is its state dict in safetensors.
    out.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    again = PlainNet()
    again.load_state_dict(load_file(str(out / "model.safetensors")))
    return again


MODELS = {
    **{name: Case(lambda build=build: build(seed=0), tiny_text_batch, _run_hf, _reload_pretrained)
       for name, build in TINY_TEXT_MODELS.items()},
    "tabular": Case(lambda: tiny_tabular_mlp(seed=0), tiny_tabular_batch, _run_hf, _reload_pretrained),
    "plain": Case(_plain_net, lambda net: {"x": torch.randn(4, 2, 5, generator=torch.Generator().manual_seed(1)),
                                           "labels": torch.tensor([0, 1, 1, 0])}, _run_plain, _reload_plain,
                  new=lambda net: ["head.weight", "head.bias"]),  # a custom net with a fresh head
}


def _train(model, case, steps=3, lr=0.1) -> dict[str, float]:
    """A few plain SGD steps (no momentum, no weight decay: a tensor changes iff its gradient is non-zero).
    Returns the largest |gradient| each trainable tensor saw."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    batch = case.batch(model)
    largest = {plain_name(n): 0.0 for n, p in model.named_parameters() if p.requires_grad}  # a mask's values: its weight
    model.train()
    for _ in range(steps):
        loss, _ = case.run(model, batch)
        loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                largest[plain_name(n)] = max(largest[plain_name(n)], p.grad.abs().max().item())
        opt.step()
        opt.zero_grad()
    return largest


def _snapshot(model):
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("row", ROWS)
def test_method_on_model(row, model_name, tmp_path):
    case = MODELS[model_name]
    method, options = parse_method(row)
    model = case.build()
    refusal = CANNOT_APPLY.get((row, model_name))
    data = {"batches": [case.batch(model)]} if METHODS[method].needs_data else {}
    if refusal:
        with pytest.raises(ValueError, match=refusal):
            select(model, method, new_parameters=case.new(model), **data, **options)
        assert all(p.requires_grad for p in model.parameters()), "a refused selection must leave the model untouched"
        return

    base = _snapshot(model)
    sel = select(model, method, new_parameters=case.new(model), **data, **options)
    trainable = set(sel.trainable)
    assert trainable_names(model) == trainable
    assert set(sel.new_parameters) <= trainable
    assert set(sel.masked) <= trainable - set(sel.new_parameters)

    # (a) exactly the selected tensors change; a selected one may stay put only with a zero gradient
    # (the attention key bias: softmax is shift-invariant per query). A masked tensor changes only inside its mask.
    largest_grad = _train(model, case)
    assert merge_masks(model) == sel.masked
    after = _snapshot(model)
    for name in sel.masked:
        outside = ~sel.masks[name]
        assert torch.equal(after[name][outside], base[name][outside]), f"{name} changed outside its mask"
    # A tensor the selection inserted (a zero bias) starts from zeros.
    changed = {n for n in after if not torch.equal(after[n], base.get(n, torch.zeros_like(after[n])))}
    assert changed <= trainable, f"frozen tensors changed: {sorted(changed - trainable)[:5]}"
    assert changed, "training changed nothing"
    stuck = {n: largest_grad[n] for n in trainable - changed if largest_grad[n] > 1e-6}
    assert not stuck, f"selected tensors with gradient did not train: {stuck}"

    # (b) the delta holds exactly the selection and reproduces it on a fresh base whose new head differs.
    path = save_delta(model, sel, tmp_path / "delta")
    tensors, config = read_delta(path)
    assert set(tensors) == trainable
    fresh = case.build()
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            if name in sel.new_parameters:
                param.normal_(generator=generator)  # a second load draws another random head
    load_delta(fresh, path)
    fresh_state = _snapshot(fresh)
    assert [n for n in after if not torch.equal(fresh_state[n], after[n])] == []

    # (c) merged (plain save + plain load) == delta-applied, in eval mode on the same batch.
    batch = case.batch(fresh)
    fresh.eval()
    with torch.no_grad():
        expected = case.run(fresh, batch)[1]
        merged = case.reload(fresh, tmp_path / "merged").eval()
        assert torch.allclose(case.run(merged, batch)[1], expected, atol=1e-5, rtol=0)

    # (d) the Selection round-trips through JSON, alone and inside the delta config.
    assert Selection.from_dict(json.loads(sel.to_json())) == sel
    assert Selection.from_dict(config["selection"]) == sel

    # (e) a NaN in a trained entry (one that changed, so inside any mask) is refused before anything is written.
    name = sorted(changed)[0]
    first = int((after[name] != base.get(name, torch.zeros_like(after[name]))).reshape(-1).nonzero()[0])
    with torch.no_grad():
        dict(model.named_parameters())[name].view(-1)[first] = float("nan")
    with pytest.raises(DeltaError, match="NaN"):
        save_delta(model, sel, tmp_path / "nan")
    assert not (tmp_path / "nan" / DELTA_CONFIG).exists()


def test_every_refusal_names_a_real_cell():
    # A stale entry (a renamed row or model) would silently stop checking anything.
    assert {row for row, _ in CANNOT_APPLY} <= set(ROWS)
    assert {model for _, model in CANNOT_APPLY} <= set(MODELS)
