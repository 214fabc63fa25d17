"""`selectune serve` under hostile or careless clients (issue 13, serving items 1, 5, 6, 9), on real uvicorn servers on
loopback: oversized chunked bodies, a full queue, a flooding tenant, deadlines, clients that leave, listings that
leak server folders, and an unload racing a reload."""
import concurrent.futures
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from benchmarks.serve_deltas import make_perturbed_delta
from selectune.serve import ServeConfig, create_app, hash_key
from selectune.serve.batcher import Control
from selectune.serve.in_process import serve_in_thread

KEYS = {"flood": "flood-key", "a": "tenant-a-key", "b": "tenant-b-key", "ops": "ops-admin-key"}
MODELS = {"flood": ["m1"], "a": ["m1", "m2"], "b": ["m1", "m2"]}


def _auth(who):
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture(scope="module")
def deltas_dir(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    for seed, name in enumerate(["m1", "m2"]):
        make_perturbed_delta(tiny_bert_dir, "bitfit", root / "deltas" / name, labels=["neg", "pos"], seed=seed, scale=0.3)
    damaged = root / "deltas" / "damaged"
    damaged.mkdir()
    (damaged / "delta_config.json").write_text("{not json")  # refused at start, with its path in the reason
    keys = root / "keys.json"
    keys.write_text(json.dumps({"keys": [{"sha256": hash_key(KEYS[t]), "tenant": t, "models": m} for t, m in MODELS.items()]
                               + [{"sha256": hash_key(KEYS["ops"]), "tenant": "ops", "admin": True}]}))
    return root


@contextlib.contextmanager
def _server(tiny_bert_dir, root, keys=True, **settings):
    config = ServeConfig(base=tiny_bert_dir, deltas=str(root / "deltas"), keys=str(root / "keys.json") if keys else None,
                         max_batch_size=8, max_wait_ms=5, max_items=4, max_body_bytes=20_000, **settings)
    app = create_app(config)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, app.state.serve


@pytest.fixture(scope="module")
def limited(tiny_bert_dir, deltas_dir):
    """A server with a 3-request queue, 2 requests in flight per tenant and a generous deadline."""
    with _server(tiny_bert_dir, deltas_dir, max_queued=3, max_in_flight_per_tenant=2, request_timeout_s=60) as served:
        yield served


def _until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@contextlib.contextmanager
def _batcher_held(state):
    """The batcher runs a control that waits: nothing queued meanwhile runs until the block ends."""
    gate = threading.Event()
    state.batcher.submit(Control(lambda: gate.wait(60)))
    _until(lambda: state.batcher.queued == 0)  # the worker is inside the gate
    try:
        yield
    finally:
        gate.set()


def _drain(state):
    """Wait until everything queued before this call has run."""
    state.batcher.submit(Control(lambda: None)).result(60)


def _predict(client, model, who, inputs=("fine",), **kwargs):
    return client.post("/v1/predict", json={"model": model, "inputs": list(inputs)}, headers=_auth(who) if who else {}, **kwargs)


def _metric(client, name, **labels):
    for line in client.get("/metrics", headers=_auth("ops")).text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- item 1: request size counted as bytes arrive -------------------------------------------------------------
def _chunked_post(url, total, chunk=64 * 1024):
    """POST /v1/predict with Transfer-Encoding: chunked (no Content-Length, no key), sending chunks until the server
    answers or ``total`` bytes are sent. Returns (status line, bytes sent)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent, piece = 0, b"%x\r\n" % chunk + b"x" * chunk + b"\r\n"
        try:
            while sent < total and not select.select([sock], [], [], 0.005)[0]:
                sock.sendall(piece)
                sent += chunk
            if sent >= total:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the answer is in the receive buffer
        answer = b""
        while b"\r\n" not in answer:
            part = sock.recv(4096)
            assert part, "the server closed the connection without an answer"
            answer += part
        return answer.split(b"\r\n")[0].decode(), sent


def test_a_chunked_body_without_length_is_refused_413_once_past_the_limit_before_the_key_is_checked(limited):
    client, state = limited
    total = 32 * 1024 * 1024
    status, sent = _chunked_post(str(client.base_url), total)
    assert status.split()[1] == "413", status  # not 401 after reading all of it
    assert sent < total // 4, f"the client sent {sent} bytes before the answer"
    assert _predict(client, "m1", "a").status_code == 200  # still serving


# ---- item 5: bounded queue, per-tenant cap, deadlines, clients that leave -------------------------------------------
def test_a_flooding_tenant_gets_429_past_its_cap_and_a_full_queue_503_with_retry_after(limited):
    client, state = limited
    # The pool is entered first so that it exits last: the batcher is let go before the pool waits for the flood's
    # answers (the other order waited on itself until the gate's own 60 s timeout raced the requests' deadlines).
    with concurrent.futures.ThreadPoolExecutor(4) as pool, _batcher_held(state):
        flood = [pool.submit(_predict, client, "m1", "flood") for _ in range(2)]
        _until(lambda: state.batcher.queued == 2)
        over = _predict(client, "m1", "flood")  # a third request in flight for this tenant
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert "flood" in over.json()["detail"] and "2" in over.json()["detail"]
        other = pool.submit(_predict, client, "m1", "a")  # another tenant is not starved by the flood
        _until(lambda: state.batcher.queued == 3)
        full = _predict(client, "m2", "b")
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1 and "queue" in full.json()["detail"]
    assert [f.result().status_code for f in flood] == [200, 200] and other.result().status_code == 200
    assert _predict(client, "m2", "b").status_code == 200
    assert _predict(client, "m1", "flood").status_code == 200  # the cap counts requests in flight, not in total


def test_a_client_that_left_is_dropped_before_its_job_runs(limited):
    client, state = limited
    before = _metric(client, "selectune_examples_total", model="m2")
    with _batcher_held(state):
        with pytest.raises(httpx.TimeoutException):
            _predict(client, "m2", "b", inputs=["a", "b", "c"], timeout=0.5)  # the client gives up and closes
        _until(lambda: _metric(client, "selectune_requests_dropped_total", reason="disconnected") >= 1)
    _drain(state)
    assert _metric(client, "selectune_examples_total", model="m2") == before  # its 3 examples never ran
    assert _predict(client, "m2", "b").status_code == 200


def test_a_request_past_its_deadline_is_answered_504_and_never_runs(tiny_bert_dir, deltas_dir):
    with _server(tiny_bert_dir, deltas_dir, request_timeout_s=1.0) as (client, state):
        with _batcher_held(state):
            start = time.monotonic()
            late = _predict(client, "m1", "a", inputs=["x", "y"])
            assert late.status_code == 504 and "1" in late.json()["detail"], late.text
            assert time.monotonic() - start < 15
        _drain(state)
        assert _metric(client, "selectune_examples_total", model="m1") == 0.0
        assert _metric(client, "selectune_requests_dropped_total", reason="deadline") == 1.0
        assert _predict(client, "m1", "a").status_code == 200


# ---- item 6: no anonymous public server; health and listings tell nothing about the server ---------------------------
def test_serve_refuses_a_public_host_without_keys_unless_told_it_is_insecure(tiny_bert_dir, deltas_dir):
    from selectune.cli import build_parser
    from selectune.serve.app import check_exposure

    env = {k: v for k, v in os.environ.items()}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-m", "selectune.cli", "serve", "--base", tiny_bert_dir, "--deltas",
                           str(deltas_dir / "deltas"), "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert "--keys" in done.stderr and "--insecure-no-auth" in done.stderr and "Traceback" not in done.stderr
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(ValueError, match="--insecure-no-auth"):
            check_exposure(host, keys=None, insecure_no_auth=False)
        check_exposure(host, keys="keys.json", insecure_no_auth=False)
        check_exposure(host, keys=None, insecure_no_auth=True)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, keys=None, insecure_no_auth=False)
    args = build_parser().parse_args(["serve", "--base", "b", "--deltas", "d", "--insecure-no-auth", "--max-queued", "5",
                                      "--request-timeout-s", "2.5", "--max-in-flight-per-tenant", "3"])
    assert (args.insecure_no_auth, args.max_queued, args.request_timeout_s, args.max_in_flight_per_tenant) == (True, 5, 2.5, 3)


def test_health_says_only_ok_or_not_ok(limited):
    client, state = limited
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    state.batcher.stop()
    try:
        down = client.get("/health")
        assert down.status_code == 503 and down.json() == {"status": "not ok"}
    finally:
        state.batcher.start()
    assert client.get("/health").json() == {"status": "ok"}


def test_model_listings_show_what_a_tenant_may_use_never_server_folders(tiny_bert_dir, deltas_dir, limited):
    client, _ = limited
    folder = str(deltas_dir)
    listed = client.get("/v1/models", headers=_auth("a")).json()
    assert [m["name"] for m in listed["models"]] == ["m1", "m2"] and "refused" not in listed
    one = client.get("/v1/models/m1", headers=_auth("flood")).json()
    for shown in [*listed["models"], one]:
        assert {"name", "version", "path"} <= set(shown) and shown["path"] == "mixed"
        assert folder not in json.dumps(shown) and "source" not in shown
    assert folder not in json.dumps(listed)
    assert folder in json.dumps(client.get("/v1/models", headers=_auth("ops")).json()["refused"])  # the operator sees why
    with _server(tiny_bert_dir, deltas_dir, keys=False) as (open_client, _):  # no keys, loopback: anonymous callers
        anonymous = open_client.get("/v1/models").json()
        assert [m["name"] for m in anonymous["models"]] == ["m1", "m2"] and "damaged" in anonymous["refused"]
        assert folder not in json.dumps(anonymous), anonymous
        assert "not a selectune delta" in anonymous["refused"]["damaged"]
        assert folder not in open_client.get("/v1/models/m2").text


# ---- item 9: an unload racing a reload --------------------------------------------------------------------------
def test_an_unload_racing_a_reload_leaves_routes_and_store_agreeing_and_co_batched_requests_answered(limited):
    client, state = limited
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        with _batcher_held(state):
            loading = pool.submit(client.post, "/v1/models/m2/load", headers=_auth("ops"))
            _until(lambda: state.batcher.queued == 1)  # the reload's commit waits behind the held batcher
            unloading = pool.submit(client.post, "/v1/models/m2/unload", headers=_auth("ops"))
            time.sleep(0.5)  # the unload arrives while the reload is between its route check and its commit
        assert loading.result().status_code == 200 and unloading.result().status_code == 200
        _drain(state)
        assert set(state.routes) == set(state.store.deltas)
        with _batcher_held(state):
            mine = pool.submit(_predict, client, "m1", "a")
            theirs = pool.submit(_predict, client, "m2", "b")
            _until(lambda: state.batcher.queued >= 1)
            time.sleep(0.3)  # both in one batch when m2 was routed
        assert mine.result().status_code == 200
        assert theirs.result().status_code in (200, 404)
    assert client.post("/v1/models/m2/load", headers=_auth("ops")).status_code == 200
    assert _predict(client, "m2", "b").status_code == 200
