"""DeltaSet: several named deltas on one base; each reproduces its standalone logits, unload restores the base bitwise."""
import pytest
import torch

from selectune import DeltaFingerprintMismatch, base_fingerprint, load_delta, save_delta, select
from selectune.multi_delta import DeltaSet
from tests.tiny_models import new_parameters, tiny_bert, tiny_llama, tiny_text_batch

METHODS = {"bitfit": {}, "head": {}, "layernorm": {}}


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _train_delta(build, method, out, seed, **options):
    """Train ``method`` on a fresh base from ``build`` with its own data seed; save the delta to ``out``."""
    model = build()
    sel = select(model, method, new_parameters=new_parameters(model), **options)
    batch = tiny_text_batch(model, seed=seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    save_delta(model, sel, out)
    return out


def _standalone_logits(build, path, batch):
    fresh = build()
    load_delta(fresh, path)
    return _logits(fresh, batch)


@pytest.fixture
def three_deltas(tmp_path):
    return {m: _train_delta(tiny_bert, m, tmp_path / m, seed=i + 1, **o) for i, (m, o) in enumerate(METHODS.items())}


def _assert_state_equal(model, original):
    state = model.state_dict()
    assert list(state) == list(original)
    assert [k for k, v in state.items() if not torch.equal(v, original[k])] == []


def test_each_delta_reproduces_its_standalone_logits_and_unload_restores_the_base(three_deltas):
    model = tiny_bert()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    batch = tiny_text_batch(model, seed=9)
    base_logits = _logits(model, batch)
    deltas = DeltaSet(model)
    for name, path in three_deltas.items():
        deltas.load(name, path)
    _assert_state_equal(model, original)  # loading alone writes nothing
    # Switch in an order that makes each delta follow every other one.
    for name in ["bitfit", "head", "layernorm", "bitfit", "layernorm", "head"]:
        deltas.activate(name)
        assert deltas.active == name
        assert torch.equal(_logits(model, batch), _standalone_logits(tiny_bert, three_deltas[name], batch)), name
    deltas.deactivate()
    _assert_state_equal(model, original)
    assert torch.equal(_logits(model, batch), base_logits)
    deltas.activate("bitfit")
    deltas.unload("bitfit")
    _assert_state_equal(model, original)
    deltas.activate("head")
    deltas.unload_all()
    _assert_state_equal(model, original)
    assert deltas.deltas == {} and deltas.active is None


def test_loading_while_another_delta_is_active_checks_the_untouched_base(three_deltas):
    model = tiny_bert()
    deltas = DeltaSet(model)
    deltas.load("bitfit", three_deltas["bitfit"])
    deltas.activate("bitfit")
    deltas.load("head", three_deltas["head"])  # the active bitfit delta must not spoil the fingerprint
    assert deltas.active == "bitfit"
    batch = tiny_text_batch(model, seed=9)
    assert torch.equal(_logits(model, batch), _standalone_logits(tiny_bert, three_deltas["bitfit"], batch))


def test_a_delta_for_another_base_is_refused_with_both_fingerprints(three_deltas, tmp_path):
    other_path = _train_delta(lambda: tiny_bert(seed=1), "bitfit", tmp_path / "other", seed=1)
    model = tiny_bert()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    new = ["classifier.weight", "classifier.bias"]
    ours = base_fingerprint(model, exclude=new)  # the untouched base: what load compares, even with "head" active
    deltas = DeltaSet(model)
    deltas.load("head", three_deltas["head"])
    deltas.activate("head")
    with pytest.raises(DeltaFingerprintMismatch) as err:
        deltas.load("other", other_path)
    message = str(err.value)
    assert base_fingerprint(tiny_bert(seed=1), exclude=new) in message and ours in message
    assert "other" not in deltas.deltas and deltas.active == "head"
    deltas.unload_all()
    _assert_state_equal(model, original)


def test_deltas_with_inserted_biases_come_and_go_with_activation(tmp_path):
    with_biases = _train_delta(tiny_llama, "bitfit", tmp_path / "bitfit", seed=1, add_missing_biases=True)
    head = _train_delta(tiny_llama, "head", tmp_path / "head", seed=2)
    model = tiny_llama()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    batch = tiny_text_batch(model, seed=9)
    deltas = DeltaSet(model)
    deltas.load("bitfit", with_biases)
    deltas.load("head", head)
    deltas.activate("bitfit")
    assert model.config.attention_bias is True
    assert torch.equal(_logits(model, batch), _standalone_logits(tiny_llama, with_biases, batch))
    deltas.activate("head")  # the inserted biases go with the delta that needed them
    assert not any(n.endswith(".bias") for n in model.state_dict()) and model.config.attention_bias is False
    assert torch.equal(_logits(model, batch), _standalone_logits(tiny_llama, head, batch))
    deltas.unload_all()
    _assert_state_equal(model, original)


def test_names_are_checked(three_deltas):
    deltas = DeltaSet(tiny_bert())
    deltas.load("a", three_deltas["bitfit"])
    with pytest.raises(ValueError, match="already loaded"):
        deltas.load("a", three_deltas["head"])
    with pytest.raises(KeyError, match="loaded: a"):
        deltas.activate("b")
