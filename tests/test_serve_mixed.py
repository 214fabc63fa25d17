"""The mixed-batch model on every tiny family (each example equals its delta loaded alone), which deltas take
which path, the dynamic batcher's batching and ordering, and the key file."""
import json
import threading
import time

import pytest
import torch

from selectune import load_delta, read_delta, save_delta, select
from selectune.serve.batcher import Control, DynamicBatcher, Job
from selectune.serve.mixed_model import MixedBiasModel, MixedDelta, mixed_path_obstacle
from selectune.serve.tenants import KeyFileError, KeyRing, hash_key
from tests.tiny_models import new_parameters, TINY_TEXT_MODELS, tiny_tabular_batch, tiny_tabular_mlp, tiny_text_batch

# family -> [(method, options, num_labels)]: what each family's mixed batch holds.
MIXED_CASES = {
    "bert": [("bitfit", {}, 3), ("bitfit", {}, 2), ("layernorm", {}, 3), ("head", {}, 3), ("bitfit", {"head_weights": True}, 3)],
    "roberta": [("bitfit", {}, 3), ("layernorm", {}, 3), ("head", {}, 2)],
    "distilbert": [("bitfit", {}, 3), ("layernorm", {}, 3), ("bitfit", {}, 2)],
    "llama": [("bitfit", {"add_missing_biases": True}, 3), ("head", {}, 3), ("bitfit", {"add_missing_biases": True, "roles": ["mlp_in"]}, 3)],
}


def _perturbed_delta(build, method, options, num_labels, seed, out):
    model = build(num_labels=num_labels)
    selection = select(model, method, new_parameters=new_parameters(model), **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    save_delta(model, selection, out)
    return out


def _alone(build, path, num_labels, inputs):
    model = build(num_labels=num_labels).eval()
    load_delta(model, path)
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", sorted(MIXED_CASES))
def test_each_example_of_a_mixed_batch_equals_its_delta_alone(family, tmp_path):
    build = TINY_TEXT_MODELS[family]
    paths, deltas = [], []
    for i, (method, options, labels) in enumerate(MIXED_CASES[family]):
        path = _perturbed_delta(build, method, options, labels, seed=i, out=tmp_path / str(i))
        tensors, config = read_delta(path)
        assert mixed_path_obstacle(build(), tensors, config["selection"]["new_parameters"]) is None
        paths.append((path, labels))
        deltas.append(MixedDelta(str(i), tensors, config["selection"]["new_parameters"]))
    base = build()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    mixed = MixedBiasModel(base)
    mixed.set_deltas(deltas)
    batch = tiny_text_batch(base, batch=8, seed=5)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    rows = torch.tensor([0, 1, 2, 0, len(deltas) - 1, 2, 1, 0])
    logits = mixed.forward(rows, **inputs)
    for i, (path, labels) in enumerate(paths):
        picked = (rows == i).nonzero().squeeze(1)
        if len(picked) == 0:
            continue
        alone = _alone(build, path, labels, inputs)[picked]
        assert torch.allclose(logits[picked, :labels], alone, atol=1e-5), (family, i, (logits[picked, :labels] - alone).abs().max())
    # The base itself never changed, and removing the gathered forwards restores plain outputs.
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    mixed.remove()
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, build()(**inputs).logits)


def test_tabular_mlp_mixes_bitfit_and_layernorm_deltas(tmp_path):
    deltas, alone = [], []
    batch = tiny_tabular_batch(tiny_tabular_mlp(), batch=6)
    for i, method in enumerate(["bitfit", "layernorm", "bitfit"]):
        model = tiny_tabular_mlp()
        selection = select(model, method, new_parameters=new_parameters(model))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.3)
        path = save_delta(model, selection, tmp_path / str(i))
        tensors, config = read_delta(path)
        deltas.append(MixedDelta(str(i), tensors, []))
        alone.append(model.eval()(features=batch["features"]).logits.detach())
    mixed = MixedBiasModel(tiny_tabular_mlp())
    mixed.set_deltas(deltas)
    rows = torch.tensor([2, 0, 1, 1, 0, 2])
    logits = mixed.forward(rows, features=batch["features"])
    expected = torch.stack([alone[r][i] for i, r in enumerate(rows.tolist())])
    assert torch.allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize("family, method, options, phrase", [
    ("bert", "full", {}, "which a per-example bias gather cannot express"),
    ("bert", "random", {}, "element mask"),
    ("bert", "pattern", {"include": r".*attention\.self\.query\.weight"}, "query.weight"),
    ("gpt2", "bitfit", {}, "Conv1D"),
])
def test_deltas_that_change_weights_take_the_grouped_path(family, method, options, phrase, tmp_path):
    build = TINY_TEXT_MODELS[family]
    path = _perturbed_delta(build, method, options, 3, seed=0, out=tmp_path / "d")
    tensors, config = read_delta(path)
    reason = mixed_path_obstacle(build(), tensors, config["selection"]["new_parameters"])
    assert reason is not None and phrase in reason


def test_batcher_fills_batches_up_to_the_limit_never_splits_a_request_and_runs_controls_in_order():
    batches, events = [], []
    gate = threading.Event()

    def run(jobs):
        batches.append([len(j.examples) for j in jobs])
        for job in jobs:
            events.append(job.name)
            job.future.set_result(job.name)

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_s=0.05)
    batcher.start()
    try:
        batcher.submit(Control(lambda: gate.wait(5)))  # hold the worker until everything is queued
        futures = [batcher.submit(Job(f"r{i}", [0] * 3)) for i in range(5)]
        control = batcher.submit(Control(lambda: events.append("control") or "done"))
        late = batcher.submit(Job("late", [0] * 2))
        gate.set()
        assert [f.result(5) for f in futures] == [f"r{i}" for i in range(5)]
        assert control.result(5) == "done" and late.result(5) == "late"
        with pytest.raises(ValueError, match="exceeds max_batch_size"):
            batcher.submit(Job("huge", [0] * 9))
        # Alone, a request waits max_wait for company, then runs by itself.
        start = time.perf_counter()
        assert batcher.submit(Job("solo", [0])).result(5) == "solo"
        assert time.perf_counter() - start >= 0.04
    finally:
        batcher.stop()
    assert batches[:4] == [[3, 3], [3, 3], [3], [2]]  # 3+3 fit in 8, a third would not; the control closed the batch
    assert events[:7] == ["r0", "r1", "r2", "r3", "r4", "control", "late"]


def test_key_file_is_checked_and_keys_are_looked_up_by_hash(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"sha256": hash_key("k1"), "tenant": "a", "models": ["m1"]},
                                         {"sha256": "sha256:" + hash_key("k2"), "tenant": "ops", "admin": True}]}))
    ring = KeyRing.from_file(path)
    assert ring.identify("k1").tenant == "a" and ring.identify("k1").may_use("m1") and not ring.identify("k1").may_use("m2")
    assert ring.identify("k2").admin and ring.identify("k2").may_use("anything") and ring.identify("k3") is None
    for entries, phrase in [
        ([{"sha256": "k1", "tenant": "a", "models": ["m1"]}], "never the key itself"),
        ([{"sha256": hash_key("x"), "tenant": "a"}], "may use no model"),
        ([{"sha256": hash_key("x"), "tenant": "a", "models": "m1"}], "list of delta names"),
        ([{"sha256": hash_key("x"), "tenant": "a", "models": ["m"], "role": "x"}], "unknown field"),
        ([{"sha256": hash_key("x"), "tenant": "a", "models": ["m"]}] * 2, "appears twice"),
        ([], "non-empty"),
    ]:
        path.write_text(json.dumps({"keys": entries}))
        with pytest.raises(KeyFileError, match=phrase):
            KeyRing.from_file(path)


@pytest.mark.parametrize("shape", [(5, 7, 16), (5, 16), (5, 3, 2, 16)])
def test_a_gathered_linear_gives_each_example_exactly_its_merged_linear(shape):
    # The bias goes into the output before the shared GEMM accumulates onto it, as F.linear(x, W, b) does: bit for bit.
    from selectune.serve.mixed_model import _Batch, _gathered_linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24)
    table = torch.randn(3, 24)  # (R, out): one bias per delta
    rows = torch.tensor([2, 0, 1, 1, 2])
    for x in (torch.randn(shape), torch.randn(*shape[:-1], 32)[..., ::2]):  # contiguous, and a strided view
        mixed = MixedBiasModel(torch.nn.Sequential(linear))
        mixed._batch = _Batch(rows)
        got = _gathered_linear(linear, mixed, table, x)
        assert got.shape == (*shape[:-1], 24)
        for r in range(3):
            merged = torch.nn.functional.linear(x, linear.weight, table[r])  # the delta's bias merged into the Linear
            picked = (rows == r).nonzero().squeeze(1)
            assert torch.equal(got[picked], merged[picked]), (shape, r, (got[picked] - merged[picked]).abs().max())
