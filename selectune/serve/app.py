"""``selectune serve``: one base model, many tenants' deltas, mixed in one batch (FastAPI + uvicorn).

Routes (OpenAPI at ``/openapi.json``, interactive at ``/docs``)::

    POST /v1/predict                  {"model": NAME, "inputs": [...]} -> labels, probabilities, delta version
    POST /v1/generate                 causal LM: {"model": NAME, "prompt" or "messages", "max_new_tokens"} -> greedy text
    POST /v1/score                    causal LM: {"model": NAME, "prompt" or "messages", "labels"?} -> label probabilities
    GET  /v1/models                   the deltas this key may use, each with its serving path (mixed | grouped)
    GET  /v1/models/{name}
    POST /v1/models/{name}/load       admin: (re)load NAME from --deltas (or {"path": DIR} inside it) without a restart
    POST /v1/models/{name}/unload     admin: stop serving NAME once the requests already queued for it are answered
    GET  /metrics                     admin: Prometheus text (requests, latency, batch sizes)
    GET  /health                      no key needed: {"status": "ok"} (200) or {"status": "not ok"} (503)

With ``--keys FILE`` every route but /health needs ``Authorization: Bearer KEY`` (format in ``tenants.py``);
without it the model routes are open and the admin routes are off, and the server listens on loopback only
(unless ``--insecure-no-auth``). Limits per request (``admission.py``): body size (413), requests in flight per
tenant (429), the batcher's queue (503), a deadline (504).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from selectune.config import _Lists, option, with_settings
from selectune.serve.admission import (RequestDropped, TenantSlots, answer_or_drop, check_exposure, read_body_within,
                                       redact_paths, replay)
from selectune.serve.batcher import Control, DynamicBatcher, Job, QueueFull
from selectune.serve.delta_store import DeltaStore, ServedDelta, delta_source_within, find_deltas, resolve_delta_source
from selectune.serve.inputs import InputError, InputLimits, check_count, encode_inputs
from selectune.serve.metrics import ServeMetrics
from selectune.serve.paths import ServingPath
from selectune.serve.tenants import KeyEntry, KeyRing

log = logging.getLogger("selectune.serve")
DEFAULT_NEW_TOKENS = 64  # what /v1/generate generates when the request does not say (capped by --max-new-tokens)


@dataclass
class ServeLimits(_Lists):
    """How much the server takes in and how long a request may wait: the limit flags of `selectune serve`."""
    max_batch_size: int = option(32, "most examples in one forward pass")
    max_wait_ms: float = option(5.0, "longest a request waits for others to share its batch")
    max_items: int = option(32, "most inputs in one request")
    max_text_chars: int = option(10_000, "longest text accepted, in characters")
    max_queued: int = option(256, "most requests waiting for the model; past it, 503 with Retry-After")
    request_timeout_s: float = option(30.0, "longest a request waits for its answer; past it, 504 and its job is dropped")
    max_in_flight_per_tenant: int = option(32, "most requests one tenant (key) may have in flight; past it, 429 with Retry-After")
    max_new_tokens: int = option(256, "most new tokens one POST /v1/generate request may ask for (causal LMs)")


@dataclass(kw_only=True)
class ServeConfig(ServeLimits):
    """What ``create_app`` serves: the base, its deltas and key file, and the limits (``ServeLimits``: the flags)."""
    base: str
    """Base model: `minilm` (or `minilm-cls`), an HF model folder, or a selectune tabular model folder."""
    deltas: str
    """Folder with one sub-folder per delta (its name is the model name clients send)."""
    keys: str | None = None
    """JSON key file mapping sha256(API key) to tenants and their deltas; None: open model routes, no admin routes."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServeConfig":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model": "cardiology", "inputs": ["no side effects"]}]})
    model: StrictStr = Field(description="delta name, as listed by GET /v1/models")
    inputs: list[Any] = Field(description="texts (text models) or {feature: number} objects (tabular models)")


class Prediction(BaseModel):
    label: str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


class PredictResponse(BaseModel):
    model: str
    version: str = Field(description="sha256 of the delta's weights that produced these predictions")
    path: str = Field(description="mixed (shared forward pass) or grouped (per-delta pass)")
    predictions: list[Prediction]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "reviews", "prompt": "Review: no side effects at all. Positive or negative?", "max_new_tokens": 8}]})
    model: StrictStr = Field(description="delta name (a causal LM's), as listed by GET /v1/models")
    prompt: Any = Field(default=None, description="a text, read as one user turn through the chat template (or send messages)")
    messages: Any = Field(default=None, description='chat turns [{"role": "user", "content": "..."}], through the chat template')
    max_new_tokens: Any = Field(default=None, description="most tokens to generate, up to the server's --max-new-tokens "
                                                          f"(default: {DEFAULT_NEW_TOKENS} or that limit if lower)")


class GenerateResponse(BaseModel):
    model: str
    version: str = Field(description="sha256 of the delta's weights that generated the text")
    path: str = Field(description="mixed (decoded in a batch shared with other deltas) or grouped (per-delta passes)")
    text: str = Field(description="the greedy continuation, special tokens left out")
    tokens: int = Field(description="tokens generated (the end-of-sequence token included when it stopped on one)")
    token_ids: list[int]
    finish_reason: str = Field(description="stop (end-of-sequence token) or length (max_new_tokens reached)")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "reviews", "prompt": "Review: no side effects at all. Positive or negative?", "labels": ["positive", "negative"]}]})
    model: StrictStr = Field(description="delta name (a causal LM's), as listed by GET /v1/models")
    prompt: Any = Field(default=None, description="a text, read as one user turn through the chat template (or send messages)")
    messages: Any = Field(default=None, description='chat turns [{"role": "user", "content": "..."}], through the chat template')
    labels: Any = Field(default=None, description="the answers to rank (default: the labels the delta was trained on)")


class ScoreResponse(Prediction):
    model: str
    version: str
    path: str


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(default=None, description="delta folder to load, inside the --deltas folder; default: --deltas/NAME")


class ServerState:
    """Everything one app serves: the store (batcher thread), the routes clients see (event loop), keys, metrics."""

    def __init__(self, config: ServeConfig):
        if config.max_items > config.max_batch_size:
            raise ValueError(f"max_items ({config.max_items}) must not exceed max_batch_size ({config.max_batch_size}): "
                             "a request is never split across batches")
        if config.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0 (got {config.request_timeout_s})")
        self.config = config
        self.limits = InputLimits(max_items=config.max_items, max_text_chars=config.max_text_chars,
                                  max_new_tokens=config.max_new_tokens)
        self.keyring = KeyRing.from_file(config.keys) if config.keys else None
        self.metrics = ServeMetrics()
        self.store = DeltaStore(config.base)
        self.routes: dict[str, ServedDelta] = {}
        self.refused: dict[str, str] = {}
        self.tenant_slots = TenantSlots(config.max_in_flight_per_tenant)
        self.admin_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        shared: list[ServedDelta] = []  # deltas of a path that mixes them: its tables are built once, for all
        for name, source in find_deltas(config.deltas).items():
            try:
                delta = self.store.prepare_delta(name, source)
                if self.store.path(delta.serving_path).mixes_deltas:
                    shared.append(delta)
                    continue
                self.store.commit(delta)  # now: a grouped delta's tensors go into its base copy (a `full` one is base-sized)
            except Exception as err:  # any damage refuses this delta only; the others still start
                self.refuse(name, source, err)
                continue
            self._route(delta)
        failed = self.store.commit_new(shared)
        for delta in shared:
            if delta.name in failed:
                self.refuse(delta.name, delta.path, failed[delta.name])
            else:
                self._route(delta)
        self._count_models()
        self.batcher = DynamicBatcher(self.run_batch, config.max_batch_size, config.max_wait_ms / 1000, config.max_queued)

    def _route(self, delta: ServedDelta) -> None:
        self.routes[delta.name] = delta
        log.info("serving delta %r version %s (%s) on the %s path", delta.name, delta.version, delta.selection.method, delta.serving_path)

    def refuse(self, name: str, source: Any, err: Exception) -> None:
        self.refused[name] = str(err)
        self.metrics.refused.inc()
        log.error("refused delta %r from %s: %s", name, source, err)

    def _count_models(self) -> None:
        for path in self.store.paths:
            self.metrics.models.labels(path.name).set(self.served_on(path))

    def served_on(self, path: ServingPath) -> int:
        return sum(d.serving_path == path.name for d in self.routes.values())

    def public_refusals(self) -> dict[str, str]:
        """Why each refused delta was refused, without server folders (for callers without an admin key)."""
        folders = [self.config.deltas, self.config.base]
        return {name: redact_paths(reason, folders) for name, reason in self.refused.items()}

    # ---- batcher thread ------------------------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        for job in jobs:
            self.metrics.queue_wait.observe(start - job.queued_at)
        for job in [j for j in jobs if j.name not in self.store.deltas]:  # never fail the batch for one gone delta
            job.future.set_exception(HTTPException(404, f"model {job.name!r} was unloaded before this request ran"))
        jobs = [j for j in jobs if j.name in self.store.deltas]
        predict = [j for j in jobs if j.operation == "predict"]
        generate = [j for j in jobs if j.operation == "generate"]
        results = self.store.run([(j.name, j.examples, j.task) for j in predict], on_pass=self._observe_pass) if predict else []
        generations = self.store.generate([(j.name, j.examples) for j in generate], on_pass=self._observe_pass) if generate else []
        self.metrics.batch_seconds.observe(time.perf_counter() - start)
        for job, result in zip(predict + generate, results + generations):
            self.metrics.examples.labels(job.name).inc(len(job.examples))
            if job.operation == "generate":
                self.metrics.generated_tokens.labels(job.name).inc(sum(len(g.token_ids) for g in result[0]))
            job.future.set_result(result)

    def _observe_pass(self, path: ServingPath, deltas: list[ServedDelta], examples: int) -> None:
        self.metrics.batch_examples.labels(path.name).observe(examples)
        if path.mixes_deltas:
            self.metrics.batch_deltas.observe(len({d.name for d in deltas}))


def _error(status: int, message: str, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if err.get("type") == "json_invalid":
            return (f"request body is not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))}); "
                    'send {"model": NAME, "inputs": [...]} with Content-Type: application/json')
        parts.append(f"{where}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


class _ObserveAndLimit:
    """ASGI middleware: refuse oversized bodies before they are read; count every request and its latency."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers", [])).get(b"content-length")
            limit = self.state.config.max_body_bytes
            if length is not None and (not length.isdigit() or int(length) > limit):
                response = _error(413, f"request body of {length.decode(errors='replace')} bytes is over the {limit}-byte limit; "
                                       "send fewer or shorter inputs per request")
                return await response(scope, receive, send_observed)
            # Count the bytes as they arrive (a chunked body has no length) and stop reading past the limit,
            # before anything (the key check included) reads the body.
            messages, within = await read_body_within(receive, limit)
            if not within:
                response = _error(413, f"request body is over the {limit}-byte limit; send fewer or shorter inputs per request")
                return await response(scope, receive, send_observed)
            await self.app(scope, replay(messages, receive), send_observed)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.state.metrics.requests.labels(label, scope.get("method", ""), str(status)).inc()
            self.state.metrics.latency.labels(label).observe(time.perf_counter() - start)


def create_app(config: ServeConfig) -> FastAPI:
    """Load the base and every delta in ``config.deltas`` (refusing, with a log line, those that do not fit) and
    build the app. The batcher thread starts and stops with the app's lifespan."""
    state = ServerState(config)

    async def lifespan(app: FastAPI):
        state.batcher.start()
        yield
        state.batcher.stop()

    app = FastAPI(title="selectune serve", version="1", lifespan=lifespan,
                  description="One base model, many tenants' deltas, mixed in one batch.")
    app.state.serve = state
    app.add_middleware(_ObserveAndLimit, state=state)
    caller, admin = _key_dependencies(state)
    _add_error_handlers(app)
    _add_model_routes(app, state, caller)
    _add_generation_routes(app, state, caller)
    _add_admin_routes(app, state, admin)
    return app


_BEARER = HTTPBearer(auto_error=False, description="API key: Authorization: Bearer KEY")


def _key_dependencies(state: ServerState):
    """(caller, admin): FastAPI dependencies giving the request's key entry (None without --keys); admin needs an admin key."""

    def caller(credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> KeyEntry | None:
        if state.keyring is None:
            return None
        if credentials is None:
            raise HTTPException(401, "missing API key: send the header Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"})
        entry = state.keyring.identify(credentials.credentials)
        if entry is None:
            raise HTTPException(401, "unknown API key; ask the server's operator for a key", {"WWW-Authenticate": "Bearer"})
        return entry

    def admin(entry: KeyEntry | None = Depends(caller)) -> KeyEntry:
        if state.keyring is None:
            raise HTTPException(403, "admin routes are off: start the server with --keys FILE holding an admin key")
        if not entry.admin:
            raise HTTPException(403, f"this route needs an admin key; the key of tenant {entry.tenant!r} is not one")
        return entry

    return caller, admin


def _allowed(entry: KeyEntry | None, name: str) -> bool:
    return entry is None or entry.may_use(name)


def _listed(delta: ServedDelta) -> dict[str, Any]:
    """What a caller may know of a served delta: its name, version, serving path, task; not the server folder it came from."""
    return {k: v for k, v in delta.describe().items() if k != "source"}


def _routed(state: ServerState, name: str, entry: KeyEntry | None) -> ServedDelta:
    # 403 before 404: a tenant learns nothing about names outside its own list.
    if not _allowed(entry, name):
        raise HTTPException(403, f"your key (tenant {entry.tenant!r}) may not use model {name!r}")
    if name not in state.routes:
        raise HTTPException(404, f"unknown model {name!r}; GET /v1/models lists the models you may use")
    return state.routes[name]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message = _validation_message(exc.errors())
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and not content_type.startswith("application/json"):
            # e.g. curl -d without -H: the body arrives as a form and is never read as JSON
            message = f"send the body as JSON with the header Content-Type: application/json (got {content_type or 'none'}); " + message
        return _error(422, message, errors=jsonable_encoder(exc.errors(), custom_encoder={Exception: str}))

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, exc: InputError):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error; the server log has the details")


def _add_model_routes(app: FastAPI, state: ServerState, caller) -> None:
    """/health, /v1/models, /v1/models/{name}, /v1/predict: for every key (``caller``)."""
    config = state.config

    @app.get("/health")
    async def health() -> JSONResponse:
        # Only whether it answers: nothing about the base, the models or the load to anonymous callers.
        ok = state.batcher.alive
        return JSONResponse({"status": "ok" if ok else "not ok"}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def list_models(entry: KeyEntry | None = Depends(caller)) -> dict[str, Any]:
        out: dict[str, Any] = {"models": [_listed(d) for n, d in sorted(state.routes.items()) if _allowed(entry, n)]}
        if entry is None:  # no --keys (loopback only): names and reasons, no server folders
            out["refused"] = state.public_refusals()
        elif entry.admin:
            out["base"], out["refused"] = config.base, state.refused
        return out

    @app.get("/v1/models/{name}")
    async def get_model(name: str, entry: KeyEntry | None = Depends(caller)) -> dict[str, Any]:
        return _listed(_routed(state, name, entry))

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(body: PredictRequest, request: Request, entry: KeyEntry | None = Depends(caller)) -> dict[str, Any]:
        check_count(body.inputs, state.limits)
        delta = _routed(state, body.model, entry)
        predictions, used = await _asked(state, request, entry, delta,
                                         lambda: (encode_inputs(delta.task, state.store.tokenizer, body.inputs, state.limits), None))
        return {"model": used.name, "version": used.version, "path": used.serving_path, "predictions": predictions}


def _add_generation_routes(app: FastAPI, state: ServerState, caller) -> None:
    """/v1/generate and /v1/score (causal LMs; other tasks refuse them with a 400 naming /v1/predict)."""

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(body: GenerateRequest, request: Request, entry: KeyEntry | None = Depends(caller)) -> dict[str, Any]:
        delta = _routed(state, body.model, entry)
        budget = body.max_new_tokens if body.max_new_tokens is not None else min(DEFAULT_NEW_TOKENS, state.limits.max_new_tokens)
        (generation,), used = await _asked(
            state, request, entry, delta,
            lambda: ([delta.task.encode_generation(body.prompt, body.messages, budget, state.limits)], None), operation="generate")
        text = await run_in_threadpool(_locked, state, lambda: used.task.decode_generation(generation.token_ids))
        return {"model": used.name, "version": used.version, "path": used.serving_path, "text": text,
                "tokens": len(generation.token_ids), "token_ids": generation.token_ids, "finish_reason": generation.finish_reason}

    @app.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True)
    async def score(body: ScoreRequest, request: Request, entry: KeyEntry | None = Depends(caller)) -> dict[str, Any]:
        delta = _routed(state, body.model, entry)

        def encode():
            task, example = delta.task.encode_scoring(body.prompt, body.messages, body.labels, state.limits)
            return [example], task

        (prediction,), used = await _asked(state, request, entry, delta, encode)
        return {"model": used.name, "version": used.version, "path": used.serving_path, **prediction}


async def _asked(state: ServerState, request: Request, entry: KeyEntry | None, delta: ServedDelta,
                 encode: Callable[[], tuple[list[Any], Any]], operation: str = "predict"):
    """(answer, delta that answered) of one request: ``encode()`` -> (examples, the task formatting the answer or None)
    runs under the tokenizer's lock, then the job waits for its batch, within the tenant's in-flight slots."""
    with state.tenant_slots.hold(entry.tenant if entry is not None else None):
        # Tokenising runs on a worker thread: it waits for the tokenizer (which the batcher holds while it pads
        # a batch) there, never on the event loop. A delta unloaded meanwhile answers 404 from the batcher.
        examples, task = await run_in_threadpool(_locked, state, encode)
        future = _submit(state, Job(delta.name, examples, operation=operation, task=task))
        return await _answer(state, future, request)


def _locked(state: ServerState, work: Callable[[], Any]) -> Any:
    with state.store.tokenizer_lock:  # a fast tokenizer must not run on two threads at once
        return work()


def _submit(state: ServerState, job: Job):
    try:
        return state.batcher.submit(job)
    except QueueFull as err:
        raise HTTPException(503, f"the server is at capacity ({err}); retry after a second", {"Retry-After": "1"}) from None


async def _answer(state: ServerState, future, request: Request):
    try:
        return await answer_or_drop(future, request, state.config.request_timeout_s)
    except RequestDropped as dropped:
        state.metrics.dropped.labels(dropped.reason).inc()
        # 499: nginx's "client closed request"; nobody reads it, but the log and metrics do
        raise HTTPException(504 if dropped.reason == "deadline" else 499, str(dropped)) from None


def _add_admin_routes(app: FastAPI, state: ServerState, admin) -> None:
    """/v1/models/{name}/load, /v1/models/{name}/unload, /metrics: admin key only (``admin``)."""
    config = state.config

    def one_change_per_name(route):
        # A load or unload of one name waits for the one before it: an unload cannot slip in between a reload's
        # commit and its route, which left a route without its store entry (and failed the batches it joined).
        @functools.wraps(route)
        async def serialized(**kwargs):
            async with state.admin_locks[kwargs["name"]]:
                return await route(**kwargs)
        return serialized

    @app.post("/v1/models/{name}/load")
    @one_change_per_name
    async def load(name: str, body: LoadRequest | None = None, _: KeyEntry = Depends(admin)) -> dict[str, Any]:
        given = body.path if body is not None and body.path else None
        try:
            source = delta_source_within(config.deltas, given) if given else resolve_delta_source(config.deltas, name)
            # Read, hash, fingerprint and check off the batcher thread; the commit below only swaps references.
            delta = await run_in_threadpool(state.store.prepare_delta, name, source)
        except Exception as err:  # any damage (IndexError, KeyError, ...) is this delta's refusal, never a 500
            state.refuse(name, given or name, err)
            raise HTTPException(422, f"delta {name!r} was not loaded: {err}") from None
        try:
            await asyncio.wrap_future(state.batcher.submit(Control(lambda: state.store.commit(delta))))
        except Exception as err:  # e.g. a weight delta whose shapes do not fit the base copy
            state.refuse(name, delta.path, err)
            raise HTTPException(422, f"delta {name!r} was not loaded: {err}") from None
        replaced = name in state.routes
        state.routes[name] = delta
        state.refused.pop(name, None)
        state._count_models()
        log.info("%s delta %r version %s on the %s path", "reloaded" if replaced else "loaded", name, delta.version, delta.serving_path)
        return {**delta.describe(), "replaced": replaced}

    @app.post("/v1/models/{name}/unload")
    @one_change_per_name
    async def unload(name: str, _: KeyEntry = Depends(admin)) -> dict[str, Any]:
        if name not in state.routes:
            raise HTTPException(404, f"model {name!r} is not loaded; GET /v1/models lists what is")
        delta = state.routes.pop(name)  # new requests get 404 from here on; queued ones are answered first
        await asyncio.wrap_future(state.batcher.submit(Control(lambda: state.store.remove(name))))
        state._count_models()
        log.info("unloaded delta %r version %s", name, delta.version)
        return {"unloaded": name, "version": delta.version}

    @app.get("/metrics")
    async def metrics(_: KeyEntry = Depends(admin)) -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)


def serve(*, base: str, deltas: str, keys: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits = ServeLimits(), insecure_no_auth: bool = False, log_level: str = "info", **settings: Any) -> None:
    """Serve many deltas of one base over HTTP, mixing requests for different deltas in one batch.

    base: base model: `minilm` (or `minilm-cls`), an HF model folder, or a selectune tabular model folder
    deltas: folder with one sub-folder per delta (delta_config.json + delta.safetensors, or a train run with delta/; the sub-folder name is the model name), a `selectune registry` folder (each name's production version), or NAME=MODEL,... with each MODEL a `selectune train --out` folder, its delta/ folder or a registry reference NAME@VERSION (REGISTRY_DIR/NAME@VERSION)
    keys: JSON key file mapping sha256 hashes of API keys to tenants and deltas (see README); without it model routes are open and admin routes are off
    host: address to listen on; without --keys only a loopback address (127.0.0.1, ::1, localhost) unless --insecure-no-auth
    port: port to listen on
    insecure_no_auth: listen on a non-loopback --host without --keys (every model open to anyone who can connect)
    log_level: uvicorn log level (debug, info, warning, error)
    """
    import uvicorn

    limits = with_settings("serve", {"limits": limits}, settings)["limits"]  # Python callers may pass limits flat
    check_exposure(host, keys, insecure_no_auth)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(base=base, deltas=deltas, keys=keys, **dataclasses.asdict(limits))
    app = create_app(config)
    state = app.state.serve
    per_path = ", ".join(f"{state.served_on(path)} {path.name}" for path in state.store.paths)
    log.info("base %s: %d delta(s) served (%s), %d refused; listening on http://%s:%d",
             base, len(state.routes), per_path, len(state.refused), host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
