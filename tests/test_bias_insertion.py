"""bitfit add_missing_biases: zero biases on a bias-free LLaMA, trained, saved, reloaded and exported."""
import json

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, MistralConfig, MistralForSequenceClassification, Qwen2Config,
                          Qwen2ForSequenceClassification)

from selectune import DeltaFingerprintMismatch, Selection, base_fingerprint, load_delta, read_delta, save_delta, select
from tests.tiny_models import new_parameters, tiny_bert, tiny_llama, tiny_t5, tiny_text_batch

PROJECTIONS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
               "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def _names(projections, layers=2):
    return sorted(f"model.layers.{i}.{PROJECTIONS[p]}.{p}.bias" for i in range(layers) for p in projections)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _train(model, batch, steps=3, lr=0.1):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_inserted_zero_biases_leave_outputs_bitwise_identical():
    model = tiny_llama()
    batch = tiny_text_batch(model)
    before = _logits(model, batch)
    fingerprint = base_fingerprint(model, exclude=["score.weight"])
    sel = select(model, "bitfit", new_parameters=new_parameters(model), add_missing_biases=True)
    assert torch.equal(_logits(model, batch), before)
    assert sel.inserted_parameters == _names(PROJECTIONS)
    assert sel.new_parameters == ["score.weight"]  # inserted biases are zeros, not random: not "new"
    assert sel.base_fingerprint == fingerprint  # taken before insertion
    # Key biases are inserted (the config flag covers k_proj) but skipped for training: zero gradient.
    assert set(sel.trainable) == (set(_names(PROJECTIONS)) - set(_names(["k_proj"]))) | {"score.weight"}
    assert model.config.attention_bias is True and model.config.mlp_bias is True
    bias = model.model.layers[0].self_attn.q_proj.bias
    assert bias.dtype == model.model.layers[0].self_attn.q_proj.weight.dtype and not bias.any()


def test_training_changes_only_the_selected_biases_and_head(tmp_path):
    model = tiny_llama()
    base = _state(model)
    sel = select(model, "bitfit", new_parameters=new_parameters(model), add_missing_biases=True)
    _train(model, tiny_text_batch(model))
    after = model.state_dict()
    changed = {n for n, v in after.items() if not torch.equal(v, base.get(n, torch.zeros_like(v)))}
    assert changed == set(sel.trainable)  # every trained bias moved off zero; nothing frozen moved
    assert all(not after[n].any() for n in _names(["k_proj"]))


def test_delta_round_trip_on_a_fresh_base_and_plain_from_pretrained_export(tmp_path):
    model = tiny_llama()
    sel = select(model, "bitfit", new_parameters=new_parameters(model), add_missing_biases=True)
    batch = tiny_text_batch(model)
    _train(model, batch)
    save_delta(model, sel, tmp_path / "delta")
    tensors, config = read_delta(tmp_path / "delta")
    assert set(tensors) == set(sel.trainable)
    assert config["selection"]["inserted_parameters"] == _names(PROJECTIONS)
    expected = _logits(model, batch)

    fresh = tiny_llama()
    assert not any(n.endswith(".bias") for n, _ in fresh.named_parameters())
    load_delta(fresh, tmp_path / "delta")
    assert torch.equal(_logits(fresh, batch), expected)
    assert set(fresh.state_dict()) == set(model.state_dict())

    fresh.save_pretrained(tmp_path / "merged")
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["attention_bias"] is True and saved["mlp_bias"] is True
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert set(plain.state_dict()) == set(model.state_dict())
    assert torch.allclose(_logits(plain, batch), expected, atol=1e-5, rtol=0)


def test_roles_subset_fills_its_config_group_and_exports_consistently(tmp_path):
    model = tiny_llama()
    batch = tiny_text_batch(model)
    sel = select(model, "bitfit", new_parameters=new_parameters(model), roles="query", add_missing_biases=True)
    # attention_bias builds q, k, v and o_proj biases, so all four are inserted; the MLP group is untouched.
    assert sel.inserted_parameters == _names(["q_proj", "k_proj", "v_proj", "o_proj"])
    assert set(sel.trainable) == set(_names(["q_proj"])) | {"score.weight"}
    assert model.config.attention_bias is True and model.config.mlp_bias is False
    _train(model, batch)
    assert all(not model.state_dict()[n].any() for n in _names(["k_proj", "v_proj", "o_proj"]))
    save_delta(model, sel, tmp_path / "delta")
    fresh = tiny_llama()
    load_delta(fresh, tmp_path / "delta")
    expected = _logits(model, batch)
    assert torch.equal(_logits(fresh, batch), expected)
    fresh.save_pretrained(tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(plain, batch), expected, atol=1e-5, rtol=0)


def test_wrong_base_is_refused_before_any_bias_is_inserted(tmp_path):
    model = tiny_llama()
    sel = select(model, "bitfit", new_parameters=new_parameters(model), add_missing_biases=True)
    save_delta(model, sel, tmp_path / "delta")
    other = tiny_llama(seed=1)
    with pytest.raises(DeltaFingerprintMismatch) as err:
        load_delta(other, tmp_path / "delta")
    assert sel.base_fingerprint in str(err.value)
    assert not any(n.endswith(".bias") for n, _ in other.named_parameters())


@pytest.mark.parametrize("build, family", [
    (tiny_t5, "t5"),
    (lambda: MistralForSequenceClassification(MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                            num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)), "mistral"),
    # Qwen2 has q/k/v biases already; its o_proj and MLP are built bias=False with no config flag.
    (lambda: Qwen2ForSequenceClassification(Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)), "qwen2"),
])
def test_architectures_whose_config_cannot_carry_biases_are_refused_at_select_time(build, family):
    model = build()
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=rf"add_missing_biases: \w+ \(model_type '{family}'\).*no flag.*from_pretrained.*layernorm"):
        select(model, "bitfit", new_parameters=new_parameters(model), add_missing_biases=True)
    assert set(model.state_dict()) == keys
    assert all(p.requires_grad for p in model.parameters())


def test_a_refused_selection_removes_what_it_inserted():
    model = tiny_llama()
    keys = set(model.state_dict())
    # Only the key bias asked for, and it is skipped by default: bitfit refuses after inserting.
    with pytest.raises(ValueError, match="key bias is skipped"):
        select(model, "bitfit", new_parameters=new_parameters(model), roles="key", add_missing_biases=True)
    assert set(model.state_dict()) == keys
    assert model.config.attention_bias is False


def test_models_that_have_biases_are_unchanged_by_the_option():
    plain, inserted = select(tiny_bert(), "bitfit"), select(tiny_bert(), "bitfit", add_missing_biases=True)
    assert inserted.trainable == plain.trainable and inserted.inserted_parameters == []


def test_selection_without_the_new_field_still_loads():
    data = select(tiny_bert(), "bitfit").to_dict()
    del data["inserted_parameters"]
    assert Selection.from_dict(data).inserted_parameters == []


def test_inspect_cli_lists_inserted_biases_on_a_tokenizerless_llama(tmp_path, capsys):
    # `selectune inspect` looks at parameters only: a model folder without a tokenizer is enough.
    from selectune.cli import main

    tiny_llama().save_pretrained(tmp_path / "llama")
    assert main(["inspect", str(tmp_path / "llama"), "--method", "bitfit:add_missing_biases=true", "--num-labels", "3"]) == 0
    out = capsys.readouterr().out
    assert "inserted (zero-init biases on bias-free layers, outputs unchanged until trained): 14 tensors" in out
    # q, v, o and the three MLP projections per layer train (the key bias is inserted for export but has zero gradient)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and line.split()[0] in ("query", "key", "mlp_in", "all")}
    assert rows["query"][:2] == ["2", "64"] and rows["key"][:2] == ["0", "0"] and rows["mlp_in"][:2] == ["4", "256"]
    assert rows["all"][:2] == ["12", "480"]  # the saved score head is in the checkpoint: not new, so not trained
