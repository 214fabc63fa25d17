"""text-generation (``--task generation``): free-form responses and plain language modelling on the tiny LLaMA; the rule
that tells a label set from free text; and the task a causal-LM folder gets in ``inspect``, ``serve`` and ``compare``."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForSequenceClassification

from selectune.cli import inspect
from selectune.compare.contenders import parse_contenders
from selectune.data import DataError
from selectune.evaluate.run import evaluate, predict
from selectune.models import load_with_delta
from selectune.tasks import CausalLM, TextClassification, TextGeneration, task_class_for_model_dir, task_from_options
from selectune.train.run import train


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation")
    return folder, TextGeneration.write_example(folder)


def _manual_perplexity(model, pairs: list[tuple[list[int], list[int]]]) -> float:
    """exp(mean NLL over all target tokens), one row at a time: ids = prompt + target, targets scored after the prompt."""
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for prompt, target in pairs:
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + target])).logits[0].float(), -1)
            nll -= sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))
            tokens += len(target)
    return math.exp(nll / tokens)


def test_the_task_option_picks_text_generation_for_prompts_and_for_plain_text():
    free = task_from_options(label_col="label", prompt_col="q", response_col="a", task="generation", max_length=64)
    assert type(free) is TextGeneration and (free.prompt_col, free.label_col, free.labels) == ("q", "a", None)
    plain = task_from_options(label_col="label", text_col="notes", task="generation")
    assert type(plain) is TextGeneration and (plain.prompt_col, plain.label_col) == (None, "notes")
    assert type(task_from_options(label_col="label", text_col="notes")) is TextClassification  # classification stays the default
    assert type(task_from_options(label_col="label", prompt_col="q", response_col="a")) is CausalLM
    assert task_from_options(label_col="x", **plain.options()).metadata() == plain.metadata()  # `update` retrains it as it was


def test_free_form_responses_train_with_unseen_test_responses_and_report_perplexity(example):
    folder, ex = example
    train_answers = set(pd.read_csv(ex.train).answer)
    assert not set(pd.read_csv(ex.test).answer) & train_answers  # no test response occurs in training
    summary = train(ex.train, validation=ex.validation, test=ex.test, out=str(folder / "run"), epochs=2, seed=0, checkpoint=False,
                    progress=False, **ex.train_options)
    assert set(summary["test"]) == {"n", "loss", "perplexity"} and summary["majority_baseline"] is None
    assert "perplexity" in summary["best_validation"]
    model, task, _ = load_with_delta(str(folder / "run" / "delta"))
    model.eval()
    frame = pd.read_csv(ex.test)
    expected = _manual_perplexity(model, list(zip(task.prompt_ids(frame.question.tolist()), task.response_ids(frame.answer.tolist()))))
    assert evaluate(ex.test, delta=str(folder / "run"))["metrics"]["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert summary["test"]["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_the_same_data_as_a_label_set_is_refused_naming_the_fix(example, tmp_path):
    folder, ex = example
    with pytest.raises(DataError, match=r"never occur in training.*--task generation"):
        train(ex.train, validation=ex.validation, test=ex.test, out=str(tmp_path / "run"), epochs=1, checkpoint=False, progress=False,
              **{**ex.train_options, "task": "classification"})
    many = pd.DataFrame({"question": [f"Question {i}?" for i in range(64)], "answer": [f"answer {i}" for i in range(64)]})
    many.to_csv(tmp_path / "many.csv", index=False)  # 64 distinct responses > MAX_LABELS
    many.iloc[:10].assign(question=lambda f: "Other " + f.question).to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(DataError, match=r"hold 64 distinct values, more than the 50 .*--task generation"):
        train(str(tmp_path / "many.csv"), validation=str(tmp_path / "val.csv"), out=str(tmp_path / "run2"), epochs=1, checkpoint=False,
              progress=False, **{**ex.train_options, "task": "classification"})


def test_predict_writes_the_greedy_answer_as_the_prediction(example, tmp_path):
    folder, ex = example
    if not (folder / "run").exists():
        train(ex.train, validation=ex.validation, test=ex.test, out=str(folder / "run"), epochs=2, seed=0, checkpoint=False,
              progress=False, **ex.train_options)
    prompts_only = pd.read_csv(ex.test)[["question"]].iloc[:3]
    prompts_only.to_csv(tmp_path / "prompts.csv", index=False)
    out = pd.read_csv(predict(str(tmp_path / "prompts.csv"), out=str(tmp_path / "p.csv"), delta=str(folder / "run"), max_new_tokens=4))
    assert list(out.columns) == ["question", "prediction"]
    model, task, _ = load_with_delta(str(folder / "run" / "delta"))
    model.eval()
    tok = task.tokenizer
    for question, answer in zip(out.question, out.prediction.fillna("")):
        ids = task.prompt_ids([question])[0]
        with torch.no_grad():
            generated = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=task.pad_id,
                                       eos_token_id=tok.eos_token_id)
        assert answer == tok.decode(generated[0, len(ids):], skip_special_tokens=True).strip()


def test_plain_language_modelling_puts_the_loss_on_every_token_after_the_first(example, tmp_path):
    folder, ex = example
    summary = train(ex.train, validation=ex.validation, test=ex.test, out=str(tmp_path / "plain"), epochs=1, seed=0, checkpoint=False,
                    progress=False, model=ex.train_options["model"], text_col="answer", task="generation", max_length=48, batch_size=8)
    model, task, _ = load_with_delta(str(tmp_path / "plain" / "delta"))
    model.eval()
    assert (task.prompt_col, task.label_col) == (None, "answer")
    tok = AutoTokenizer.from_pretrained(ex.train_options["model"])
    texts = pd.read_csv(ex.test).answer.tolist()
    pairs = []
    for text in texts:
        ids = tok(text)["input_ids"] + [tok.eos_token_id]  # [CLS] text [SEP] then end of sequence: all but the first are targets
        pairs.append((ids[:1], ids[1:]))
    rows = task.examples(pd.read_csv(ex.test))
    assert [r["prompt_ids"] + r["response_ids"] for r in rows] == [p + t for p, t in pairs]
    assert summary["test"]["perplexity"] == pytest.approx(_manual_perplexity(model, pairs), rel=1e-4)


def test_a_causal_lm_folder_picks_causal_lm_and_a_sequence_classifier_of_the_same_family_does_not(example, tmp_path):
    _, ex = example
    assert task_class_for_model_dir(ex.train_options["model"]) is CausalLM  # LlamaForCausalLM
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)).save_pretrained(tmp_path / "gpt2")
    assert task_class_for_model_dir(tmp_path / "gpt2") is CausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, pad_token_id=0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "llama-cls")
    assert task_class_for_model_dir(tmp_path / "llama-cls") is TextClassification


def test_inspect_on_a_llama_folder_shows_bitfit_with_the_inserted_biases(example):
    _, ex = example
    shown = inspect(ex.train_options["model"], method="bitfit")
    assert shown["options"]["add_missing_biases"] is True and shown["new_parameters"] == []
    assert "model.layers.0.self_attn.q_proj.bias" in shown["inserted_parameters"]
    assert shown["trainable_parameters"] == 512  # 2 layers x (q, v, o: 32; gate, up: 64; down: 32); the key bias left out
    assert AutoModelForCausalLM.from_pretrained(ex.train_options["model"]).model.layers[0].self_attn.q_proj.bias is None


def test_compare_on_a_causal_lm_gets_the_bias_insertion_default_unless_told_otherwise():
    bitfit, off, lora = parse_contenders("bitfit;bitfit:add_missing_biases=false;lora", CausalLM.method_defaults)
    assert bitfit.options["add_missing_biases"] is True and off.options["add_missing_biases"] is False
    assert "add_missing_biases" not in lora.options
    assert parse_contenders("bitfit")[0].options["add_missing_biases"] is False  # other tasks: unchanged


def test_serve_generates_for_free_text_deltas_and_refuses_label_scoring(example, tmp_path):
    """/v1/generate answers a free-form delta as `predict` does, and continues plain text (no chat template) as the
    delta loaded alone does; /v1/score and /v1/predict, which need a label set, answer 400 naming /v1/generate."""
    import shutil

    import httpx

    from selectune.serve import ServeConfig, create_app
    from selectune.serve.in_process import serve_in_thread

    folder, ex = example
    if not (folder / "run").exists():
        train(ex.train, validation=ex.validation, test=ex.test, out=str(folder / "run"), epochs=2, seed=0, checkpoint=False,
              progress=False, **ex.train_options)
    train(ex.train, validation=ex.validation, out=str(tmp_path / "plain"), epochs=1, seed=0, checkpoint=False, progress=False,
          model=ex.train_options["model"], text_col="answer", task="generation", max_length=48, batch_size=8)
    shutil.copytree(folder / "run" / "delta", tmp_path / "deltas" / "free")
    shutil.copytree(tmp_path / "plain" / "delta", tmp_path / "deltas" / "plain")
    question = pd.read_csv(ex.test).question.iloc[0]
    pd.DataFrame({"question": [question]}).to_csv(tmp_path / "q.csv", index=False)
    expected = pd.read_csv(predict(str(tmp_path / "q.csv"), out=str(tmp_path / "p.csv"), delta=str(folder / "run"), max_new_tokens=4))
    model, task, _ = load_with_delta(str(tmp_path / "plain" / "delta"))
    model.eval()
    ids = task.text_ids(["The patient"])[0]
    with torch.no_grad():
        continued = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=task.pad_id,
                                   eos_token_id=task.tokenizer.eos_token_id)[0, len(ids):]
    app = create_app(ServeConfig(base=ex.train_options["model"], deltas=str(tmp_path / "deltas"), max_new_tokens=8))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        free = client.post("/v1/generate", json={"model": "free", "prompt": question, "max_new_tokens": 4})
        assert free.status_code == 200, free.text
        assert free.json()["text"] == ("" if pd.isna(expected.prediction[0]) else expected.prediction[0])
        plain = client.post("/v1/generate", json={"model": "plain", "prompt": "The patient", "max_new_tokens": 4})
        assert plain.status_code == 200, plain.text
        assert plain.json()["token_ids"] == continued.tolist()
        refused = client.post("/v1/generate", json={"model": "plain", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 422 and "send \"prompt\"" in refused.json()["detail"]
        for route, body in (("/v1/score", {"model": "free", "prompt": question}), ("/v1/predict", {"model": "free", "inputs": [question]})):
            answer = client.post(route, json=body)
            assert answer.status_code == 400 and "ask POST /v1/generate" in answer.json()["detail"], (route, answer.text)
