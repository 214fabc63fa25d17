"""A server's start with many mixed-path deltas: their tables are built once for all (one build per delta copied O(N^2)
rows and left ~1 MB of resident memory per BitFit delta of MiniLM), each delta's values are held once (its tensors
become views of its table rows), the answers are those of deltas committed one by one, and a delta whose tables do
not build is refused alone."""
import dataclasses

import pytest
import torch

from benchmarks.serve_deltas import make_perturbed_delta
from selectune.delta import read_delta
from selectune.serve.delta_store import DeltaStore
from selectune.serve.inputs import InputLimits, encode_inputs

NAMES = ["a", "b", "c", "d"]
TEXTS = ["great relief from pain", "did not help at all and made me dizzy", "ok"]


@pytest.fixture(scope="module")
def deltas_dir(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i, name in enumerate(NAMES):
        make_perturbed_delta(tiny_bert_dir, "bitfit", root / name, labels=["neg", "pos", "mid"][: 2 + i % 2], seed=i, scale=0.3)
    return root


def _answers(store):
    limits = InputLimits(max_items=8, max_text_chars=500)
    jobs = [(n, encode_inputs(store.deltas[n].task, store.tokenizer, TEXTS, limits)) for n in NAMES]
    return [[p["probabilities"] for p in predictions] for predictions, _ in store.run(jobs)]


def test_new_deltas_are_added_with_one_table_build_and_answer_as_committed_one_by_one(tiny_bert_dir, deltas_dir):
    one_by_one = DeltaStore(tiny_bert_dir)
    for name in NAMES:
        one_by_one.commit(one_by_one.prepare_delta(name, deltas_dir / name))
    store = DeltaStore(tiny_bert_dir)
    mixed = store.path("mixed").model
    builds = []
    build = mixed.set_deltas
    mixed.set_deltas = lambda deltas: builds.append([d.name for d in deltas]) or build(deltas)  # counts, then builds
    assert store.commit_new([store.prepare_delta(name, deltas_dir / name) for name in NAMES]) == {}
    assert builds == [NAMES] and sorted(store.deltas) == NAMES and mixed.names == NAMES
    got, expected = _answers(store), _answers(one_by_one)
    for rows, want in zip(got, expected):
        for p, q in zip(rows, want):
            assert list(p) == list(q) and list(p.values()) == pytest.approx(list(q.values()), abs=1e-6)
    assert got[0] != got[2]  # the deltas really differ: equal answers could not come by accident


def test_each_value_is_held_once_in_the_tables(tiny_bert_dir, deltas_dir):
    store = DeltaStore(tiny_bert_dir)
    store.commit_new([store.prepare_delta(name, deltas_dir / name) for name in NAMES])
    shared = 0
    for row, name in enumerate(NAMES):
        on_disk, _ = read_delta(deltas_dir / name)
        for key, value in store.deltas[name].tensors.items():
            assert torch.equal(value, on_disk[key]), key  # the same values as the file
            if key.endswith(".bias") and "classifier" not in key and "pooler" not in key:
                assert value._base is not None and value._base.shape[0] == len(NAMES), key  # a row of its (R, out) table
                shared += 1
    assert shared >= len(NAMES) * 10


def test_a_delta_whose_tables_do_not_build_is_refused_alone(tiny_bert_dir, deltas_dir):
    store = DeltaStore(tiny_bert_dir)
    good = [store.prepare_delta(name, deltas_dir / name) for name in NAMES]
    first = good[0]
    bias = next(k for k in first.tensors if k.endswith("intermediate.dense.bias"))
    # Past every check of prepare (built by hand): a bias one entry short, so stacking its table fails.
    bad = dataclasses.replace(first, name="short", tensors={**first.tensors, bias: first.tensors[bias][:-1]})
    failed = store.commit_new([good[0], bad, *good[1:]])
    assert list(failed) == ["short"] and "equal size" in str(failed["short"]), failed
    assert sorted(store.deltas) == NAMES and store.path("mixed").model.names == NAMES
    reference = DeltaStore(tiny_bert_dir)
    reference.commit_new([reference.prepare_delta(name, deltas_dir / name) for name in NAMES])
    assert _answers(store) == _answers(reference)
