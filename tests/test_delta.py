import os
import pickle

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from selectune import DeltaError, DeltaFingerprintMismatch, base_fingerprint, load_delta, read_delta, save_delta, select
from selectune.delta import DELTA_WEIGHTS
from tests.tiny_models import new_parameters, tiny_batch, tiny_bert


def _train_a_little(model, steps=3, lr=0.05):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = tiny_batch(model)
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture
def trained(tmp_path):
    model = tiny_bert(seed=0)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    sel = select(model, "bitfit", new_parameters=new_parameters(model))
    _train_a_little(model)
    save_delta(model, sel, tmp_path / "delta", metadata={"labels": ["a", "b", "c"]})
    return model, sel, base_state, tmp_path / "delta"


def test_only_selected_tensors_change_and_frozen_are_bitwise_equal(trained):
    model, sel, base_state, _ = trained
    for name, value in model.state_dict().items():
        assert torch.equal(value, base_state[name]) == (name not in sel.trainable), name


def test_delta_holds_only_trained_tensors_and_round_trips_exactly(trained):
    model, sel, _, path = trained
    tensors, config = read_delta(path)
    assert set(tensors) == set(sel.trainable)
    assert config["metadata"]["labels"] == ["a", "b", "c"]
    assert config["selection"]["method"] == "bitfit"
    fresh = tiny_bert(seed=0)  # same base; its random classifier differs, which the delta overrides
    load_delta(fresh, path)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_fingerprint_ignores_new_parameters_but_not_base_weights():
    a, b = tiny_bert(seed=0), tiny_bert(seed=0)
    with torch.no_grad():
        b.classifier.weight.add_(1.0)
    new = ["classifier.weight", "classifier.bias"]
    assert base_fingerprint(a, exclude=new) == base_fingerprint(b, exclude=new)
    with torch.no_grad():
        b.bert.encoder.layer[0].intermediate.dense.weight[0, 0] += 1e-3
    assert base_fingerprint(a, exclude=new) != base_fingerprint(b, exclude=new)


def test_different_base_is_refused_with_both_fingerprints(trained):
    _, sel, _, path = trained
    other = tiny_bert(seed=1)
    with pytest.raises(DeltaFingerprintMismatch) as err:
        load_delta(other, path)
    message = str(err.value)
    assert sel.base_fingerprint in message
    assert base_fingerprint(other, exclude=sel.new_parameters) in message
    assert "force" in message
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # refused before any change
    with pytest.warns(UserWarning, match="force=True"):
        load_delta(other, path, force=True)


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("delta.bin", "adapter.pt", "weights.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(DeltaError, match="never unpickle"):
            read_delta(path)
    torch.save({"x": torch.zeros(2)}, tmp_path / "model.ckpt.safetensors")
    with pytest.raises(DeltaError, match="zip/torch.save"):
        read_delta(tmp_path / "model.ckpt.safetensors")
    assert not marker.exists()


def test_tampered_weights_are_refused(trained):
    _, _, _, path = trained
    raw = bytearray((path / DELTA_WEIGHTS).read_bytes())
    raw[-1] ^= 0x01
    (path / DELTA_WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(DeltaError, match="does not match its recorded hash"):
        read_delta(path)


def test_nan_delta_is_refused_and_nothing_written(tmp_path):
    model = tiny_bert()
    sel = select(model, "bitfit", new_parameters=new_parameters(model))
    with torch.no_grad():
        model.bert.pooler.dense.bias[0] = float("nan")
    with pytest.raises(DeltaError, match="NaN"):
        save_delta(model, sel, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_minilm_bitfit_delta_under_150kb(tmp_path):
    from selectune.models import resolve_model
    from selectune.tasks import TextClassification

    loaded = TextClassification(label_col="y", labels=["negative", "neutral", "positive"]).load_model(resolve_model("minilm"))
    model = loaded.model
    sel = select(model, "bitfit", new_parameters=loaded.new_parameters)
    assert sel.new_parameters == ["classifier.bias", "classifier.weight"]
    save_delta(model, sel, tmp_path / "d")
    size = (tmp_path / "d" / DELTA_WEIGHTS).stat().st_size
    assert size < 150_000, size
    assert sel.trainable_parameters == 28_803  # 0.118% of 24.5M: MiniLM (24,963) + the appended mean-pooling layer


def test_merged_model_loads_with_plain_from_pretrained(trained, tmp_path):
    model, _, _, path = trained
    base_dir = tmp_path / "base"
    tiny_bert(seed=0).save_pretrained(base_dir)
    model.eval()
    batch = tiny_batch(model)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    expected = model(**inputs).logits
    base = BertForSequenceClassification.from_pretrained(base_dir)
    load_delta(base, path)
    base.save_pretrained(tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(plain(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    # mkstemp creates 0600 files; a delta or report must be readable by a reviewer as any other file would be.
    import os

    from selectune.io import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        plain = tmp_path / "b.json"
        plain.write_bytes(b"{}")
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == "0o644"
