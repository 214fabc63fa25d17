"""`selectune serve` against hostile or damaged deltas and slow requests (issue 13, serving items 2, 3, 4, 7, 8), on
real uvicorn servers on loopback with real deltas (written by ``save_delta``; the hostile ones are real deltas with
tensors or config edited and the weights hash recomputed, so they pass the file checks). Each bad delta must be
refused on its own while every other tenant's answers stay exactly those of a server that never saw it."""
import concurrent.futures
import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.serve_deltas import make_perturbed_delta
from selectune.delta import DELTA_CONFIG, DELTA_WEIGHTS, DeltaError, read_delta, write_delta_tensors
from selectune.fingerprint import base_fingerprint, file_sha256
from selectune.masks import SparseEntries
from selectune.selection import Selection
from selectune.serve import ServeConfig, create_app, hash_key
from selectune.serve.batcher import Control
from selectune.serve.delta_store import load_base
from selectune.serve.in_process import serve_in_thread
from tests.tiny_models import saved_tabular_delta

TEXTS = ["great relief from pain", "did not help at all and made me dizzy", "ok"]
GOOD = ["m1", "m2", "sp-good", "full-a"]
OPS = {"Authorization": "Bearer ops-key"}
BODY_LAYER = "bert.encoder.layer.1.output.dense"  # an mlp_out Linear (64 -> 32) of the tiny BERT


@pytest.fixture(scope="module")
def parts(tiny_bert_dir, tmp_path_factory):
    """Good deltas of every path (bitfit: mixed; random mask and full: grouped) and a key file."""
    root = tmp_path_factory.mktemp("hostile")
    for seed, (name, method) in enumerate([("m1", "bitfit"), ("m2", "bitfit"), ("sp-good", "random"), ("full-a", "full"),
                                           ("full-b", "full")]):
        make_perturbed_delta(tiny_bert_dir, method, root / "parts" / name, labels=["neg", "pos"], seed=seed, scale=0.3)
    make_perturbed_delta(tiny_bert_dir, "bitfit", root / "parts" / "long", labels=["neg", "pos"], seed=9, scale=0.3,
                         max_length=100_000)
    (root / "keys.json").write_text(json.dumps({"keys": [{"sha256": hash_key("ops-key"), "tenant": "ops", "admin": True},
                                                         {"sha256": hash_key("t-key"), "tenant": "t", "models": ["*"]}]}))
    return root


def _craft(source: Path, out: Path, edit_tensors=None, edit_config=None) -> Path:
    """A copy of the delta at ``source`` with its tensors and/or config edited, the weights hash recomputed."""
    raw = load_file(str(source / DELTA_WEIGHTS))
    config = json.loads((source / DELTA_CONFIG).read_text())
    if edit_tensors is not None:
        edit_tensors(raw)
    if edit_config is not None:
        edit_config(config)
    out.mkdir(parents=True)
    save_file(raw, str(out / DELTA_WEIGHTS), metadata={"format": "selectune-delta"})
    config["weights_sha256"] = file_sha256(out / DELTA_WEIGHTS)
    (out / DELTA_CONFIG).write_text(json.dumps(config))
    return out


def _folder(parts: Path, out: Path, names: list[str]) -> Path:
    for name in names:
        shutil.copytree(parts / "parts" / name, out / name)
    return out


@contextlib.contextmanager
def _server(base: str, parts: Path, deltas: Path, **settings):
    config = ServeConfig(base=base, deltas=str(deltas), keys=str(parts / "keys.json"), max_batch_size=16, max_wait_ms=5,
                         max_items=8, **settings)
    app = create_app(config)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60, headers=OPS) as client:
        yield client, app.state.serve


def _answers(client, names) -> dict[str, list[dict[str, float]]]:
    out = {}
    for name in names:
        answer = client.post("/v1/predict", json={"model": name, "inputs": TEXTS})
        assert answer.status_code == 200, (name, answer.text)
        out[name] = [p["probabilities"] for p in answer.json()["predictions"]]
    return out


def _same(answers, reference) -> None:
    for name, rows in answers.items():
        for got, want in zip(rows, reference[name]):
            assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= 1e-6 for k in got), (name, got, want)


@pytest.fixture(scope="module")
def clean(tiny_bert_dir, parts, tmp_path_factory):
    """Each good delta's answers on a server that never saw a hostile delta."""
    deltas = _folder(parts, tmp_path_factory.mktemp("clean"), GOOD)
    with _server(tiny_bert_dir, parts, deltas) as (client, _):
        return _answers(client, GOOD)


def _refused(client) -> dict[str, str]:
    return client.get("/v1/models").json()["refused"]


# ---- item 2: a delta may not change the base's shapes (only a head its width) --------------------------------------
def _widen_body_layer(model):
    """Edits that list a body Linear among the new parameters with 8 more outputs (a fingerprint that excludes it)."""
    names = [f"{BODY_LAYER}.weight", f"{BODY_LAYER}.bias"]

    def tensors(raw):
        raw[names[0]], raw[names[1]] = torch.randn(40, 64), torch.randn(40)

    def config(data):
        selection = data["selection"]
        selection["new_parameters"] += names
        selection["trainable"] += names
        selection["base_fingerprint"] = base_fingerprint(model, exclude=[*selection["new_parameters"], *selection["inserted_parameters"]])
        data["tensors"].update({names[0]: {"shape": [40, 64], "dtype": "float32"}, names[1]: {"shape": [40], "dtype": "float32"}})

    return tensors, config


def test_a_delta_that_widens_a_body_layer_is_refused_and_every_other_answer_stays(tiny_bert_dir, parts, clean, tmp_path):
    widen = _widen_body_layer(load_base(tiny_bert_dir)[1].model)
    deltas = _folder(parts, tmp_path / "deltas", GOOD)
    _craft(parts / "parts" / "m2", deltas / "wide-body", *widen)
    with _server(tiny_bert_dir, parts, deltas) as (client, state):
        assert "wide-body" not in state.routes
        reason = _refused(client)["wide-body"]
        assert f"{BODY_LAYER}.bias has shape (40,), the base's is (32,)" in reason and "only a head may differ" in reason
        _same(_answers(client, GOOD), clean)
        # Hot load of the same delta under another name: refused with the reason, nothing served changes.
        _craft(parts / "parts" / "m2", deltas / "wide-late", *widen)
        refused = client.post("/v1/models/wide-late/load")
        assert refused.status_code == 422 and "has shape (40" in refused.json()["detail"], refused.text
        _same(_answers(client, GOOD), clean)


# ---- item 3: sparse indices checked before anything is written; a failed write leaves the base as it was ---------
def _sparse_key(raw) -> str:
    return next(k for k in sorted(raw) if k.endswith(".__indices__"))


def _float_indices(raw):
    """Float indices (they passed the bounds check), after a dense tensor that is written first."""
    raw[f"{BODY_LAYER}.bias"] = torch.full((32,), 5.0)
    key = _sparse_key(raw)
    raw[key] = raw[key].to(torch.float32)


def _repeated_indices(raw):
    key = _sparse_key(raw)
    raw[key] = raw[key].clone()
    raw[key][1] = raw[key][0]  # two values for one entry: which one lands is up to the kernel


def test_sparse_deltas_with_bad_indices_are_refused_at_start_and_on_hot_load(tiny_bert_dir, parts, clean, tmp_path):
    deltas = _folder(parts, tmp_path / "deltas", GOOD)
    _craft(parts / "parts" / "sp-good", deltas / "sp-float", _float_indices)
    _craft(parts / "parts" / "sp-good", deltas / "sp-repeat", _repeated_indices)
    with _server(tiny_bert_dir, parts, deltas) as (client, state):
        refused = _refused(client)
        assert "integer" in refused["sp-float"] and "repeats" in refused["sp-repeat"], refused
        _same(_answers(client, GOOD), clean)
        _craft(parts / "parts" / "sp-good", deltas / "sp-late", _float_indices)
        answer = client.post("/v1/models/sp-late/load")
        assert answer.status_code == 422 and "integer" in answer.json()["detail"], answer.text
        _same(_answers(client, GOOD), clean)  # the grouped base copy holds sp-good's weights and nothing else


def test_a_write_that_fails_half_way_leaves_the_model_as_it_was(tiny_bert_dir, parts):
    model = load_base(tiny_bert_dir)[1].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors, config = read_delta(parts / "parts" / "sp-good")
    masked = next(n for n, v in tensors.items() if isinstance(v, SparseEntries))
    entries = tensors.pop(masked)
    tensors[masked] = SparseEntries(entries.indices, entries.values[:-1], entries.shape)  # one value short: fails in the write
    assert any(not isinstance(v, SparseEntries) for v in tensors.values())  # dense ones go in first
    with pytest.raises(DeltaError, match=masked):
        write_delta_tensors(model, tensors, Selection.from_dict(config["selection"]), "crafted")
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


# ---- item 4: a damaged config is refused per delta, with a log line ------------------------------------------------
def test_deltas_with_damaged_configs_are_refused_one_by_one_and_the_rest_start(tiny_bert_dir, parts, clean, tmp_path, caplog):
    deltas = _folder(parts, tmp_path / "deltas", GOOD)
    source = parts / "parts" / "m1"
    _craft(source, deltas / "no-selection", edit_config=lambda c: c.pop("selection"))
    _craft(source, deltas / "task-without-labels", edit_config=lambda c: c["metadata"]["task"].pop("labels"))
    _craft(source, deltas / "metadata-text", edit_config=lambda c: c.update(metadata="written by hand"))
    _craft(source, deltas / "selection-list", edit_config=lambda c: c.update(selection=["bias"]))
    caplog.set_level("ERROR", logger="selectune.serve")
    with _server(tiny_bert_dir, parts, deltas) as (client, state):
        refused = _refused(client)
        damaged = ["metadata-text", "no-selection", "selection-list", "task-without-labels"]
        assert sorted(refused) == damaged and sorted(state.routes) == sorted(GOOD)
        assert all("damaged" in refused[name] for name in damaged), refused
        logged = caplog.text
        assert all(f"refused delta {name!r}" in logged for name in damaged)
        _same(_answers(client, GOOD), clean)


# ---- item 7: admin load reads only --deltas; prepared off the batcher; commit swaps what was hashed -------------------
def test_admin_load_of_a_path_outside_deltas_is_refused_without_listing_it(tiny_bert_dir, parts, tmp_path):
    deltas = _folder(parts, tmp_path / "deltas", ["m1"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "patients-2024.csv").write_text("id,diagnosis\n")
    with _server(tiny_bert_dir, parts, deltas) as (client, _):
        for path in (elsewhere, parts / "parts" / "m2", deltas / ".." / "elsewhere"):
            refused = client.post("/v1/models/intruder/load", json={"path": str(path)})
            assert refused.status_code == 422 and "inside --deltas" in refused.json()["detail"], refused.text
            assert "patients-2024" not in refused.text and str(elsewhere) not in refused.text
        inside = client.post("/v1/models/m1-again/load", json={"path": str(deltas / "m1")})
        assert inside.status_code == 200, inside.text


def test_a_hot_load_serves_the_bytes_it_hashed_and_reads_nothing_on_the_batcher(tiny_bert_dir, parts, clean, tmp_path):
    deltas = _folder(parts, tmp_path / "deltas", ["m1"])
    version_a = read_delta(parts / "parts" / "full-a")[1]["weights_sha256"]
    with _server(tiny_bert_dir, parts, deltas) as (client, state):
        shutil.copytree(parts / "parts" / "full-a", deltas / "full-a")  # a new delta, loaded without a restart
        gate = threading.Event()
        state.batcher.submit(Control(lambda: gate.wait(60)))  # hold the batcher: the load's commit waits behind it
        deadline = time.monotonic() + 30
        while state.batcher.queued > 0:  # the worker is inside the gate
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                loading = pool.submit(client.post, "/v1/models/full-a/load")
                while state.batcher.queued < 1:  # prepared: only the commit is left
                    assert time.monotonic() < deadline and not loading.done(), "the load never reached the batcher"
                    time.sleep(0.01)
                shutil.rmtree(deltas / "full-a")  # new bytes under the same name while the commit waits
                shutil.copytree(parts / "parts" / "full-b", deltas / "full-a")
            finally:
                gate.set()
            loaded = loading.result(60)
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["version"] == version_a
        _same(_answers(client, ["full-a"]), clean)  # the weights of version_a answer, as reported


# ---- item 8: max_length clamped, tokenising off the event loop, huge integers refused ----------------------------
def test_a_max_length_past_the_models_positions_is_clamped(tiny_bert_dir, parts, clean, tmp_path):
    deltas = _folder(parts, tmp_path / "deltas", ["m1", "long"])
    with _server(tiny_bert_dir, parts, deltas, max_text_chars=20_000) as (client, _):
        assert client.get("/v1/models/long").json()["max_length"] == 128  # the tiny BERT's max_position_embeddings
        long_text = " ".join(["relief"] * 600)  # 600 tokens
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            both = [pool.submit(client.post, "/v1/predict", json={"model": name, "inputs": [long_text, "ok"]})
                    for name in ("long", "m1")]
            for answer in both:
                assert answer.result().status_code == 200, answer.result().text
        _same(_answers(client, ["m1"]), clean)


def test_tokenising_waits_off_the_event_loop(tiny_bert_dir, parts, tmp_path):
    deltas = _folder(parts, tmp_path / "deltas", ["m1"])
    with _server(tiny_bert_dir, parts, deltas) as (client, state):
        url = str(client.base_url)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            state.store.tokenizer_lock.acquire()  # as the batcher does while it pads a (slow, large) batch
            try:
                waiting = pool.submit(httpx.post, f"{url}/v1/predict", json={"model": "m1", "inputs": ["ok"]}, headers=OPS, timeout=60)
                time.sleep(0.3)  # the request is in, waiting for the tokenizer
                start = time.monotonic()
                health = httpx.get(f"{url}/health", timeout=10)
                assert health.status_code == 200 and time.monotonic() - start < 2
            finally:
                state.store.tokenizer_lock.release()
            assert waiting.result(60).status_code == 200


def test_a_tabular_integer_too_large_for_a_float_is_422(tmp_path):
    saved_tabular_delta(tmp_path / "base", tmp_path / "deltas" / "risk")
    app = create_app(ServeConfig(base=str(tmp_path / "base"), deltas=str(tmp_path / "deltas")))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        huge = client.post("/v1/predict", json={"model": "risk", "inputs": [{"age": 10**400, "bmi": 20}]})
        assert huge.status_code == 422 and "inputs[0].age" in huge.json()["detail"] and "finite numbers" in huge.json()["detail"]
        assert client.post("/v1/predict", json={"model": "risk", "inputs": [{"age": 40, "bmi": 20}]}).status_code == 200
