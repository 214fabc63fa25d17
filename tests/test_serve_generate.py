"""Causal-LM serving: greedy decoding of a mixed batch over bias deltas (one forward per step, per-example bias
gather, KV cache rows per request, finished rows leave) equals each delta merged alone; ``/v1/generate``,
``/v1/score`` and ``/v1/predict`` over real HTTP on loopback, with keys, limits and 4xx messages; the benchmark's
``--quick`` run. On the causal-lm task's tiny random LLaMA (bias-free, tied embeddings, a chat template)."""
from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from benchmarks.causal_lm_serve import LABELS, make_causal_deltas
from benchmarks.readme_table import causal_serve_table
from selectune.delta import read_delta
from selectune.models import merge
from selectune.serve import ServeConfig, create_app, hash_key
from selectune.serve.generation import greedy_decode
from selectune.serve.in_process import serve_in_thread
from selectune.serve.mixed_model import MixedBiasModel, MixedDelta, mixed_path_obstacle
from selectune.serve.paths import BoundModel
from selectune.tasks import CausalLM, InputError, InputLimits, TextClassification

ROOT = Path(__file__).resolve().parent.parent
# name -> (method, options): four bias deltas on different projections share the batch; `layernorm` (the RMSNorm
# scales, which no bias gather can express) takes the grouped path.
DELTAS = {"all": ("bitfit", {}), "mlp": ("bitfit", {"roles": ["mlp_in"]}), "attn": ("bitfit", {"roles": ["query", "value"]}),
          "all-b": ("bitfit", {}), "norms": ("layernorm", {})}
MIXED = ["all", "mlp", "attn", "all-b"]
PROMPTS = ["Review: great relief from pain. Positive or negative?", "Review: made me dizzy and sick. Positive or negative?",
           "Is this drug review positive, neutral or negative? did not help at all", "ok"]
KEYS = {"alpha": "alpha-key", "ops": "ops-admin-key"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("llmserve")
    CausalLM.write_example(root)
    base = str(root / "base")
    for i, (name, (method, options)) in enumerate(DELTAS.items()):
        make_causal_deltas(base, [root / "deltas" / name], seed=10 * i, scale=0.5 if method == "bitfit" else 0.3,
                           method=method, max_length=64, **options)
    task = CausalLM.load_base(base)
    return {"root": root, "base": base, "tokenizer": task.processor}


@pytest.fixture(scope="module")
def merged(setup):
    """Each delta merged alone into a plain folder, loaded with plain from_pretrained."""
    root = setup["root"]
    return {name: AutoModelForCausalLM.from_pretrained(merge(str(root / "deltas" / name), str(root / "merged" / name))).eval()
            for name in DELTAS}


def _alone(model, prompt_ids: list[int], max_new_tokens: int, eos: int | None):
    """(tokens, (steps, V) logits) of ``model`` generating greedily for one unpadded prompt."""
    prompt = torch.tensor([prompt_ids])
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt_ids):].tolist(), torch.cat(out.logits).float()


def _prompt_ids(setup, prompts):
    task = CausalLM(labels=LABELS, prompt_col="question")
    task.tokenizer = setup["tokenizer"]
    return task.prompt_ids(prompts)


def test_a_mixed_decoding_batch_equals_each_delta_merged_alone(setup, merged):
    root = setup["root"]
    base = CausalLM.load_base(setup["base"], with_tokenizer=False).model
    deltas = []
    for name in MIXED:
        tensors, config = read_delta(root / "deltas" / name)
        assert mixed_path_obstacle(base, tensors, config["selection"]["new_parameters"]) is None
        deltas.append(MixedDelta(name, tensors))
    mixed = MixedBiasModel(base)
    mixed.set_deltas(deltas)
    # 6 requests: prompts of different lengths (left padding), deltas repeated, budgets that end rows at different steps.
    asks = [(0, 0, 9), (1, 1, 4), (2, 2, 12), (3, 3, 1), (1, 0, 7), (0, 2, 12)]  # (prompt, delta row, max_new_tokens)
    ids = _prompt_ids(setup, PROMPTS)
    rows = torch.tensor([d for _, d, _ in asks])
    with mixed.using(rows) as model:
        got = greedy_decode(BoundModel(model, mixed.keep), [ids[p] for p, _, _ in asks], [n for _, _, n in asks],
                            [() for _ in asks], pad_id=0, keep_logits=True)
    for (p, d, n), generation in zip(asks, got):
        tokens, logits = _alone(merged[MIXED[d]], ids[p], n, eos=None)
        assert generation.token_ids == tokens and generation.finish_reason == "length"
        assert (torch.stack(generation.step_logits) - logits).abs().max() < 1e-4
    # The deltas really differ: one prompt gets different continuations (or at least different logits) from each.
    firsts = [_alone(merged[name], ids[0], 6, None) for name in MIXED]
    assert len({tuple(t) for t, _ in firsts}) > 1
    assert all((firsts[0][1] - other).abs().max() > 1e-2 for _, other in firsts[1:])
    mixed.remove()


def test_a_row_that_emits_its_stop_token_leaves_the_batch_and_the_others_go_on(setup, merged):
    ids = _prompt_ids(setup, PROMPTS[:3])
    model = merged["all"]
    # Stop on each row's own 3rd greedy token: rows end at different steps, the rest keep decoding correctly.
    plain = [_alone(model, p, 8, None)[0] for p in ids]
    stops = [{plain[0][2]}, set(), {plain[2][0]}]
    with torch.inference_mode():
        got = greedy_decode(BoundModel(model, lambda index: None), ids, [8, 8, 8], stops, pad_id=0)
    first_stop = [next(i for i, t in enumerate(plain[0]) if t in stops[0]), None, 0]
    assert got[0].token_ids == plain[0][: first_stop[0] + 1] and got[0].finish_reason == "stop"
    assert got[1].token_ids == plain[1] and got[1].finish_reason == "length"
    assert got[2].token_ids == plain[2][:1] and got[2].finish_reason == "stop"


def test_left_padded_decoding_of_a_gpt2_equals_each_prompt_alone():
    # Absolute position embeddings: each row's positions count its own tokens, so left padding changes nothing.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=60, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3)).eval()
    prompts = [[5, 9, 2, 44, 7, 1], [3], [8, 8, 30]]
    with torch.inference_mode():
        got = greedy_decode(BoundModel(model, lambda index: None), prompts, [6, 3, 8], [(), (), ()], pad_id=0, keep_logits=True)
    for prompt, n, generation in zip(prompts, [6, 3, 8], got):
        tokens, logits = _alone(model, prompt, n, eos=None)
        assert generation.token_ids == tokens and (torch.stack(generation.step_logits) - logits).abs().max() < 1e-4
    assert len({tuple(g.token_ids[:3]) for g in got}) > 1


def test_tasks_that_do_not_generate_refuse_generate_and_score_naming_predict():
    task = TextClassification(label_col="label", labels=["a", "b"], text_col="text")
    for call in (lambda: task.encode_generation("hi", None, 4, InputLimits()), lambda: task.encode_scoring("hi", None, None, InputLimits())):
        with pytest.raises(InputError, match="/v1/predict") as refused:
            call()
        assert refused.value.status == 400


@pytest.fixture(scope="module")
def server(setup):
    root = setup["root"]
    keys = root / "keys.json"
    keys.write_text(json.dumps({"keys": [
        {"sha256": hash_key(KEYS["alpha"]), "tenant": "alpha", "models": MIXED},
        {"sha256": hash_key(KEYS["ops"]), "tenant": "ops", "admin": True, "models": ["*"]}]}))
    # A wide batching window, so concurrent requests land in one batch.
    app = create_app(ServeConfig(base=setup["base"], deltas=str(root / "deltas"), keys=str(keys), max_batch_size=16,
                                 max_items=8, max_wait_ms=400, max_new_tokens=12, max_text_chars=300))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _post(client, route, body, who="ops"):
    return client.post(route, json=body, headers={"Authorization": f"Bearer {KEYS[who]}"})


def _histogram(text: str, name: str) -> tuple[float, float]:
    """(count, sum) of a Prometheus histogram in the /metrics text."""
    count = float(re.search(rf"^{name}_count (\S+)$", text, re.M).group(1))
    return count, float(re.search(rf"^{name}_sum (\S+)$", text, re.M).group(1))


def test_concurrent_generations_for_different_deltas_share_one_batch_and_equal_each_merged_alone(setup, merged, server):
    models = server.get("/v1/models", headers={"Authorization": f"Bearer {KEYS['ops']}"}).json()["models"]
    assert {m["name"]: m["path"] for m in models} == {**{n: "mixed" for n in MIXED}, "norms": "grouped"}
    before = _histogram(server.get("/metrics", headers={"Authorization": f"Bearer {KEYS['ops']}"}).text, "selectune_batch_deltas")
    asks = [(name, PROMPTS[i % len(PROMPTS)], 3 + 3 * (i % 3)) for i, name in enumerate([*DELTAS, "all", "mlp"])]
    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(lambda a: _post(server, "/v1/generate", {"model": a[0], "prompt": a[1], "max_new_tokens": a[2]}), asks))
    eos = setup["tokenizer"].eos_token_id
    for (name, prompt, n), answer in zip(asks, answers):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        tokens, _ = _alone(merged[name], _prompt_ids(setup, [prompt])[0], n, eos)
        assert body["token_ids"] == tokens, name
        assert body["tokens"] == len(tokens) and body["path"] == ("grouped" if name == "norms" else "mixed")
        assert body["text"] == setup["tokenizer"].decode(tokens, skip_special_tokens=True).strip()
        assert body["finish_reason"] == ("stop" if tokens[-1] == eos else "length")
        assert body["version"] == read_delta(setup["root"] / "deltas" / name)[1]["weights_sha256"]
    count, total = _histogram(server.get("/metrics", headers={"Authorization": f"Bearer {KEYS['ops']}"}).text, "selectune_batch_deltas")
    # The 6 mixed requests (4 deltas) ran in mixed passes holding several deltas at once, not one pass per delta.
    passes, deltas_seen = count - before[0], total - before[1]
    assert 1 <= passes < 4 and deltas_seen / passes > 1, (passes, deltas_seen)


def test_messages_read_as_the_prompt_through_the_chat_template(server):
    by_prompt = _post(server, "/v1/generate", {"model": "attn", "prompt": PROMPTS[0], "max_new_tokens": 5}).json()
    by_messages = _post(server, "/v1/generate", {"model": "attn", "max_new_tokens": 5,
                                                 "messages": [{"role": "user", "content": PROMPTS[0]}]}).json()
    assert by_messages["token_ids"] == by_prompt["token_ids"]


def test_score_gives_the_label_probabilities_of_constrained_scoring(setup, merged, server):
    for name in ("mlp", "norms"):
        for labels in (None, ["yes", "no"]):
            body = {"model": name, "prompt": PROMPTS[1], **({"labels": labels} if labels else {})}
            answer = _post(server, "/v1/score", body)
            assert answer.status_code == 200, answer.text
            scored = CausalLM(label_col="answer", labels=labels or LABELS, prompt_col="question", max_length=64)
            scored.tokenizer = setup["tokenizer"]
            with torch.no_grad():
                rows = scored.examples(pd.DataFrame({"question": [PROMPTS[1]]}), with_labels=False)
                expected = scored.outputs(None, scored.forward(merged[name], scored.collate(rows)))[0]
            probabilities = answer.json()["probabilities"]
            assert list(probabilities) == (labels or LABELS)
            assert [probabilities[k] for k in probabilities] == pytest.approx(expected.tolist(), abs=1e-5)
            assert answer.json()["label"] == (labels or LABELS)[int(expected.argmax())]
    # /v1/predict on a causal-lm delta: the same scoring over the delta's labels, one answer per prompt
    predicted = _post(server, "/v1/predict", {"model": "mlp", "inputs": [PROMPTS[1], PROMPTS[0]]}).json()["predictions"]
    assert predicted[0]["probabilities"] == pytest.approx(_post(server, "/v1/score", {"model": "mlp", "prompt": PROMPTS[1]}).json()["probabilities"], abs=1e-6)


@pytest.mark.parametrize("route, body, status, phrase", [
    ("/v1/generate", {"model": "all"}, 422, 'exactly one of "prompt"'),
    ("/v1/generate", {"model": "all", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 422, 'exactly one of "prompt"'),
    ("/v1/generate", {"model": "all", "prompt": "hi", "max_new_tokens": 13}, 422, "max_new_tokens must be a whole number from 1 to 12"),
    ("/v1/generate", {"model": "all", "prompt": "hi", "max_new_tokens": 0}, 422, "max_new_tokens"),
    ("/v1/generate", {"model": "all", "prompt": "hi", "max_new_tokens": "5"}, 422, "max_new_tokens"),
    ("/v1/generate", {"model": "all", "prompt": 7}, 422, "prompt is int; this model takes texts"),
    ("/v1/generate", {"model": "all", "prompt": "x" * 301}, 413, "the limit is 300"),
    ("/v1/generate", {"model": "all", "messages": [{"role": "robot", "content": "hi"}]}, 422, "messages[0] must be"),
    ("/v1/generate", {"model": "all", "messages": []}, 422, "messages must be a non-empty list"),
    ("/v1/generate", {"model": "all", "prompt": "hi", "temperature": 1}, 422, "temperature"),
    ("/v1/generate", {"model": "nope", "prompt": "hi"}, 404, "unknown model 'nope'"),
    ("/v1/score", {"model": "all", "prompt": "hi", "labels": ["yes"]}, 422, "labels must be a list of 2"),
    ("/v1/score", {"model": "all", "prompt": "hi", "labels": ["yes", "yes"]}, 422, "distinct"),
    ("/v1/score", {"model": "all", "prompt": "hi " * 90}, 413, "Shorten the prompt"),
    ("/v1/predict", {"model": "all", "inputs": [None]}, 422, "inputs[0] is null"),
])
def test_bad_requests_get_a_4xx_naming_the_field_and_the_fix(server, route, body, status, phrase):
    answer = _post(server, route, body)
    assert answer.status_code == status, answer.text
    assert phrase in answer.json()["detail"]


def test_keys_limit_generation_to_the_tenant_s_deltas(server):
    assert _post(server, "/v1/generate", {"model": "all", "prompt": "hi", "max_new_tokens": 2}, who="alpha").status_code == 200
    refused = _post(server, "/v1/generate", {"model": "norms", "prompt": "hi", "max_new_tokens": 2}, who="alpha")
    assert refused.status_code == 403 and "may not use model 'norms'" in refused.json()["detail"]
    assert server.post("/v1/generate", json={"model": "all", "prompt": "hi"}).status_code == 401


def test_the_benchmark_runs_end_to_end_on_a_tiny_llama(tmp_path):
    out = tmp_path / "causal_lm_serve.json"
    run = subprocess.run([sys.executable, "benchmarks/causal_lm_serve.py", "--quick", "--busy-ok", "test run, not for the README",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["configurations"]) == {"mixed", "merged", "merged_hf_generate", "lora_mixed"}
    assert result["mixed_delta0_tokens_equal_merged"] is True
    assert all(c["tokens_per_s"] > 0 for c in result["configurations"].values())
    assert result["configurations"]["merged"]["ratio_vs_merged"] == 1.0 and "random-valued biases" in result["synthetic"]
    assert result["machine_load"]["at_start"]["busy_ok"] == "test run, not for the README"
    # The README's table is rendered from this JSON (benchmarks/readme_table.py), each configuration and goal on a row.
    table = causal_serve_table(result)
    merged = result["configurations"]["merged"]["tokens_per_s"]
    assert f"| merged model alone (same decoder) | {merged:.1f} | 1.00× |" in table
    assert "| PEFT LoRA r=8, 16 adapters (generate) |" in table and "(busy: test run, not for the README)" in table
    assert table.count("| yes |") + table.count("| no |") == 2 and "merged model's tokens: yes." in table
