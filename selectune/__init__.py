"""selectune: selective parameter-efficient fine-tuning with tiny, verifiable deltas.

The path data takes: data -> select -> train -> evaluate -> delta. Each stage is a module:

    from selectune import select, save_delta, load_delta
    selection = select(model, "bitfit")          # plain nn.Module, requires_grad set
    ...train with anything...
    save_delta(model, selection, "out/delta")    # only what trained + fingerprint of the base
    load_delta(base_model, "out/delta")          # refuses a different base
"""
from selectune.version import __version__

from selectune.selection import Selection, select, trainable_report  # noqa: E402
from selectune.delta import (  # noqa: E402
    DeltaError,
    DeltaFingerprintMismatch,
    load_delta,
    read_delta,
    save_delta,
)
from selectune.fingerprint import base_fingerprint  # noqa: E402
from selectune.methods import METHODS, get_method, register_method  # noqa: E402
from selectune.multi_delta import DeltaSet  # noqa: E402

__all__ = [
    "Selection", "select", "trainable_report",
    "DeltaError", "DeltaFingerprintMismatch", "base_fingerprint", "load_delta", "read_delta", "save_delta",
    "METHODS", "get_method", "register_method", "DeltaSet", "__version__",
]
