import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from selectune import select, trainable_report
from selectune.methods import METHODS, parse_method
from selectune.selection import Selection
from tests.tiny_models import new_parameters, PlainNet, tiny_batch, tiny_bert


def test_registry_lists_first_methods_with_options():
    assert {"bitfit", "full", "head"} <= set(METHODS)
    opts = {n for n, _, _ in METHODS["bitfit"].option_docs()}
    assert opts == {"roles", "include_key_bias", "head_weights", "add_missing_biases"}


def test_bitfit_selects_biases_by_structure_plus_new_head():
    model = tiny_bert()
    sel = select(model, "bitfit", new_parameters=new_parameters(model))
    for name in sel.trainable:
        assert name.endswith(".bias") or name in ("classifier.weight",), name
    # key bias skipped by default; query bias, norm bias, pooler bias, classifier present
    assert "bert.encoder.layer.0.attention.self.key.bias" not in sel.trainable
    assert "bert.encoder.layer.0.attention.self.query.bias" in sel.trainable
    assert "bert.encoder.layer.1.output.LayerNorm.bias" in sel.trainable
    assert "bert.pooler.dense.bias" in sel.trainable
    assert {"classifier.weight", "classifier.bias"} <= set(sel.trainable)
    assert "bert.pooler.dense.weight" not in sel.trainable
    # requires_grad mirrors the selection exactly
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(sel.trainable)
    # 2 layers x (q, v, attn_out, mlp_in, mlp_out, 2 norms) + emb norm + pooler + classifier bias = 17 biases
    assert sum(n.endswith(".bias") for n in sel.trainable) == 2 * 7 + 1 + 1 + 1


def test_include_key_bias_and_head_weights_options():
    model = tiny_bert()
    sel = select(model, "bitfit", new_parameters=new_parameters(model), include_key_bias=True, head_weights=True)
    assert "bert.encoder.layer.0.attention.self.key.bias" in sel.trainable
    assert "bert.pooler.dense.weight" in sel.trainable


def test_role_subset_query_mlp_in_is_004_percent_of_bert_base():
    # The paper's subset on BERT-base (built in code, random init; counts do not depend on values).
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    sel = select(model, "bitfit", roles="query,mlp_in", new_parameters=[])
    assert all(".query.bias" in n or ".intermediate.dense.bias" in n for n in sel.trainable)
    assert sel.trainable_parameters == 12 * (768 + 3072)
    assert round(sel.trainable_percent, 2) == 0.04


def test_roles_are_validated():
    with pytest.raises(ValueError, match="unknown role"):
        select(tiny_bert(), "bitfit", roles="queries")
    with pytest.raises(ValueError, match="has no option"):
        select(tiny_bert(), "bitfit", nosuch=1)
    with pytest.raises(ValueError, match="unknown method"):
        select(tiny_bert(), "nosuch")


def test_parse_method_from_cli_text():
    assert parse_method("bitfit:roles=query+mlp_in,include_key_bias=true") == (
        "bitfit", {"roles": "query+mlp_in", "include_key_bias": True})


def test_full_and_head():
    model = tiny_bert()
    assert select(model, "full", new_parameters=new_parameters(model)).trainable_parameters == sum(p.numel() for p in model.parameters())
    sel = select(model, "head", new_parameters=new_parameters(model))
    assert set(sel.trainable) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}


def test_report_counts_add_up():
    model = tiny_bert()
    sel = select(model, "bitfit", new_parameters=new_parameters(model))
    rows = {r["role"]: r for r in trainable_report(model, sel)}
    assert rows["all"]["trainable"] == sel.trainable_parameters
    assert sum(r["trainable"] for k, r in rows.items() if k != "all") == sel.trainable_parameters
    assert rows["key"]["trainable"] == 0 and rows["embed"]["trainable"] == 0


def test_selection_json_round_trip():
    sel = select(tiny_bert(), "bitfit", roles=["query", "head"])
    again = Selection.from_dict(__import__("json").loads(sel.to_json()))
    assert again == sel


def test_plain_module_works_without_hf():
    net = PlainNet()
    assert set(select(net, "head", new_parameters=new_parameters(net)).trainable) == {"head.weight", "head.bias"}
    sel = select(net, "bitfit", new_parameters=new_parameters(net))  # re-selecting replaces the previous selection
    assert set(sel.trainable) == {"conv.bias", "norm.bias", "hidden.bias", "head.bias"}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    (net(torch.randn(3, 2, 5)) * torch.tensor([1.0, -2.0])).sum().backward()
    opt.step()
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]) == (n not in sel.trainable), n


def test_key_bias_gradient_is_zero():
    # softmax over keys is shift-invariant per query: q.b_k is the same for every key -> dL/db_k = 0.
    from selectune.models import resolve_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path = resolve_model("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)  # the new classifier's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()  # no dropout: one fixed answer
    select(model, "bitfit", include_key_bias=True)
    batch = tok(["the drug worked well", "terrible side effects, stopped after a week of nausea"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([2, 0]))
    out.loss.backward()
    for i in range(6):
        attn = model.bert.encoder.layer[i].attention.self
        assert attn.query.bias.grad.abs().max() > 1e-5
        # exactly 0 in exact arithmetic; float32 rounding leaves ~1e-6 of the query bias's gradient (seen up to 2.4e-6
        # with dropout on), far below the ~1 ratio a key bias that mattered would have
        assert attn.key.bias.grad.abs().max() <= 1e-4 * attn.query.bias.grad.abs().max()


def test_hf_trainer_trains_only_selected_tensors(tmp_path):
    model = tiny_bert()
    sel = select(model, "bitfit", new_parameters=new_parameters(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = [{k: v[i] for k, v in tiny_batch(model, batch=16, seed=s).items()} for s in range(2) for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-2,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True)
    Trainer(model=model, args=args, train_dataset=data).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(sel.trainable)
