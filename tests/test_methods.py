"""Method- and role-specific behaviour the conformance matrix does not pin down: which tensors each family's
roles name, how blocks are numbered, what the refusals say. The matrix itself is tests/test_conformance.py."""
import dataclasses
import re

import pytest
from transformers import (MistralConfig, MistralForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification,
                          T5Config, T5ForConditionalGeneration)

from selectune import select
from selectune.methods import METHODS, parse_method, register_method
from selectune.methods.layers import LayersOptions, block_paths
from selectune.methods.spec import REQUIRED, MethodSpec
from selectune.roles import parameter_roles
from tests.tiny_models import new_parameters, TINY_TEXT_MODELS, PlainNet, tiny_llama, tiny_t5


@pytest.mark.parametrize("family", list(TINY_TEXT_MODELS))
def test_every_parameter_of_a_known_family_has_a_role(family):
    roles = parameter_roles(TINY_TEXT_MODELS[family]())
    assert [n for n, r in roles.items() if r == "other"] == []


@pytest.mark.parametrize("family, expected", [
    ("distilbert", {"distilbert.transformer.layer.0.attention.q_lin.bias": "query",
                    "distilbert.transformer.layer.0.attention.k_lin.bias": "key",
                    "distilbert.transformer.layer.0.attention.out_lin.bias": "attn_out",
                    "distilbert.transformer.layer.0.ffn.lin1.bias": "mlp_in",
                    "distilbert.transformer.layer.0.ffn.lin2.bias": "mlp_out",
                    "distilbert.transformer.layer.0.sa_layer_norm.weight": "norm",
                    "distilbert.transformer.layer.1.output_layer_norm.bias": "norm",
                    "pre_classifier.weight": "head", "classifier.bias": "head"}),
    ("roberta", {"roberta.encoder.layer.1.attention.self.value.bias": "value",
                 "classifier.dense.weight": "head", "classifier.out_proj.bias": "head"}),
    ("gpt2", {"transformer.h.0.attn.c_attn.bias": "qkv", "transformer.h.1.mlp.c_proj.bias": "mlp_out", "score.weight": "head"}),
    ("llama", {"model.layers.0.self_attn.k_proj.weight": "key", "model.layers.1.mlp.gate_proj.weight": "mlp_in",
               "model.norm.weight": "norm"}),
    ("t5", {"transformer.encoder.block.0.layer.0.SelfAttention.q.weight": "query",
            "transformer.decoder.block.1.layer.1.EncDecAttention.k.weight": "key",
            "transformer.decoder.block.0.layer.1.EncDecAttention.o.weight": "attn_out",
            "transformer.encoder.block.1.layer.1.DenseReluDense.wi_0.weight": "mlp_in",
            "transformer.encoder.block.1.layer.1.DenseReluDense.wi_1.weight": "mlp_in",
            "transformer.decoder.block.0.layer.2.DenseReluDense.wo.weight": "mlp_out",
            "transformer.encoder.final_layer_norm.weight": "norm", "transformer.shared.weight": "embed",
            "classification_head.out_proj.bias": "head"}),
])
def test_family_tables_name_the_real_modules(family, expected):
    roles = parameter_roles(TINY_TEXT_MODELS[family]())
    assert {n: roles[n] for n in expected} == expected


def test_mistral_qwen2_and_t5_variants_use_their_tables():
    small = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, pad_token_id=0)
    mistral = parameter_roles(MistralForSequenceClassification(MistralConfig(**small)))
    assert mistral["model.layers.0.self_attn.q_proj.weight"] == "query" and "other" not in mistral.values()
    qwen = Qwen2ForSequenceClassification(Qwen2Config(**small))
    assert "other" not in parameter_roles(qwen).values()
    # Qwen2 has q/k/v biases: BitFit trains query and value, and skips the zero-gradient key bias.
    assert sorted(select(qwen, "bitfit", new_parameters=[]).trainable) == [
        "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.v_proj.bias"]
    config = T5Config(vocab_size=100, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4)
    config.tie_word_embeddings = False  # tied, lm_head is `shared`; T5Config's __init__ ignores this keyword here
    t5 = parameter_roles(T5ForConditionalGeneration(config))
    assert t5["encoder.block.0.layer.1.DenseReluDense.wi.weight"] == "mlp_in"  # ReLU T5: one wi
    assert t5["lm_head.weight"] == "head" and "other" not in t5.values()


def test_unknown_family_role_subset_is_refused_with_a_working_pattern():
    net = PlainNet()
    with pytest.raises(ValueError, match="not a known family") as err:
        select(net, "bitfit", new_parameters=new_parameters(net), roles="query+mlp_in")
    message = str(err.value)
    assert "conv, norm, hidden" in message
    name, options = parse_method(re.search(r"--method '([^']+)'", message).group(1))
    assert set(select(net, name, new_parameters=new_parameters(net), **options).trainable) == {"conv.weight", "conv.bias", "norm.weight", "norm.bias"}
    # Roles found by structure still work on any module.
    assert set(select(net, "bitfit", new_parameters=new_parameters(net), roles="norm+head").trainable) == {"norm.bias", "head.bias"}


def test_bitfit_refuses_models_without_body_biases():
    with pytest.raises(ValueError, match="no bias terms outside the task head.*layernorm"):
        select(tiny_llama(), "bitfit")
    with pytest.raises(ValueError, match="no bias terms with role"):
        select(tiny_llama(), "bitfit", roles="head")  # LLaMA's score has no bias
    # Asking for the head's biases only is a legitimate (tiny) selection.
    assert select(tiny_t5(), "bitfit", roles="head").trainable_parameters > 0


def test_layers_numbers_encoder_then_decoder_blocks():
    model = tiny_t5()
    assert block_paths(model) == [f"transformer.{s}.block.{i}" for s in ("encoder", "decoder") for i in (0, 1)]

    def blocks(**options):
        trained = select(model, "layers", new_parameters=new_parameters(model), **options).trainable
        return sorted({p for p in block_paths(model) if any(n.startswith(p + ".") for n in trained)})

    assert blocks(last=1) == ["transformer.decoder.block.1"]
    assert blocks(first=1) == ["transformer.encoder.block.0"]
    assert blocks(ranges="1-2") == ["transformer.decoder.block.0", "transformer.encoder.block.1"]
    assert not any(n.startswith("transformer.shared") for n in select(model, "layers", new_parameters=new_parameters(model), first=4).trainable)
    with pytest.raises(ValueError, match="out of range.*4 blocks"):
        select(model, "layers", new_parameters=new_parameters(model), ranges="3-4")
    with pytest.raises(ValueError, match="out of range"):
        select(model, "layers", new_parameters=new_parameters(model), last=5)


def test_layers_options_from_cli_text():
    assert parse_method("layers:ranges=0-1+5") == ("layers", {"ranges": "0-1+5"})
    assert LayersOptions(ranges=5).ranges == "5"  # the CLI parser turns "5" into an int
    with pytest.raises(ValueError, match="needs blocks"):
        METHODS["layers"].resolve_options({})
    with pytest.raises(ValueError, match="bad block range"):
        METHODS["layers"].resolve_options({"ranges": "3-1"})
    with pytest.raises(ValueError, match="Commas separate options"):
        parse_method("layers:ranges=0-1,5")


def test_pattern_fullmatches_whole_names():
    model = tiny_llama()
    with pytest.raises(ValueError, match="matches no parameter.*model.embed_tokens.weight"):
        select(model, "pattern", new_parameters=new_parameters(model), include="norm")  # a substring is not a match
    name, options = parse_method(r"pattern:include=.*norm\.weight|score\..*,exclude=model\.norm\..*")
    assert set(select(model, name, new_parameters=new_parameters(model), **options).trainable) == {
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight", "score.weight"}
    with pytest.raises(ValueError, match="not a valid regex"):
        select(model, "pattern", new_parameters=new_parameters(model), include="(")
    with pytest.raises(ValueError, match="removes all"):
        select(model, "pattern", new_parameters=new_parameters(model), include=r".*\.weight", exclude=".*")
    with pytest.raises(ValueError, match="needs option.*include"):
        select(model, "pattern", new_parameters=new_parameters(model))
    assert dict((n, d) for n, d, _ in METHODS["pattern"].option_docs())["include"] == REQUIRED


def test_layernorm_by_structure_and_role():
    assert set(select(PlainNet(), "layernorm").trainable) == {"norm.weight", "norm.bias"}
    llama = select(tiny_llama(), "layernorm", new_parameters=[])
    assert len(llama.trainable) == 5 and all(n.endswith("norm.weight") for n in llama.trainable)
    with pytest.raises(ValueError, match="no normalisation layers.*pattern:include="):
        select(tiny_llama().model.layers[0].mlp, "layernorm")


def test_register_method_validates_the_example():
    @dataclasses.dataclass
    class Needs:
        x: str = dataclasses.field(metadata={"help": "required"})

    def spec(**kw):
        return MethodSpec(name="needs_x", summary="", options=Needs, select=lambda model, x: [], default_lr=1e-3, **kw)

    with pytest.raises(ValueError, match="needs option"):
        register_method(spec())  # a required option needs an example
    with pytest.raises(ValueError, match="names another method"):
        register_method(spec(example="bitfit:x=1"))
    assert "needs_x" not in METHODS
