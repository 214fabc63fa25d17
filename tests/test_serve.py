"""`selectune serve` over real HTTP on loopback: served == offline for every delta, keys and tenants, bad input,
metrics, hot load/unload under load. One uvicorn server (in a thread) on a tiny BERT base for the module."""
import concurrent.futures
import json
import shutil
import threading
import time

import httpx
import pandas as pd
import pytest
import torch

from benchmarks.serve_deltas import make_perturbed_delta
from selectune.evaluate.run import predict as offline_predict
from selectune.serve import ServeConfig, create_app, hash_key
from selectune.serve.batcher import Control
from selectune.serve.in_process import serve_in_thread

# name -> (method, labels, options); full and random change weights (grouped path), the rest share the batch.
DELTAS = {
    "cardio": ("bitfit", ["neg", "pos"], {}),
    "onco3": ("bitfit", ["high", "low", "mid"], {}),
    "triage-head": ("head", ["neg", "pos"], {}),
    "notes-ln": ("layernorm", ["neg", "pos"], {}),
    "derm-full": ("full", ["neg", "pos"], {}),
    "icu-sparse": ("random", ["a", "b", "c"], {}),
}
PATHS = {"cardio": "mixed", "onco3": "mixed", "triage-head": "mixed", "notes-ln": "mixed", "derm-full": "grouped", "icu-sparse": "grouped"}
TENANTS = {"alpha": ["cardio", "triage-head", "notes-ln"], "beta": ["onco3", "derm-full", "icu-sparse"]}
KEYS = {"alpha": "alpha-secret-key", "beta": "beta-secret-key", "ops": "ops-admin-key", "all": "research-key"}
TEXTS = ["great relief from pain", "did not help at all and made me dizzy", "ok",
         "worked well for me, no side effects at all, would recommend it to anyone with migraines", "rash all over my arms"]


def _auth(who):
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture(scope="module")
def served(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    deltas = root / "deltas"
    for i, (name, (method, labels, options)) in enumerate(DELTAS.items()):
        make_perturbed_delta(tiny_bert_dir, method, deltas / name, labels=labels, seed=i, scale=0.3, **options)
    # A delta trained on another base: same architecture, one weight different -> another fingerprint.
    from transformers import AutoTokenizer, BertModel

    other = root / "other-base"
    model = BertModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight.add_(0.01)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(other)
    make_perturbed_delta(str(other), "bitfit", deltas / "wrong-base", labels=["neg", "pos"], seed=99)
    (deltas / "not-a-delta").mkdir()  # skipped with a warning, not fatal
    keys = root / "keys.json"
    keys.write_text(json.dumps({"keys": [
        {"sha256": hash_key(KEYS["alpha"]), "tenant": "alpha", "models": TENANTS["alpha"]},
        {"sha256": hash_key(KEYS["beta"]), "tenant": "beta", "models": TENANTS["beta"]},
        {"sha256": hash_key(KEYS["all"]), "tenant": "research", "models": ["*"]},
        {"sha256": hash_key(KEYS["ops"]), "tenant": "ops", "admin": True},
    ]}))
    config = ServeConfig(base=tiny_bert_dir, deltas=str(deltas), keys=str(keys), max_batch_size=16, max_wait_ms=20,
                         max_items=8, max_text_chars=200, max_body_bytes=20_000)
    app = create_app(config)
    with serve_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield {"url": url, "client": client, "deltas": deltas, "root": root, "app": app}


def _predict(client, model, inputs, who="all"):
    return client.post("/v1/predict", json={"model": model, "inputs": inputs}, headers=_auth(who))


def test_served_predictions_equal_offline_predict_for_every_delta(served, tmp_path):
    client = served["client"]
    # Concurrent requests for every delta, so mixed batches hold several deltas (and grouped ones queue beside them).
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = {(name, k): pool.submit(_predict, client, name, TEXTS[k:] + TEXTS[:k]) for name in DELTAS for k in (0, 2)}
        answers = {key: f.result() for key, f in futures.items()}
    data = tmp_path / "texts.csv"
    for (name, k), response in answers.items():
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == name and body["path"] == PATHS[name]
        assert body["version"] == json.loads((served["deltas"] / name / "delta_config.json").read_text())["weights_sha256"]
        texts = TEXTS[k:] + TEXTS[:k]
        pd.DataFrame({"text": texts}).to_csv(data, index=False)
        offline = pd.read_csv(offline_predict(str(data), out=str(tmp_path / f"{name}-{k}.csv"), delta=str(served["deltas"] / name)))
        labels = DELTAS[name][1]
        for row, prediction in enumerate(body["predictions"]):
            assert sorted(prediction["probabilities"]) == labels
            assert prediction["label"] == offline.loc[row, "prediction"]
            for label in labels:
                assert abs(prediction["probabilities"][label] - offline.loc[row, f"prob_{label}"]) <= 1e-5
    # The deltas really shared forward passes: some mixed batch held more than one delta.
    metrics = served["client"].get("/metrics", headers=_auth("ops")).text
    assert _metric(metrics, "selectune_batch_deltas_sum") > _metric(metrics, "selectune_batch_deltas_count")


def _metric(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_models_list_paths_per_delta_and_refuses_the_wrong_base(served):
    client = served["client"]
    listed = client.get("/v1/models", headers=_auth("ops")).json()
    assert {m["name"]: m["path"] for m in listed["models"]} == PATHS
    assert "fingerprint" in listed["refused"]["wrong-base"] and "wrong-base" not in {m["name"] for m in listed["models"]}
    grouped = {m["name"]: m["path_reason"] for m in listed["models"] if m["path"] == "grouped"}
    assert "element mask" in grouped["icu-sparse"]
    alpha = client.get("/v1/models", headers=_auth("alpha")).json()
    assert sorted(m["name"] for m in alpha["models"]) == sorted(TENANTS["alpha"]) and "refused" not in alpha
    one = client.get("/v1/models/onco3", headers=_auth("beta")).json()
    assert one["labels"] == ["high", "low", "mid"] and one["method"] == "bitfit"
    assert _predict(client, "wrong-base", ["x"], who="all").status_code == 404


def test_keys_no_key_401_other_tenant_403_admin_routes_need_admin(served):
    client = served["client"]
    body = {"model": "cardio", "inputs": ["fine"]}
    no_key = client.post("/v1/predict", json=body)
    assert no_key.status_code == 401 and "Authorization: Bearer" in no_key.json()["detail"]
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/predict", json=body, headers={"Authorization": "Bearer not-a-key"}).status_code == 401
    assert client.post("/v1/predict", json=body, headers={"Authorization": f"Basic {KEYS['alpha']}"}).status_code == 401
    assert client.get("/v1/models").status_code == 401
    assert _predict(client, "cardio", ["fine"], who="alpha").status_code == 200
    other = _predict(client, "onco3", ["fine"], who="alpha")
    assert other.status_code == 403 and "alpha" in other.json()["detail"] and "onco3" in other.json()["detail"]
    assert _predict(client, "no-such-model", ["fine"], who="alpha").status_code == 403  # names outside its list: 403, no probing
    assert _predict(client, "cardio", ["fine"], who="beta").status_code == 403
    assert _predict(client, "cardio", ["fine"], who="ops").status_code == 200  # admin may use every model
    for who in ("alpha", "all"):
        assert client.post("/v1/models/cardio/unload", headers=_auth(who)).status_code == 403
        assert client.post("/v1/models/cardio/load", headers=_auth(who)).status_code == 403
        assert client.get("/metrics", headers=_auth(who)).status_code == 403
    assert client.get("/metrics").status_code == 401
    assert client.get("/health").status_code == 200  # no key needed


@pytest.mark.parametrize("content, status, phrase", [
    (b'{"model": "cardio", "inputs": ["a"', 422, "not valid JSON"),
    (b"not json at all", 422, "not valid JSON"),
    (b'["cardio", ["a"]]', 422, "invalid request"),
    (b'{"model": 5, "inputs": ["a"]}', 422, "model"),
    (b'{"model": "cardio", "inputs": "just one text"}', 422, "inputs"),
    (b'{"model": "cardio"}', 422, "inputs"),
    (b'{"model": "cardio", "inputs": []}', 422, "empty"),
    (b'{"model": "cardio", "inputs": [42]}', 422, "inputs[0] is int"),
    (b'{"model": "cardio", "inputs": ["ok", null]}', 422, "inputs[1] is null"),
    (b'{"model": "cardio", "inputs": ["  "]}', 422, "empty text"),
    (b'{"model": "cardio", "inputs": ["ok"], "temperature": 2}', 422, "temperature"),
    (json.dumps({"model": "cardio", "inputs": ["x" * 201]}).encode(), 413, "limit is 200"),
    (json.dumps({"model": "cardio", "inputs": ["x"] * 9}).encode(), 413, "at most 8"),
    (json.dumps({"model": "cardio", "inputs": ["x" * 150] * 200}).encode(), 413, "byte limit"),
    (b'{"model": "unknown", "inputs": ["a"]}', 404, "unknown model"),
])
def test_bad_input_is_4xx_with_a_clear_message_and_the_server_keeps_serving(served, content, status, phrase):
    client = served["client"]
    response = client.post("/v1/predict", content=content, headers={**_auth("all"), "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert phrase in response.json()["detail"]
    assert _predict(client, "cardio", ["still serving"]).status_code == 200


def test_a_json_body_sent_as_a_form_is_told_to_set_the_content_type(served):
    response = served["client"].post("/v1/predict", content=b'{"model": "cardio", "inputs": ["a"]}',
                                     headers={**_auth("all"), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 422 and "Content-Type: application/json" in response.json()["detail"]


def test_metrics_health_and_openapi(served):
    client = served["client"]
    assert _predict(client, "cardio", ["a", "b"]).status_code == 200
    metrics = client.get("/metrics", headers=_auth("ops"))
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert _metric(text, "selectune_requests_total", route="/v1/predict", status="200") >= 1
    assert _metric(text, "selectune_request_seconds_count", route="/v1/predict") >= 1
    assert _metric(text, "selectune_batch_examples_count", path="mixed") >= 1
    assert _metric(text, "selectune_examples_total", model="cardio") >= 2
    assert _metric(text, "selectune_models_loaded", path="grouped") == 2
    assert _metric(text, "selectune_deltas_refused_total") >= 1
    assert client.get("/health").json() == {"status": "ok"}  # nothing else to anonymous callers (issue 13)
    assert len(client.get("/v1/models", headers=_auth("ops")).json()["models"]) == len(DELTAS)
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/models", "/v1/models/{name}/load", "/v1/models/{name}/unload", "/metrics", "/health"} <= set(spec["paths"])
    assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])


def test_hot_load_and_unload_under_load_drop_no_request(served, tiny_bert_dir):
    client, deltas, url = served["client"], served["deltas"], served["url"]
    stop, results, lock = threading.Event(), [], threading.Lock()

    def hammer(model):
        with httpx.Client(base_url=url, timeout=30) as own:
            while not stop.is_set():
                r = own.post("/v1/predict", json={"model": model, "inputs": TEXTS[:2]}, headers=_auth("all"))
                with lock:
                    results.append((model, r.status_code, r.json().get("version")))

    workers = [threading.Thread(target=hammer, args=(m,)) for m in ("cardio", "triage-head", "derm-full", "cardio")]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        # A new delta copied into the folder, loaded without restart: served at once, on the mixed path.
        make_perturbed_delta(tiny_bert_dir, "bitfit", deltas / "late-arrival", labels=["neg", "pos"], seed=7, scale=0.3)
        loaded = client.post("/v1/models/late-arrival/load", headers=_auth("ops"))
        assert loaded.status_code == 200 and loaded.json()["path"] == "mixed" and loaded.json()["replaced"] is False
        assert _predict(client, "late-arrival", ["hello"]).status_code == 200
        # Replace cardio's weights on disk and reload it: a new version, while clients keep calling it.
        old_version = client.get("/v1/models/cardio", headers=_auth("ops")).json()["version"]
        shutil.rmtree(deltas / "cardio")
        make_perturbed_delta(tiny_bert_dir, "bitfit", deltas / "cardio", labels=["neg", "pos"], seed=1234, scale=0.3)
        reloaded = client.post("/v1/models/cardio/load", headers=_auth("ops")).json()
        assert reloaded["replaced"] is True and reloaded["version"] != old_version
        # Requests already queued for a delta when it is unloaded are still answered: hold the batcher
        # (a control that waits), queue 8 requests, ask for the unload, then let the batcher go.
        state = served["app"].state.serve
        gate = threading.Event()
        state.batcher.submit(Control(lambda: gate.wait(10)))
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            in_flight = [pool.submit(_predict, client, "triage-head", TEXTS) for _ in range(8)]
            deadline = time.monotonic() + 10
            while state.batcher.queued < 8 + len(workers) and time.monotonic() < deadline:  # each worker queues one too
                time.sleep(0.01)
            unloading = pool.submit(client.post, "/v1/models/triage-head/unload", headers=_auth("ops"))
            while client.get("/v1/models/triage-head", headers=_auth("ops")).status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _predict(client, "triage-head", ["x"]).status_code == 404  # gone for new requests at once
            gate.set()
            answered = [f.result() for f in in_flight]
            assert unloading.result().status_code == 200
        assert [r.status_code for r in answered] == [200] * 8
        time.sleep(0.3)
        assert _predict(client, "triage-head", ["x"]).status_code == 404
        # A grouped delta goes and comes back too.
        assert client.post("/v1/models/derm-full/unload", headers=_auth("ops")).status_code == 200
        assert client.post("/v1/models/derm-full/load", headers=_auth("ops")).status_code == 200
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join()
    # No 5xx and no dropped connection while models came and went; 404 only for a model while it was unloaded.
    codes = {(m, c) for m, c, _ in results}
    assert {c for _, c in codes} <= {200, 404}, codes
    assert ("cardio", 404) not in codes and ("cardio", 200) in codes
    assert {v for m, c, v in results if m == "cardio" and c == 200} == {old_version, reloaded["version"]}
    assert sum(c == 200 for m, c, _ in results if m == "derm-full") > 0
    # Put the module's deltas back as they were for any later test.
    assert client.post("/v1/models/triage-head/load", headers=_auth("ops")).status_code == 200


def test_loading_a_wrong_base_delta_is_refused_with_the_reason(served):
    client = served["client"]
    refused = client.post("/v1/models/wrong-base/load", headers=_auth("ops"))
    assert refused.status_code == 422 and "fingerprint" in refused.json()["detail"]
    missing = client.post("/v1/models/nowhere/load", headers=_auth("ops"))
    assert missing.status_code == 422 and "no delta named 'nowhere'" in missing.json()["detail"]
    assert client.post("/v1/models/nowhere/unload", headers=_auth("ops")).status_code == 404
    assert client.post("/v1/models/..%2Fetc/load", headers=_auth("ops")).status_code in (404, 422)
    assert _predict(client, "cardio", ["still serving"]).status_code == 200


def test_a_tabular_base_serves_feature_objects_as_offline_predict_does(tmp_path):
    from selectune import save_delta, select
    from selectune.train.tabular import TabularMLP, TabularMLPConfig
    from selectune.tasks import TabularClassification

    features, labels = ["age", "bmi", "systolic_bp"], ["no", "yes"]
    torch.manual_seed(0)
    base = tmp_path / "base"
    net = TabularMLP(TabularMLPConfig(n_features=3, n_outputs=2, hidden=[8, 8], dropout=0.0, feature_names=features, labels=labels))
    net.set_statistics(torch.randn(50, 3) * torch.tensor([10.0, 4.0, 15.0]) + torch.tensor([50.0, 25.0, 120.0]))
    net.save_pretrained(base)
    task = TabularClassification(label_col="outcome", labels=labels, feature_cols=features)
    for seed, method in enumerate(["bitfit", "full"]):
        loaded = task.load_model(str(base))
        model = loaded.model
        selection = select(model, method, new_parameters=loaded.new_parameters)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
        save_delta(model, selection, tmp_path / "deltas" / f"site-{method}", metadata={"task": task.metadata(), "base_model": str(base)})
    rows = [{"age": 61, "bmi": 31.2, "systolic_bp": 150}, {"age": 35.5, "bmi": 21.0, "systolic_bp": 110}]
    pd.DataFrame(rows).to_csv(tmp_path / "rows.csv", index=False)
    app = create_app(ServeConfig(base=str(base), deltas=str(tmp_path / "deltas")))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for method, path in [("bitfit", "mixed"), ("full", "grouped")]:
            answer = client.post("/v1/predict", json={"model": f"site-{method}", "inputs": rows})
            assert answer.status_code == 200, answer.text
            assert answer.json()["path"] == path
            offline = pd.read_csv(offline_predict(str(tmp_path / "rows.csv"), out=str(tmp_path / f"{method}.csv"),
                                                  delta=str(tmp_path / "deltas" / f"site-{method}")))
            for i, prediction in enumerate(answer.json()["predictions"]):
                assert prediction["label"] == str(offline.loc[i, "prediction"])
                assert all(abs(prediction["probabilities"][k] - offline.loc[i, f"prob_{k}"]) <= 1e-5 for k in labels)
        for bad, phrase in [([{"age": 61, "bmi": 31.2}], "missing feature(s) ['systolic_bp']"),
                            ([{**rows[0], "sex": 1}], "unknown feature(s) ['sex']"),
                            ([{**rows[0], "age": "sixty"}], "finite numbers"),
                            (["a text"], "takes objects like")]:
            refused = client.post("/v1/predict", json={"model": "site-bitfit", "inputs": bad})
            assert refused.status_code == 422 and phrase in refused.json()["detail"], refused.text


def test_a_registry_as_deltas_serves_each_names_production_version_and_reloads_after_promote(tmp_path):
    # `selectune serve --deltas REGISTRY`: every name is served at its production version; after a promote,
    # an admin reload of that name switches to the new production version without a restart.
    from selectune import save_delta, select
    from selectune.registry.commands import add, promote
    from selectune.train.tabular import TabularMLP, TabularMLPConfig
    from selectune.tasks import TabularClassification

    features, labels = ["age", "bmi"], ["no", "yes"]
    torch.manual_seed(0)
    base = tmp_path / "base"
    net = TabularMLP(TabularMLPConfig(n_features=2, n_outputs=2, hidden=[8], dropout=0.0, feature_names=features, labels=labels))
    net.set_statistics(torch.randn(50, 2) * torch.tensor([10.0, 4.0]) + torch.tensor([50.0, 25.0]))
    net.save_pretrained(base)
    task = TabularClassification(label_col="outcome", labels=labels, feature_cols=features)
    for seed in (1, 2):
        loaded = task.load_model(str(base))
        model = loaded.model
        selection = select(model, "bitfit", new_parameters=loaded.new_parameters)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 2.0)
        save_delta(model, selection, tmp_path / f"v{seed}", metadata={"task": task.metadata(), "base_model": str(base)})
        add(str(tmp_path / f"v{seed}"), name="risk", registry=str(tmp_path / "reg"))
    add(str(tmp_path / "v1"), name="unpromoted", registry=str(tmp_path / "reg"))  # no production version: not served
    promote("risk@1", registry=str(tmp_path / "reg"))
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"sha256": hash_key("k"), "tenant": "ops", "admin": True, "models": ["*"]}]}))
    rows = [{"age": 61, "bmi": 31.2}, {"age": 35.5, "bmi": 21.0}]
    pd.DataFrame(rows).to_csv(tmp_path / "rows.csv", index=False)

    def offline(version):
        frame = pd.read_csv(offline_predict(str(tmp_path / "rows.csv"), out=str(tmp_path / f"off-{version}.csv"), delta=str(tmp_path / version)))
        return [[frame.loc[i, f"prob_{k}"] for k in labels] for i in range(len(rows))]

    def served(client):
        answer = client.post("/v1/predict", json={"model": "risk", "inputs": rows}, headers={"Authorization": "Bearer k"})
        assert answer.status_code == 200, answer.text
        return [[p["probabilities"][k] for k in labels] for p in answer.json()["predictions"]]

    app = create_app(ServeConfig(base=str(base), deltas=str(tmp_path / "reg"), keys=str(keys)))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        names = [m["name"] for m in client.get("/v1/models", headers={"Authorization": "Bearer k"}).json()["models"]]
        assert names == ["risk"]
        v1, v2 = offline("v1"), offline("v2")
        assert max(abs(a - b) for r1, r2 in zip(v1, v2) for a, b in zip(r1, r2)) > 1e-3  # the versions differ
        assert all(abs(a - b) <= 1e-5 for r, o in zip(served(client), v1) for a, b in zip(r, o))
        promote("risk@2", registry=str(tmp_path / "reg"))
        reload = client.post("/v1/models/risk/load", headers={"Authorization": "Bearer k"})
        assert reload.status_code == 200, reload.text
        assert all(abs(a - b) <= 1e-5 for r, o in zip(served(client), v2) for a, b in zip(r, o))
