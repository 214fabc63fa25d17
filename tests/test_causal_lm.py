"""causal-lm: encoding and truncation, constrained label scoring, perplexity, greedy generation, BitFit's inserted biases
and the merged folder under plain ``AutoModelForCausalLM.from_pretrained``, on the task's own tiny LLaMA example."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selectune.cli import build_parser
from selectune.config import ColumnsConfig
from selectune.data import DataError
from selectune.delta import read_delta
from selectune.evaluate.run import evaluate, predict
from selectune.models import load_with_delta, merge
from selectune.tasks import CausalLM, task_from_options
from selectune.tasks.causal_lm import IGNORE
from selectune.train.run import train


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    folder = tmp_path_factory.mktemp("causal")
    return folder, CausalLM.write_example(folder)


@pytest.fixture(scope="module")
def run(example):
    folder, ex = example
    summary = train(ex.train, validation=ex.validation, test=ex.test, out=str(folder / "run"), epochs=2, seed=0,
                    checkpoint=False, progress=False, **ex.train_options)
    return folder / "run", summary


def _task(ex, max_length: int = 48) -> CausalLM:
    task = CausalLM(label_col="answer", labels=["negative", "positive"], prompt_col="question", max_length=max_length)
    task.tokenizer = AutoTokenizer.from_pretrained(ex.train_options["model"])
    return task


def test_the_options_pick_causal_lm_and_the_columns_are_checked():
    task = task_from_options(label_col="label", prompt_col="q", response_col="a", max_length=64)
    assert type(task) is CausalLM and (task.prompt_col, task.label_col, task.max_length) == ("q", "a", 64)
    with pytest.raises(ValueError, match="--response-col"):
        ColumnsConfig(prompt_col="q").validate()
    with pytest.raises(ValueError, match="not both"):
        ColumnsConfig(prompt_col="q", response_col="a", text_col="t").validate()
    flags = build_parser().parse_args(["train", "x.csv", "--out", "o", "--model", "smollm2", "--prompt-col", "q", "--response-col", "a"])
    assert (flags.prompt_col, flags.response_col) == ("q", "a")
    assert build_parser().parse_args(["predict", "x.csv", "--out", "o.csv", "--max-new-tokens", "7"]).max_new_tokens == 7


def test_the_prompt_goes_through_the_chat_template_and_only_response_tokens_carry_loss(example):
    _, ex = example
    task = _task(ex)
    frame = pd.read_csv(ex.test).iloc[:3]
    rows = task.examples(frame)
    text = task.tokenizer.decode(rows[0]["prompt_ids"])
    assert text.startswith("< user >") and text.rstrip().endswith("< assistant >")  # the example's chat template, tokenised
    assert task.tokenizer.decode(rows[0]["response_ids"]) == f"{frame.answer[0]} [SEP]"  # the answer, then end of sequence
    batch = task.collate(rows)
    for i, row in enumerate(rows):
        p, r = len(row["prompt_ids"]), len(row["response_ids"])
        targets = batch["lm_targets"][i].tolist()
        assert targets[:p] == [IGNORE] * p and targets[p:p + r] == row["response_ids"] and set(targets[p + r:]) <= {IGNORE}
        assert batch["attention_mask"][i].sum() == p + r and batch["prompt_lengths"][i] == p
    assert batch["labels"].tolist() == [task.labels.index(a) for a in frame.answer]


def test_truncation_keeps_the_prompt_and_cuts_the_response_tail(example):
    _, ex = example
    frame = pd.read_csv(ex.test).iloc[:1]
    prompt = len(_task(ex).prompt_ids(frame.question.tolist())[0])
    row = _task(ex, max_length=prompt + 1).examples(frame)[0]
    assert len(row["prompt_ids"]) == prompt and len(row["response_ids"]) == 1  # one response token left, never none


def test_a_prompt_that_fills_max_length_is_refused_naming_its_row(example, tmp_path):
    folder, ex = example
    frame = pd.read_csv(ex.train)
    frame.loc[5, "question"] = "very long " * 40 + frame.loc[5, "question"]
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"1 prompt\(s\) fill --max-length 48 .*row 5 \(\d+ tokens\).*Raise --max-length"):
        train(str(tmp_path / "train.csv"), validation=ex.validation, out=str(tmp_path / "run"), epochs=1, checkpoint=False,
              progress=False, **ex.train_options)
    assert not (tmp_path / "run").exists()


def test_constrained_scores_are_the_summed_label_token_log_likelihoods(example):
    _, ex = example
    task = _task(ex)
    model = AutoModelForCausalLM.from_pretrained(ex.train_options["model"]).eval()
    frame = pd.read_csv(ex.test).iloc[:3]
    with torch.no_grad():
        scores = task.forward(model, task.collate(task.examples(frame, with_labels=False)))  # (3, 2)
        for i, prompt in enumerate(task.prompt_ids(frame.question.tolist())):
            for c, label in enumerate(task.labels):
                answer = task.response_ids([label])[0]
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)
                expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer))
                assert float(scores[i, c]) == pytest.approx(expected, abs=1e-4)
    assert task.outputs(model, scores).sum(1) == pytest.approx([1.0, 1.0, 1.0])


def test_bitfit_inserts_the_missing_biases_by_default_and_trains_them(run):
    folder, summary = run
    tensors, config = read_delta(folder / "delta")
    assert config["selection"]["options"]["add_missing_biases"] is True
    assert "model.layers.0.self_attn.q_proj.bias" in config["selection"]["inserted_parameters"]
    assert "model.layers.0.mlp.down_proj.bias" in tensors and float(tensors["model.layers.0.mlp.down_proj.bias"].abs().max()) > 0
    assert "model.layers.0.self_attn.k_proj.bias" not in tensors  # the key bias has zero gradient: skipped
    assert set(summary["test"]) >= {"accuracy", "macro_f1", "auroc", "loss", "perplexity"}
    assert summary["test"]["perplexity"] == pytest.approx(math.exp(summary["test"]["loss"]))


def test_turning_bias_insertion_off_stops_with_the_one_line_fix(example, tmp_path):
    _, ex = example
    with pytest.raises(ValueError, match="add_missing_biases=true inserts zero biases"):
        train(ex.train, validation=ex.validation, out=str(tmp_path / "run"), method="bitfit:add_missing_biases=false", epochs=1,
              checkpoint=False, progress=False, **ex.train_options)


def test_merged_folder_loads_with_plain_from_pretrained_and_generates_the_same(example, run, tmp_path):
    _, ex = example
    merged = merge(str(run[0]), str(tmp_path / "merged"))
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["attention_bias"] is True and config["mlp_bias"] is True
    on_base, _, _ = load_with_delta(str(run[0] / "delta"))
    on_base.eval()
    task = _task(ex)
    prompt = torch.tensor(task.prompt_ids(pd.read_csv(ex.test).question.tolist()[:1]))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=prompt).logits, on_base(input_ids=prompt).logits, atol=1e-5)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=task.pad_id, eos_token_id=None)
        assert plain.generate(input_ids=prompt, **kw).tolist() == on_base.generate(input_ids=prompt, **kw).tolist()


def test_evaluate_gives_the_perplexity_of_the_response_tokens(example, run):
    _, ex = example
    metrics = evaluate(ex.test, delta=str(run[0]))["metrics"]
    model, task, _ = load_with_delta(str(run[0] / "delta"))
    model.eval()
    frame = pd.read_csv(ex.test)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for prompt, answer in zip(task.prompt_ids(frame.question.tolist()), task.response_ids(frame.answer.tolist())):
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)
            nll -= sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer))
            tokens += len(answer)
    # one batch holds every test row, so the mean loss is the mean over all response tokens
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert metrics["accuracy"] == run[1]["test"]["accuracy"]


def test_predict_generates_greedily_up_to_max_new_tokens(example, run, tmp_path):
    _, ex = example
    short = pd.read_csv(predict(ex.test, out=str(tmp_path / "1.csv"), delta=str(run[0]), max_new_tokens=1))
    longer = pd.read_csv(predict(ex.test, out=str(tmp_path / "4.csv"), delta=str(run[0]), max_new_tokens=4))
    assert list(longer.columns) == ["question", "answer", "prediction", "prob_negative", "prob_positive", "generated"]
    tok = AutoTokenizer.from_pretrained(ex.train_options["model"])
    for one, four in zip(short.generated.fillna(""), longer.generated.fillna("")):
        assert len(tok(one, add_special_tokens=False)["input_ids"]) <= 1 and four.startswith(one)
    assert longer.generated.fillna("").str.len().sum() > short.generated.fillna("").str.len().sum()


def test_gate_judges_perplexity_with_a_bootstrap_ci(example, run, tmp_path):
    from selectune.evaluate.gate import gate

    _, ex = example
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("criteria:\n  - {metric: perplexity, rule: max_worsening, value: 0.0}\n"
                        "  - {metric: accuracy, rule: non_inferior, margin: 0.5}\n")
    base = tmp_path / "base_run"
    train(ex.train, validation=ex.validation, out=str(base), epochs=1, seed=0, lr=1e-6, checkpoint=False, progress=False,
          **ex.train_options)
    result = gate(base=str(base), update=str(run[0]), criteria=str(criteria), test=ex.test, out=str(tmp_path / "gate"), resamples=200)
    evaluation = json.loads((tmp_path / "gate" / "evaluation.json").read_text())
    update = evaluation["models"]["update"]["metrics"]["perplexity"]
    model, task, _ = load_with_delta(str(run[0] / "delta"))
    rows = task.row_losses(model, pd.read_csv(ex.test), 7)  # (N, 2), batches of 7 rows
    assert rows.shape == (24, 2) and (rows[:, 1] == [len(r) for r in task.response_ids(pd.read_csv(ex.test).answer.tolist())]).all()
    assert update["value"] == pytest.approx(math.exp(rows[:, 0].sum() / rows[:, 1].sum()), rel=1e-5)
    assert update["ci_low"] < update["value"] < update["ci_high"]
    difference = evaluation["paired_differences"]["perplexity"]
    assert difference["value"] == pytest.approx(update["value"] - evaluation["models"]["base"]["metrics"]["perplexity"]["value"])
    row = result["rows"][0]
    assert row["passed"] == (difference["value"] <= 0.0)  # two epochs at 1e-3 vs one at 1e-6: judged on the point difference


def test_a_perplexity_criterion_is_refused_for_a_task_without_it(tmp_path):
    from selectune.evaluate.criteria import CriteriaError, check_applicable, load_criteria

    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("criteria:\n  - {metric: perplexity, rule: max_worsening, value: 0.5}\n")
    with pytest.raises(CriteriaError, match="uses perplexity, which a classification model does not have"):
        check_applicable(load_criteria(str(criteria)), classification=True, group_cols=[])
    check_applicable(load_criteria(str(criteria)), classification=True, group_cols=[], loss_metrics=["perplexity"])


def test_registry_add_and_update_retrain_a_causal_lm_version(example, run, tmp_path):
    from selectune.cli import main
    from selectune.registry import resolve_version

    _, ex = example
    assert main(["registry", "add", str(run[0]), "--name", "reviews-lm", "--registry", str(tmp_path / "reg")]) == 0
    assert main(["update", "--from", "reviews-lm@1", "--data", ex.train, "--test", ex.test, "--epochs", "1", "--batch-size", "8",
                 "--out", str(tmp_path / "v2"), "--registry", str(tmp_path / "reg"), "--no-progress"]) == 0
    version, delta, base = resolve_version(tmp_path / "reg", "reviews-lm@2")
    _, config = read_delta(delta)
    assert version.parent == 1 and config["metadata"]["task"] == read_delta(run[0] / "delta")[1]["metadata"]["task"]
    recorded = json.loads((tmp_path / "v2" / "run" / "metrics.json").read_text())["test"]
    again = evaluate(ex.test, delta=str(delta), model=base)["metrics"]
    assert again["accuracy"] == recorded["accuracy"] and again["perplexity"] == pytest.approx(recorded["perplexity"], rel=1e-5)


def test_gate_saves_and_report_shows_base_and_update_answers_to_the_first_test_prompts(example, run, tmp_path):
    from selectune.evaluate.gate import gate
    from selectune.report.build import report
    from selectune.tasks.causal_lm import SAMPLE_NEW_TOKENS, SAMPLE_PROMPTS

    folder, ex = example
    test = pd.read_csv(ex.test)
    test.loc[1, "question"] = "Review from jane.doe@example.org, MRN: 00482913: " + test.loc[1, "question"]
    test.to_csv(tmp_path / "test.csv", index=False)
    base = tmp_path / "base_run"
    train(ex.train, validation=ex.validation, out=str(base), epochs=1, seed=0, lr=1e-6, checkpoint=False, progress=False,
          **ex.train_options)
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("criteria:\n  - {metric: perplexity, rule: max_worsening, value: 100.0}\n")
    gate(base=str(base), update=str(run[0]), criteria=str(criteria), test=str(tmp_path / "test.csv"), out=str(tmp_path / "gate"),
         resamples=50)
    saved = json.loads((tmp_path / "gate" / "answers.json").read_text())
    assert [a["prompt"] for a in saved["update"]] == [a["prompt"] for a in saved["base"]] == test.question.tolist()[:SAMPLE_PROMPTS]
    for role, source in (("base", base), ("update", run[0])):
        model, task, _ = load_with_delta(str(source / "delta"))
        expected = task.generate_columns(model, test.iloc[:SAMPLE_PROMPTS], SAMPLE_NEW_TOKENS)["generated"]
        assert [a["answer"] for a in saved[role]] == expected, role
    report(str(run[0]), out=str(tmp_path / "report"), gate=str(tmp_path / "gate"))
    markdown = (tmp_path / "report" / "report.md").read_text()
    section = markdown.split("Answers to fixed prompts", 1)[1]
    assert f"The first {SAMPLE_PROMPTS} prompts of the test file" in section
    assert "jane.doe@example.org" not in markdown and "00482913" not in markdown
    assert "| 2 | Review from \\[email\\], \\[id_number\\]: Review: terrible headaches after (review 201)." in section  # replaced by type
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Answers to fixed prompts" in html and "jane.doe@example.org" not in html


def test_constrained_scores_with_ragged_prompts_and_a_label_cut_by_max_length(example):
    """The shared prompt cache (left-padded prompts) scores each row as alone; a label past --max-length counts its first tokens only."""
    _, ex = example
    frame = pd.read_csv(ex.test).iloc[:3].copy()
    frame.loc[1, "question"] = "A much longer question with many more words in it: " + frame.loc[1, "question"]
    task = _task(ex)
    lengths = [len(p) for p in task.prompt_ids(frame.question.tolist())]
    task.max_length = lengths[1] + 1  # row 1: one answer token fits (the label, not its end of sequence)
    model = AutoModelForCausalLM.from_pretrained(ex.train_options["model"]).eval()
    with torch.no_grad():
        scores = task.forward(model, task.collate(task.examples(frame, with_labels=False)))
        for i, prompt in enumerate(task.prompt_ids(frame.question.tolist())):
            for c, label in enumerate(task.labels):
                answer = task.response_ids([label])[0][: task.max_length - len(prompt)]
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)
                expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer))
                assert float(scores[i, c]) == pytest.approx(expected, abs=1e-4), (i, c)
    assert len(set(lengths)) > 1 and len(task.response_ids(["negative"])[0]) > 1
