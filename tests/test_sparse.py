"""Element masks (random, pafi, fish, lt_sft): budgets, what each method picks, masked training, sparse deltas.

The conformance matrix (test_conformance.py) runs every mask method over every tiny model; this file checks
what is particular to masks.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from transformers import BertConfig, BertForSequenceClassification

from selectune import Selection, load_delta, read_delta, save_delta, select
from selectune.delta import DELTA_WEIGHTS
from selectune.masks import SparseEntries, merge_masks, trainable_names
from selectune.methods.fish import FishMask
from selectune.methods.lt_sft import LotteryTicketMask
from selectune.methods.sparse import eligible_parameters
from tests.tiny_models import new_parameters, tiny_bert, tiny_text_batch

MASK_METHODS = ["random", "pafi", "fish", "lt_sft"]
TINY_BERT_NEW = ["classifier.weight", "classifier.bias"]  # tiny_bert's fresh head, which select() passes to the methods


def _data(method, model):
    return {"batches": [tiny_text_batch(model)]} if method in ("fish", "lt_sft") else {}


def _eligible_total(model):
    return sum(p.numel() for p in eligible_parameters(model, new_parameters=new_parameters(model)).values())


def _mask_count(sel):
    return sum(int(m.sum()) for m in sel.masks.values())


@pytest.mark.parametrize("method", MASK_METHODS)
def test_budget_count_and_fraction(method):
    model = tiny_bert()
    sel = select(model, method, new_parameters=new_parameters(model), budget=37, **_data(method, model))
    assert _mask_count(sel) == 37
    model = tiny_bert()
    total = _eligible_total(model)
    sel = select(model, method, new_parameters=new_parameters(model), budget=0.01, **_data(method, model))
    assert _mask_count(sel) == round(0.01 * total)
    # Budget is global over the eligible tensors: no embeddings, no new parameters, nothing 1-D.
    assert not any("embeddings" in n or n.startswith("classifier") for n in sel.masked)
    assert set(sel.masked) <= set(eligible_parameters(tiny_bert(), new_parameters=TINY_BERT_NEW))
    # Biases train whole beside the mask; counted in trainable_parameters with the mask's entries.
    params = dict(tiny_bert().named_parameters())
    whole = set(sel.trainable) - set(sel.masked)
    assert sel.trainable_parameters == _mask_count(sel) + sum(params[n].numel() for n in whole)


@pytest.mark.parametrize("bad", [0, -3, 0.0, 1.5, True, "lots"])
def test_bad_budget_refused(bad):
    with pytest.raises(ValueError, match="budget"):
        select(tiny_bert(), "random", budget=bad)


def test_budget_larger_than_eligible_refused():
    with pytest.raises(ValueError, match="eligible tensors hold only"):
        select(tiny_bert(), "pafi", budget=10**9)


def test_include_embeddings():
    sel = select(tiny_bert(), "pafi", budget=0.5, include_embeddings=True)
    assert any("embeddings" in n for n in sel.masked)


@pytest.mark.parametrize("method", ["random", "lt_sft", "fish"])
def test_deterministic_with_a_seed(method):
    def masks(seed):
        model = tiny_bert()
        return select(model, method, new_parameters=new_parameters(model), budget=50, seed=seed, **_data(method, model)).masks

    first, again = masks(0), masks(0)
    assert first.keys() == again.keys() and all(torch.equal(first[n], again[n]) for n in first)
    if method == "random":  # the data-driven ones depend on the data, not the seed (no dropout here)
        other = masks(1)
        assert first.keys() != other.keys() or any(not torch.equal(first[n], other[n]) for n in first)


def test_pafi_picks_the_smallest_magnitudes():
    model = tiny_bert()
    weights = {n: p.detach().abs().clone() for n, p in eligible_parameters(model, new_parameters=new_parameters(model)).items()}
    sel = select(model, "pafi", new_parameters=new_parameters(model), budget=40)
    picked = torch.cat([weights[n][m] for n, m in sel.masks.items()])
    rest = torch.cat([weights[n][~sel.masks[n]] if n in sel.masks else weights[n].reshape(-1) for n in weights])
    assert picked.numel() == 40 and picked.max() <= rest.min()


class _Quadratic(nn.Module):
    """loss = sum(W * c): dL/dW = c exactly, so the Fisher information is the mean of c^2 over batches."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3, bias=False)

    def forward(self, c):
        return SimpleNamespace(loss=(self.lin.weight * c).sum())


def test_fish_picks_the_largest_mean_squared_gradient():
    torch.manual_seed(0)
    model = _Quadratic()
    c1, c2 = torch.randn(3, 4), torch.randn(3, 4)
    before = model.lin.weight.detach().clone()
    fitted = FishMask(budget=5).fit(model, [{"c": c1}, {"c": c2}])
    expected = (c1 ** 2 + c2 ** 2) / 2
    assert torch.allclose(fitted.fisher_["lin.weight"], expected)
    top = torch.zeros(12, dtype=torch.bool)
    top[expected.reshape(-1).topk(5).indices] = True
    assert torch.equal(fitted.mask_["lin.weight"], top.view(3, 4))
    # Fitting left the model as it was: weights, flags, no grads.
    assert torch.equal(model.lin.weight, before) and model.lin.weight.requires_grad and model.lin.weight.grad is None


def test_fish_without_batches_refused():
    with pytest.raises(ValueError, match="batches"):
        select(tiny_bert(), "fish")


def test_lt_sft_resets_the_model_bitwise_before_training():
    model = tiny_bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fitted = LotteryTicketMask(budget=30, steps=3).fit(model, [tiny_text_batch(model)], new_parameters=TINY_BERT_NEW)
    assert any(c.max() > 0 for c in fitted.change_.values()), "the ranking steps changed nothing"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # The kept entries are those that moved most.
    moved = torch.cat([c.reshape(-1) for c in fitted.change_.values()])
    kept = torch.cat([fitted.change_[n][m] for n, m in fitted.mask_.items()])
    assert kept.numel() == 30 and kept.min() >= moved.topk(30).values.min()
    # Through select: the masked model computes exactly the original weights until it trains.
    sel = select(model, "lt_sft", new_parameters=new_parameters(model), budget=30, steps=3, batches=[tiny_text_batch(model)])
    merge_masks(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert _mask_count(sel) == 30


def _train_adamw(model, steps=3, weight_decay=0.1):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=weight_decay)
    batch = tiny_text_batch(model)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


@pytest.mark.parametrize("method", MASK_METHODS)
def test_only_masked_entries_change_and_optimizer_state_is_k_sized(method):
    model = tiny_bert()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    sel = select(model, method, new_parameters=new_parameters(model), budget=0.005, **_data(method, model))
    assert trainable_names(model) == set(sel.trainable)
    optimizer = _train_adamw(model)  # weight decay on, which would move every entry of a plain weight

    # Optimizer state: O(k) per masked tensor, nothing full-size.
    k = {n: int(m.sum()) for n, m in sel.masks.items()}
    sizes = [t.numel() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.ndim]
    whole = {n: p.numel() for n, p in tiny_bert().named_parameters() if n in set(sel.trainable) - set(sel.masked)}
    assert sum(sizes) == 2 * (sum(k.values()) + sum(whole.values()))  # exp_avg + exp_avg_sq per trained entry
    assert max(sizes) < min(base[n].numel() for n in sel.masked)

    merge_masks(model)
    after = model.state_dict()
    assert set(after) == set(base)  # plain keys again
    for name, value in after.items():
        if name in sel.masks:
            mask = sel.masks[name]
            assert torch.equal(value[~mask], base[name][~mask]), f"{name} changed outside its mask"
            assert not torch.equal(value[mask], base[name][mask]), f"{name} did not train inside its mask"
        elif name not in sel.trainable:
            assert torch.equal(value, base[name]), f"frozen {name} changed"
    assert {"classifier.weight", "classifier.bias"} <= set(sel.trainable) - set(sel.masked)


def _bigger_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def test_sparse_delta_round_trip_is_exact_and_small(tmp_path):
    model = _bigger_bert()
    sel = select(model, "pafi", new_parameters=new_parameters(model), budget=0.005, train_biases=False)
    _train_adamw(model, steps=2)
    path = save_delta(model, sel, tmp_path / "delta")  # saved while still parametrized
    merge_masks(model)
    trained = model.state_dict()

    tensors, config = read_delta(path)
    assert set(tensors) == set(sel.trainable)
    assert all(isinstance(tensors[n], SparseEntries) for n in sel.masked)
    assert config["selection"]["masked"] == sel.masked and config["selection"]["options"]["budget"] == 0.005
    assert "masks" not in config["selection"]

    fresh = _bigger_bert()
    with torch.no_grad():
        fresh.classifier.weight.normal_()  # another load draws another random head
    load_delta(fresh, path)
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())

    # (4 bytes value + 8 bytes index) per entry, plus the dense new head and a header.
    size = (path / DELTA_WEIGHTS).stat().st_size
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    head = sum(p.numel() * 4 for n, p in model.named_parameters() if n.startswith("classifier"))
    assert size < 12 * _mask_count(sel) + head + 8192
    assert size < 0.02 * dense


def test_saved_delta_of_merged_model_matches(tmp_path):
    model = tiny_bert()
    sel = select(model, "random", new_parameters=new_parameters(model), budget=60, seed=3)
    _train_adamw(model)
    save_delta(model, sel, tmp_path / "parametrized")
    merge_masks(model)
    save_delta(model, sel, tmp_path / "merged")
    a, _ = read_delta(tmp_path / "parametrized")
    b, _ = read_delta(tmp_path / "merged")
    for n in a:
        if isinstance(a[n], SparseEntries):
            assert torch.equal(a[n].indices, b[n].indices) and torch.equal(a[n].values, b[n].values)
        else:
            assert torch.equal(a[n], b[n])


def test_merged_model_loads_with_plain_from_pretrained(tmp_path):
    model = tiny_bert()
    sel = select(model, "fish", new_parameters=new_parameters(model), budget=0.01, batches=[tiny_text_batch(model)])
    _train_adamw(model)
    batch = tiny_text_batch(model, seed=5)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits  # computed through the parametrization
    assert merge_masks(model) == sel.masked
    assert not any("parametrizations" in k for k in model.state_dict())
    model.save_pretrained(tmp_path / "merged")
    again = BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, expected, atol=1e-5, rtol=0)


def test_selection_json_keeps_mask_names_not_masks():
    model = tiny_bert()
    sel = select(model, "random", new_parameters=new_parameters(model), budget=20)
    data = json.loads(sel.to_json())
    assert data["masked"] == sel.masked and "masks" not in data
    again = Selection.from_dict(data)
    assert again == sel and again.masks == {}
    # An older config without the field still loads.
    del data["masked"]
    assert Selection.from_dict(data).masked == []
    # Masks come from the delta's safetensors, not JSON: applying a JSON-only masked selection is refused.
    with pytest.raises(ValueError, match="no mask tensors"):
        again.apply(tiny_bert())


def test_apply_is_idempotent_and_merge_is_its_mirror():
    model = tiny_bert()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    sel = select(model, "pafi", new_parameters=new_parameters(model), budget=25)
    sel.apply(model)  # again: no second parametrization, values kept
    assert sum(p.numel() for n, p in model.named_parameters() if n.endswith(".values")) == 25
    assert merge_masks(model) == sel.masked and merge_masks(model) == []
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_training_loop_trains_a_mask_with_decay_and_keep_best():
    from selectune.train.loop import TrainConfig, fit, make_accelerator
    from selectune.tasks import TextClassification

    model = tiny_bert()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    sel = select(model, "pafi", new_parameters=new_parameters(model), budget=50)
    task = TextClassification(label_col="label", labels=["a", "b", "c"])
    rows = [{"input_ids": [1 + i, 2, 3], "attention_mask": [1, 1, 1], "labels": i % 3} for i in range(6)]

    class Tok:  # the tiny model has no tokenizer; padding equal-length rows is all collate needs
        def pad(self, rows, return_tensors):
            return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}

    task.tokenizer = Tok()
    seen = {}
    original = torch.optim.AdamW.__init__

    def spy(self, groups, **kw):
        seen["decayed"] = sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])
        original(self, groups, **kw)

    torch.optim.AdamW.__init__ = spy
    try:
        fit(model, task, rows, rows, TrainConfig(epochs=2, batch_size=3, weight_decay=0.1, progress=False), lr=1e-2,
            accelerator=make_accelerator(TrainConfig()), new_parameters=sel.new_parameters)
    finally:
        torch.optim.AdamW.__init__ = original
    # The mask's values are decayed as their weights would be, beside the new (3, 32) classifier weight.
    assert seen["decayed"] == 50 + 3 * 32
    merge_masks(model)
    after = model.state_dict()
    for name, mask in sel.masks.items():
        assert torch.equal(after[name][~mask], base[name][~mask])
    assert any(not torch.equal(after[n][m], base[n][m]) for n, m in sel.masks.items())


def test_sparse_delta_in_a_delta_set(tmp_path):
    from selectune.multi_delta import DeltaSet

    model = tiny_bert()
    sel = select(model, "random", new_parameters=new_parameters(model), budget=40)
    _train_adamw(model)
    save_delta(model, sel, tmp_path / "d")
    merge_masks(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    base = tiny_bert()
    original = {k: v.clone() for k, v in base.state_dict().items()}
    deltas = DeltaSet(base)
    deltas.load("d", tmp_path / "d")
    deltas.activate("d")
    assert all(torch.equal(v, trained[k]) for k, v in base.state_dict().items() if not k.startswith("classifier"))
    deltas.unload_all()
    assert all(torch.equal(v, original[k]) for k, v in base.state_dict().items())
