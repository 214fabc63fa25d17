"""Serving: one base model, many tenants' deltas, mixed in one batch.

    mixed_model.py   per-example bias/LayerNorm gather from stacked tables, heads per group (one forward pass)
    paths.py         serving paths behind one interface: mixed (shared pass) and grouped (per delta on a base copy)
    delta_store.py   the deltas one server holds, which path each takes, running a batch of requests
    generation.py    greedy decoding of a batch of requests (any deltas): left padding, one KV cache, finished rows leave
    batcher.py       the dynamic batcher (max batch size, max wait); hot load/unload between batches
    inputs.py        request inputs -> model inputs, with 4xx messages
    admission.py     limits per request: body bytes as they arrive, in flight per tenant, deadline, client gone; no public host without keys
    tenants.py       hashed API keys -> tenants and the deltas they may use
    metrics.py       Prometheus metrics
    app.py           the FastAPI app and ``selectune serve``
"""
from selectune.serve.app import ServeConfig, create_app, serve
from selectune.serve.mixed_model import MixedBiasModel, MixedDelta, mixed_path_obstacle
from selectune.serve.tenants import KeyRing, hash_key

__all__ = ["ServeConfig", "create_app", "serve", "MixedBiasModel", "MixedDelta", "mixed_path_obstacle", "KeyRing", "hash_key"]
