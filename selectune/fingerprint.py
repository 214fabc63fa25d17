"""Content identities: the base model's fingerprint and a file's sha256.

A delta records the fingerprint of the base it was trained on; loading it onto any other base is refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # Reinterpret as raw bytes so every dtype (bf16 included) hashes without conversion.
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def base_fingerprint(model: nn.Module, exclude: Iterable[str] = ()) -> str:
    """sha256 over sorted (name, dtype, shape, bytes) of the model's state, minus ``exclude``.

    ``exclude`` holds parameters that are random per load (a new classifier), which would make the
    fingerprint of the same checkpoint differ between two loads.
    """
    skip = set(exclude)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in skip:
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return "sha256:" + digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
