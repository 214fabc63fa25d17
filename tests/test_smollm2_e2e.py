"""End to end on the real SmolLM2-135M-Instruct (`--model smollm2`, converted once from the bundled GGUF) and the real
drug reviews asked as questions: the README's causal-lm commands on a few rows (two training steps)."""
import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selectune.cli import build_parser, main
from selectune.data import export_bundled
from selectune.delta import read_delta
from selectune.models import resolve_model

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_causal_commands() -> list[list[str]]:
    """The `selectune` commands of the README's causal-lm section, as argv lists."""
    section = README.split("## Causal LM", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0].replace("\\\n", " ")
    return [shlex.split(line.split("  #")[0])[1:] for line in block.splitlines() if line.startswith("selectune ")]


def test_the_readme_section_shows_every_verb_and_each_parses():
    commands = readme_causal_commands()
    assert [c[0] for c in commands] == ["data", "train", "evaluate", "predict", "merge"]
    for argv in commands:
        build_parser().parse_args(argv)


def test_smollm2_is_a_plain_bias_free_llama_with_a_chat_template():
    path = resolve_model("smollm2")
    config = json.loads((Path(path) / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True and "quantization_config" not in config
    assert config.get("attention_bias") is False and config.get("mlp_bias") is False
    assert AutoTokenizer.from_pretrained(path).chat_template


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The README's files cut to a few rows of two classes (the same commands, smaller)."""
    out = tmp_path_factory.mktemp("smollm2")
    files = export_bundled("drug-reviews-questions", str(out / "dq"))
    train = pd.read_csv(files["train"])
    train = train[train.rating != "neutral"].groupby("rating").head(5)
    train.iloc[:8].to_csv(out / "train.csv", index=False)
    train.iloc[8:].to_csv(out / "validation.csv", index=False)
    test = pd.read_csv(files["test"])
    test[test.rating != "neutral"].groupby("rating").head(1).to_csv(out / "test.csv", index=False)
    return out


def run_readme(small, verb: str, **paths: str) -> list[str]:
    """The README's command for VERB with its files swapped for the small ones (and smaller settings)."""
    argv = next(c for c in readme_causal_commands() if c[0] == verb)
    swap = {"data/dq/train.csv": str(small / "train.csv"), "data/dq/test.csv": str(small / "test.csv"), **paths}
    argv = [swap.get(a, a) for a in argv]
    for flag, value in (("--batch-size", "4"), ("--max-length", "256")):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    return argv


def test_train_evaluate_predict_merge_on_smollm2(small, capsys):
    run = str(small / "run")
    swap = {"runs/smollm2-bitfit": run, "preds.csv": str(small / "preds.csv"), "merged/smollm2-bitfit": str(small / "merged")}
    train = run_readme(small, "train", **swap) + ["--validation", str(small / "validation.csv"), "--no-progress"]
    assert main(train) == 0
    tensors, config = read_delta(Path(run) / "delta")
    assert config["selection"]["options"]["add_missing_biases"] is True  # bias-free LLaMA: zero biases inserted and trained
    assert "model.layers.0.self_attn.q_proj.bias" in tensors and (Path(run) / "delta" / "delta.safetensors").stat().st_size < 1_000_000
    metrics = json.loads((Path(run) / "metrics.json").read_text())["test"]
    assert metrics["n"] == 2 and metrics["perplexity"] > 1.0
    capsys.readouterr()
    assert main(run_readme(small, "evaluate", **swap)) == 0
    evaluated = json.loads(capsys.readouterr().out)["metrics"]
    assert evaluated["accuracy"] == metrics["accuracy"] and evaluated["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-4)
    assert main(run_readme(small, "predict", **swap) + ["--max-new-tokens", "3"]) == 0
    predicted = pd.read_csv(small / "preds.csv")
    assert {"prediction", "prob_negative", "prob_positive", "generated"} <= set(predicted.columns)
    assert main(run_readme(small, "merge", **swap)) == 0
    # the merged folder loads with plain transformers and greedily answers as predict did
    plain = AutoModelForCausalLM.from_pretrained(small / "merged").eval()
    tok = AutoTokenizer.from_pretrained(small / "merged")
    text = tok.apply_chat_template([{"role": "user", "content": predicted.question[0]}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == str(predicted.generated[0])
