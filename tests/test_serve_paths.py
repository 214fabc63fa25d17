"""Serving paths behind one interface: the store tries them in order, a new path is one class in its list,
mixed and grouped jobs co-batched in one run answer as each job alone, and a reload may move a delta across paths."""
import pytest

from benchmarks.serve_deltas import make_perturbed_delta
from selectune.delta import DeltaError
from selectune.serve.delta_store import DeltaStore, ServedDelta
from selectune.serve.inputs import InputLimits, encode_inputs
from selectune.serve.paths import GroupedPath, MixedPath

DELTAS = {"cardio": ("bitfit", ["neg", "pos"]), "onco3": ("bitfit", ["high", "low", "mid"]),
          "derm-full": ("full", ["neg", "pos"]), "icu-sparse": ("random", ["a", "b", "c"])}
TEXTS = ["great relief from pain", "did not help at all and made me dizzy", "ok", "rash all over my arms",
         "worked well for me, no side effects at all, would recommend it to anyone with migraines"]
MIXED_REASON = "biases, LayerNorm and head only: shares the batch's forward pass (per-example gather)"


class PinnedPath(GroupedPath):
    """A third path for the test: chosen tenants get a base copy of their own, apart from everyone else's."""

    name = "pinned"

    def __init__(self, base_copy, pinned: set[str]):
        super().__init__(base_copy)
        self.pinned = pinned

    def obstacle(self, delta: ServedDelta) -> str | None:
        return None if delta.name in self.pinned else f"{delta.name} is not pinned"

    def reason(self, refusals: list[str]) -> str:
        return "pinned to its own base copy"


@pytest.fixture(scope="module")
def deltas_dir(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    for i, (name, (method, labels)) in enumerate(DELTAS.items()):
        make_perturbed_delta(tiny_bert_dir, method, root / name, labels=labels, seed=i, scale=0.3)
    return root


def _store(base, root, extra_first=None) -> DeltaStore:
    store = DeltaStore(base)
    if extra_first is not None:
        store.paths.insert(0, extra_first(store))
    for name in DELTAS:
        store.commit(store.prepare_delta(name, root / name))
    return store


def _jobs(store, names):
    limits = InputLimits(max_items=8, max_text_chars=500)
    return [(n, encode_inputs(store.deltas[n].task, store.tokenizer, TEXTS[i % 5:] + TEXTS[:1], limits))
            for i, n in enumerate(names)]


def _assert_same_answers(got, expected):
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    for p, q in zip(got, expected):
        assert list(p["probabilities"]) == list(q["probabilities"])
        assert list(p["probabilities"].values()) == pytest.approx(list(q["probabilities"].values()), abs=1e-5)


def test_mixed_and_grouped_jobs_in_one_run_answer_as_each_job_alone(tiny_bert_dir, deltas_dir):
    store = _store(tiny_bert_dir, deltas_dir)
    assert {n: d.serving_path for n, d in store.deltas.items()} == {
        "cardio": "mixed", "onco3": "mixed", "derm-full": "grouped", "icu-sparse": "grouped"}
    assert store.deltas["cardio"].reason == MIXED_REASON
    assert "element mask" in store.deltas["icu-sparse"].reason  # grouped: why the mixed path refused it
    names = ["derm-full", "cardio", "icu-sparse", "onco3", "derm-full", "cardio"]
    jobs = _jobs(store, names)
    passes = []
    together = store.run(jobs, on_pass=lambda path, deltas, n: passes.append((path.name, [d.name for d in deltas], n)))
    sizes = [len(examples) for _, examples in jobs]
    # Mixed first: one pass for all its jobs; then grouped: one pass per delta, in order of first appearance.
    assert passes == [("mixed", ["cardio", "onco3", "cardio"], sizes[1] + sizes[3] + sizes[5]),
                      ("grouped", ["derm-full", "derm-full"], sizes[0] + sizes[4]),
                      ("grouped", ["icu-sparse"], sizes[2])]
    for (name, examples), (predictions, delta) in zip(jobs, together):
        assert delta is store.deltas[name] and len(predictions) == len(examples)
        assert list(predictions[0]["probabilities"]) == DELTAS[name][1]
        alone, same = store.run([(name, examples)])[0]
        assert same is delta
        _assert_same_answers(predictions, alone)
    # Two deltas really answer differently (the comparison above could not pass by accident).
    assert together[1][0][0]["probabilities"] != store.run([("derm-full", jobs[1][1])])[0][0][0]["probabilities"]


def test_a_third_path_is_one_class_in_the_store_list(tiny_bert_dir, deltas_dir):
    plain = _store(tiny_bert_dir, deltas_dir)
    store = _store(tiny_bert_dir, deltas_dir, extra_first=lambda s: PinnedPath(s._base_copy, {"cardio", "icu-sparse"}))
    assert [p.name for p in store.paths] == ["pinned", "mixed", "grouped"]
    assert {n: (d.serving_path, d.reason) for n, d in store.deltas.items()} == {
        "cardio": ("pinned", "pinned to its own base copy"),
        "icu-sparse": ("pinned", "pinned to its own base copy"),
        "onco3": ("mixed", MIXED_REASON),
        "derm-full": ("grouped", "derm-full is not pinned; " + plain.deltas["derm-full"].reason)}
    assert store.path("mixed").model.names == ["onco3"]
    jobs = _jobs(store, ["onco3", "cardio", "derm-full", "icu-sparse", "cardio"])
    passes = []
    together = store.run(jobs, on_pass=lambda path, deltas, n: passes.append((path.name, [d.name for d in deltas])))
    assert passes == [("pinned", ["cardio", "cardio"]), ("pinned", ["icu-sparse"]), ("mixed", ["onco3"]),
                      ("grouped", ["derm-full"])]
    for (predictions, _), (expected, _) in zip(together, plain.run(jobs)):
        _assert_same_answers(predictions, expected)


def test_a_delta_no_path_takes_is_refused_with_every_reason(tiny_bert_dir, deltas_dir):
    store = DeltaStore(tiny_bert_dir)
    store.paths = [path for path in store.paths if isinstance(path, MixedPath)]
    with pytest.raises(DeltaError, match=r"fits no serving path: .*element mask"):
        store.prepare_delta("icu-sparse", deltas_dir / "icu-sparse")
    assert store.prepare_delta("cardio", deltas_dir / "cardio").serving_path == "mixed"


def test_a_reload_moves_a_delta_across_paths_and_frees_what_it_held(tiny_bert_dir, deltas_dir):
    store = _store(tiny_bert_dir, deltas_dir)
    mixed, grouped = store.path("mixed"), store.path("grouped")
    texts = _jobs(store, ["cardio"])[0][1]
    store.commit(store.prepare_delta("cardio", deltas_dir / "derm-full"))  # same name, weights that need a copy
    assert store.deltas["cardio"].serving_path == "grouped" and mixed.model.names == ["onco3"]
    (answer, _), (derm, _) = store.run([("cardio", texts), ("derm-full", texts)])
    assert answer == derm
    store.commit(store.prepare_delta("cardio", deltas_dir / "cardio"))  # and back to the shared pass
    assert store.deltas["cardio"].serving_path == "mixed" and mixed.model.names == ["onco3", "cardio"]
    assert sorted(grouped.deltas) == ["derm-full", "icu-sparse"]
    assert sorted(grouped.sets[2].deltas) == [store.deltas["derm-full"].key]  # the reload's copy of derm-full is gone
    store.commit(store.prepare_delta("derm-full", deltas_dir / "icu-sparse"))  # grouped to grouped, new weights
    assert grouped.sets[2].deltas == {}  # the old version is unloaded once the new one is in place
    assert sorted(grouped.sets[3].deltas) == sorted([store.deltas["derm-full"].key, store.deltas["icu-sparse"].key])
    store.remove("derm-full")
    assert list(grouped.sets[3].deltas) == [store.deltas["icu-sparse"].key]
    assert sorted(store.deltas) == ["cardio", "icu-sparse", "onco3"] and list(grouped.deltas) == ["icu-sparse"]
