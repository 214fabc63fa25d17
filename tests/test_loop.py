"""The loop's contract: keep-best restores the best validation epoch, early stopping stops, accumulation works."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch.utils.data import DataLoader

from selectune import select
from selectune.train.loop import TrainConfig, fit, make_accelerator, predict, score
from selectune.tasks import TabularClassification, TextClassification


@pytest.fixture(scope="module")
def cancer():
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["label"] = np.where(frame.pop("target") == 1, "benign", "malignant")
    features = [c for c in frame.columns if c != "label"]
    return frame.iloc[:400].reset_index(drop=True), frame.iloc[400:].reset_index(drop=True), features


def make(cancer, seed=0):
    train, val, features = cancer
    task = TabularClassification(label_col="label", labels=["benign", "malignant"], feature_cols=features)
    torch.manual_seed(seed)
    loaded = task.load_model("mlp", train, hidden=[16])
    model = loaded.model
    select(model, "full", new_parameters=loaded.new_parameters)
    return task, model, task.examples(train), task.examples(val)


def val_metric(task, model, val_rows, metric):
    acc = make_accelerator(TrainConfig())
    outputs, loss = predict(model, task, DataLoader(val_rows, batch_size=64, collate_fn=task.collate), acc)
    y = np.array([int(r["labels"]) for r in val_rows])
    return {**score(task, outputs, y), "loss": loss}[metric]


def test_keep_best_restores_the_best_epoch(cancer):
    task, model, train_rows, val_rows = make(cancer)
    # lr high enough that validation loss gets worse after its best epoch
    result = fit(model, task, train_rows, val_rows, TrainConfig(epochs=12, batch_size=16, metric="loss", progress=False), lr=0.05)
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert val_metric(task, model, val_rows, "loss") == pytest.approx(min(losses), rel=1e-5)


def test_without_keep_best_the_last_epoch_stays(cancer):
    task, model, train_rows, val_rows = make(cancer)
    result = fit(model, task, train_rows, val_rows, TrainConfig(epochs=6, batch_size=16, metric="loss", keep_best=False, progress=False), lr=0.05)
    assert val_metric(task, model, val_rows, "loss") == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_early_stopping_stops_after_patience(cancer):
    task, model, train_rows, val_rows = make(cancer)
    result = fit(model, task, train_rows, val_rows, TrainConfig(epochs=40, batch_size=16, metric="loss", patience=2, progress=False), lr=0.05)
    assert len(result.history) < 40
    assert len(result.history) == result.best_epoch + 2  # exactly `patience` epochs without improvement


def test_early_stopping_works_without_keep_best(cancer):
    task, model, train_rows, val_rows = make(cancer)
    result = fit(model, task, train_rows, val_rows,
                 TrainConfig(epochs=40, batch_size=16, metric="loss", patience=2, keep_best=False, progress=False), lr=0.05)
    losses = [h["val_loss"] for h in result.history]
    assert len(result.history) < 40
    assert result.best_epoch == int(np.argmin(losses)) + 1 and len(result.history) == result.best_epoch + 2
    assert val_metric(task, model, val_rows, "loss") == pytest.approx(losses[-1], rel=1e-5)  # the last epoch stays


def test_gradient_accumulation_takes_fewer_optimizer_steps_same_examples(cancer):
    task, model, train_rows, val_rows = make(cancer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = fit(model, task, train_rows, val_rows, TrainConfig(epochs=1, batch_size=8, grad_accum=5, progress=False), lr=1e-3)
    assert result.steps == 50  # micro-batches seen: 400 / 8
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_new_parameters_get_their_own_learning_rate():
    from tests.tiny_models import new_parameters, tiny_bert

    model = tiny_bert()
    selection = select(model, "bitfit", new_parameters=new_parameters(model))
    task = TextClassification(label_col="label", labels=["a", "b", "c"])
    rows = [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": i % 3} for i in range(6)]

    class Tok:  # the tiny model has no tokenizer; padding equal-length rows is all collate needs
        def pad(self, rows, return_tensors):
            return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}

    task.tokenizer = Tok()
    acc = make_accelerator(TrainConfig())
    seen = {}
    original = torch.optim.AdamW.__init__

    def spy(self, groups, **kw):
        seen["groups"] = [(g["lr"], sum(p.numel() for p in g["params"])) for g in groups]
        original(self, groups, **kw)

    torch.optim.AdamW.__init__ = spy
    try:
        fit(model, task, rows, rows, TrainConfig(epochs=1, batch_size=3, new_lr=0.02, progress=False), lr=1e-3, accelerator=acc,
            new_parameters=selection.new_parameters)
    finally:
        torch.optim.AdamW.__init__ = original
    by_lr = {}
    for lr, n in seen["groups"]:
        by_lr[lr] = by_lr.get(lr, 0) + n
    assert by_lr[0.02] == 32 * 3 + 3  # the new classifier: (3, 32) weight + (3,) bias
    assert by_lr[1e-3] == sum(p.numel() for p in model.parameters() if p.requires_grad) - by_lr[0.02]


def test_dropout_option_reaches_every_dropout_and_is_set_back(cancer):
    from tests.tiny_models import tiny_bert
    from selectune.train.loop import restore_dropout, set_dropout

    bert = tiny_bert()  # built without dropout
    bert.train()
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    assert torch.equal(bert(input_ids=ids).logits, bert(input_ids=ids).logits)
    previous = set_dropout(bert, 0.1)  # two training-mode forwards now differ
    assert not torch.equal(bert(input_ids=ids).logits, bert(input_ids=ids).logits)
    restore_dropout(previous)
    assert {m.p for m in bert.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}

    # inside fit: every dropout module runs at the option's p, and the model's own is back afterwards
    task, model, train_rows, val_rows = make(cancer)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and {m.p for m in dropouts} == {0.1}
    seen = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add((m.training, m.p))) for m in dropouts]
    fit(model, task, train_rows, val_rows, TrainConfig(epochs=1, batch_size=64, dropout=0.0, progress=False), lr=1e-3)
    for h in hooks:
        h.remove()
    assert (True, 0.0) in seen and (True, 0.1) not in seen
    assert {m.p for m in dropouts} == {0.1}
    with pytest.raises(ValueError, match=r"--dropout must be in \[0, 1\)"):
        set_dropout(model, 1.0)
