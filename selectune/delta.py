"""The delta is the product: only what trained, in safetensors, with a JSON config that names the base.

Layout of a delta directory::

    delta.safetensors    trained tensors, by parameter name: whole tensors dense; a masked tensor as
                         ``<name>.__indices__`` (k,) int64 flat indices + ``<name>.__values__`` (k,)
    delta_config.json    format, library version, the Selection (method, options, base fingerprint,
                         new parameters), tensor shapes, sha256 of the safetensors file, task metadata

Verbs come in mirror pairs: ``save_delta``/``read_delta``, ``load_delta`` applies one to a base model.
Only safetensors and JSON are ever read: pickles (``.bin``, ``.pt``) can run code when unpickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from selectune.fingerprint import base_fingerprint, file_sha256
from selectune.io import atomic_write_json, staged_file
from selectune.masks import SparseEntries, effective_tensor, flat_indices
from selectune.methods.bias_insertion import insert_biases, remove_biases
from selectune.roles import parameter_roles
from selectune.selection import Selection
from selectune.version import __version__

DELTA_WEIGHTS = "delta.safetensors"
DELTA_CONFIG = "delta_config.json"
FORMAT = "selectune-delta"
FORMAT_VERSION = 1
INDICES, VALUES = ".__indices__", ".__values__"  # key suffixes of a masked tensor's entries
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}


class DeltaError(ValueError):
    """A delta cannot be read, written or applied; the message says why and what to do."""


class DeltaFingerprintMismatch(DeltaError):
    """The delta was trained on a different base model than the one it is being applied to."""

    def __init__(self, expected: str, actual: str, path: str, hint: str | None = None):
        self.expected, self.actual = expected, actual
        super().__init__(
            f"delta {path} was trained on base fingerprint {expected}, but this model's fingerprint is {actual}. "
            + (f"{hint[0].upper()}{hint[1:]}. " if hint else "")
            + "Load the base model the delta was trained on (its path is in delta_config.json), "
            "or pass force=True (CLI: --force) to apply it anyway."
        )


def save_delta(model: nn.Module, selection: Selection, out_dir: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write the trained tensors of ``model`` named by ``selection`` to ``out_dir``.

    ``metadata``: task information kept with the delta (labels, base model path, model class, ...).
    Refuses non-finite values: a NaN delta would silently poison every prediction after merge.
    """
    out = Path(out_dir)
    tensors, described = {}, {}
    masked = set(selection.masked)
    if masked - set(selection.masks):
        raise DeltaError(f"the selection masks {sorted(masked - set(selection.masks))[:3]} but holds no mask tensors; "
                         "save with the Selection that select() returned")
    for name in selection.trainable:
        # The tensor the forward pass uses: works on a masked (parametrized) model and after merge_masks.
        full = effective_tensor(model, name).detach()
        if name in masked:
            indices = flat_indices(selection.masks[name]).to(full.device)
            value = full.reshape(-1)[indices].to("cpu").clone()  # (k,)
        else:
            value = full.to("cpu").contiguous().clone()
        if not torch.isfinite(value).all():
            raise DeltaError(f"parameter {name} holds NaN or inf values; the delta was not saved. Lower the learning rate or check the data.")
        described[name] = {"shape": list(full.shape), "dtype": str(value.dtype).replace("torch.", "")}
        if name in masked:
            tensors[name + INDICES], tensors[name + VALUES] = indices.to("cpu"), value
            described[name]["nonzero"] = value.numel()
        else:
            tensors[name] = value
    with staged_file(out / DELTA_WEIGHTS) as tmp:  # safetensors writes the file itself, by name (a unique temp name)
        try:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        except SafetensorError as err:  # e.g. a full disk: the temp file goes, nothing is left half-written
            raise OSError(f"writing the delta to {out} failed ({err}); nothing was saved. Free disk space and save again.") from None
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "selectune_version": __version__,
        "selection": selection.to_dict(),
        "tensors": described,
        "weights_sha256": file_sha256(out / DELTA_WEIGHTS),
        "metadata": metadata or {},
    }
    # The config is written last: a directory with a config always has complete weights.
    atomic_write_json(out / DELTA_CONFIG, config)
    return out


def _refuse_non_safetensors(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise DeltaError(
            f"{path} is a {path.suffix} file; selectune reads only safetensors + JSON deltas and never unpickles files "
            "(unpickling can run arbitrary code). Convert it with safetensors.torch.save_file from a trusted environment."
        )
    with open(path, "rb") as handle:
        head = handle.read(9)
    size = path.stat().st_size
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if not (len(head) == 9 and 0 < header_len < size and head[8:9] == b"{"):
        kind = "a pickle" if head[:1] == b"\x80" else "a zip/torch.save archive" if head[:2] == b"PK" else "not safetensors"
        raise DeltaError(
            f"{path} is {kind}, not a safetensors file; selectune never unpickles deltas. "
            "Give the directory written by `selectune train` (delta.safetensors + delta_config.json)."
        )


def read_delta(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor | SparseEntries], dict[str, Any]]:
    """Read a delta directory (or its ``delta.safetensors``): (tensors, config). Verifies the file hash.

    Tensors are keyed by parameter name: whole ones dense, masked ones as ``SparseEntries`` (indices + values).
    """
    path = Path(path)
    if not path.exists():
        raise DeltaError(f"delta not found: {path}. Give the directory written by `selectune train --out`.")
    if path.is_file():
        _refuse_non_safetensors(path)
        path = path.parent
    weights, config_path = path / DELTA_WEIGHTS, path / DELTA_CONFIG
    for required in (weights, config_path):
        if not required.is_file():
            others = sorted(p.name for p in path.iterdir())[:10]
            raise DeltaError(f"{path} is not a selectune delta: {required.name} is missing (found: {others}).")
    _refuse_non_safetensors(weights)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DeltaError(f"{config_path} is not valid JSON ({err}); the delta is damaged, re-export it.") from None
    if config.get("format") != FORMAT:
        raise DeltaError(f"{config_path} is not a selectune delta config (format={config.get('format')!r}).")
    data = weights.read_bytes()  # hashed and decoded from one read: the tensors are the bytes the hash names
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if config.get("weights_sha256") != actual:
        raise DeltaError(
            f"{weights} does not match its recorded hash ({config.get('weights_sha256')} recorded, {actual} on disk); "
            "the file was changed or damaged. Restore it from the original delta."
        )
    try:
        raw = load_safetensors(data)
    except Exception as err:  # a crafted header (bad offsets, dtypes) the hash was recomputed over
        raise DeltaError(f"{weights} cannot be decoded as safetensors ({err}); the delta is damaged, re-export it.") from None
    return _decode_sparse(raw, config, path), config


def _decode_sparse(raw: dict[str, torch.Tensor], config: dict[str, Any], path: Path) -> dict[str, torch.Tensor | SparseEntries]:
    tensors: dict[str, torch.Tensor | SparseEntries] = {n: t for n, t in raw.items() if not n.endswith((INDICES, VALUES))}
    for key in raw:
        if key.endswith(INDICES):
            name = key[: -len(INDICES)]
            values, shape = raw.get(name + VALUES), config.get("tensors", {}).get(name, {}).get("shape")
            if values is None or shape is None or values.shape != raw[key].shape:
                raise DeltaError(f"{path}: masked tensor {name} lacks its values or recorded shape; the delta is damaged, re-export it.")
            entries = SparseEntries(raw[key], values, tuple(shape))
            problem = sparse_problem(name, entries, math.prod(entries.shape))
            if problem:
                raise DeltaError(f"{path}: {problem}; the delta is damaged, re-export it.")
            tensors[name] = entries
    orphans = [k for k in raw if k.endswith(VALUES) and k[: -len(VALUES)] not in tensors]
    if orphans:
        raise DeltaError(f"{path}: {orphans[0]} has no matching indices; the delta is damaged, re-export it.")
    return tensors


def verify_base(model: nn.Module, selection: Selection, path: str | os.PathLike, *, force: bool = False) -> None:
    """Refuse ``model`` unless its fingerprint is the one ``selection`` was trained on (warn instead with ``force``).

    New and inserted parameters are excluded: random per load, or absent from the base.
    """
    actual = base_fingerprint(model, exclude=[*selection.new_parameters, *selection.inserted_parameters])
    if actual != selection.base_fingerprint:
        if not force:
            raise DeltaFingerprintMismatch(selection.base_fingerprint, actual, str(path))
        warnings.warn(
            f"applying delta {path} to a base with fingerprint {actual}; it was trained on {selection.base_fingerprint} (force=True)",
            stacklevel=3,
        )


def sparse_problem(name: str, entries: SparseEntries, numel: int) -> str | None:
    """What is wrong with a masked tensor's stored entries for a tensor of ``numel`` entries, or None.

    Indices must be a flat integer vector, one value each, inside the tensor and each at most once (two values
    for one entry would leave which one lands to the kernel).
    """
    indices = entries.indices
    if indices.dtype not in (torch.int64, torch.int32):  # uint8 would index as a mask
        return f"masked tensor {name} has {str(indices.dtype).replace('torch.', '')} indices; they must be integer (int64)"
    if indices.dim() != 1 or entries.values.shape != indices.shape:
        return f"masked tensor {name} has indices of shape {tuple(indices.shape)} and values of shape {tuple(entries.values.shape)}; both must be (k,)"
    if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < numel):
        return f"masked tensor {name} has indices outside its {numel} entries"
    if torch.unique(indices).numel() != indices.numel():
        return f"masked tensor {name} repeats an index"
    return None


def delta_shape_problem(model: nn.Module, tensors: dict[str, torch.Tensor | SparseEntries], selection: Selection) -> str | None:
    """Why ``tensors`` do not fit ``model``'s shapes, or None. Every tensor must be one of the model's parameters
    (or a bias the selection inserts) with the same shape; only a head (role ``head``) may have another number of
    outputs (labels). A delta that widened a body layer would change the width every other delta runs at."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    role_of = parameter_roles(model)
    inserted = set(selection.inserted_parameters)
    for name, value in sorted(tensors.items()):
        shape = tuple(value.shape)
        if name in params:
            base = tuple(params[name].shape)
        elif name in inserted and isinstance(modules.get(name.rpartition(".")[0]), nn.Linear):
            base = (modules[name.rpartition(".")[0]].out_features,)
        else:
            return f"has parameter {name}, which this model lacks; is this the right kind of base model?"
        if shape == base or (role_of.get(name) == "head" and len(shape) == len(base) >= 1 and shape[1:] == base[1:]):
            continue
        return f"{name} has shape {shape}, the base's is {base}; only a head may differ (in its number of outputs)"
    return None


def write_delta_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], selection: Selection, path: str | os.PathLike) -> list[str]:
    """Insert the zero biases the delta needs and the model lacks, check names, shapes and indices, then copy
    ``tensors`` in.

    Returns the biases it inserted. On any failure (a bad name, shape or index, or a write that fails half-way)
    the model is left as it was: the written tensors are restored and the inserted biases removed.
    """
    have = {n for n, _ in model.named_parameters()}
    try:
        inserted = insert_biases(model, [n for n in selection.inserted_parameters if n not in have])
    except ValueError as err:
        raise DeltaError(f"delta {path}: {err}; is this the right kind of base model?") from None
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        if name not in params:
            problem = f"has parameter {name}, which this model lacks; is this the right kind of base model?"
        elif tuple(params[name].shape) != tuple(value.shape):
            problem = f"{name} has shape {tuple(value.shape)} but the model's is {tuple(params[name].shape)} (e.g. a different number of labels)."
        elif isinstance(value, SparseEntries):
            problem = sparse_problem(name, value, params[name].numel())
            if problem is None:
                continue
            problem += "; the delta is damaged."
        else:
            continue
        remove_biases(model, inserted)
        raise DeltaError(f"delta {path}: {problem}")
    _write_or_restore(model, params, tensors, inserted, path)
    return inserted


def _write_or_restore(model: nn.Module, params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor | SparseEntries],
                      inserted: list[str], path: str | os.PathLike) -> None:
    """Copy ``tensors`` into ``params``; on any failure put back what was written and remove ``inserted``."""
    written: dict[str, torch.Tensor] = {}  # name -> its value before this write
    try:
        with torch.no_grad():
            for name, value in tensors.items():
                written[name] = params[name].detach().clone()
                if isinstance(value, SparseEntries):
                    value.write_into(params[name])  # index_put_ on the flat view: only the masked entries
                else:
                    params[name].copy_(value.to(params[name].dtype))
    except Exception as err:
        with torch.no_grad():
            for name, before in written.items():
                params[name].copy_(before)
        remove_biases(model, inserted)
        raise DeltaError(f"delta {path}: writing {name} failed ({err}); the model is left as it was. The delta is damaged, re-export it.") from None


def load_delta(model: nn.Module, path: str | os.PathLike, *, force: bool = False) -> dict[str, Any]:
    """Apply the delta at ``path`` to ``model`` in place; returns its config.

    Refuses a model whose fingerprint differs from the one the delta was trained on, unless ``force``.
    Zero biases the delta's selection inserted (bitfit ``add_missing_biases``) are inserted again first.
    """
    tensors, config = read_delta(path)
    selection = Selection.from_dict(config["selection"])
    verify_base(model, selection, path, force=force)
    write_delta_tensors(model, tensors, selection, path)
    return config


def read_selection(path: str | os.PathLike) -> Selection:
    """The Selection a delta was saved with, its element masks rebuilt from the stored indices."""
    tensors, config = read_delta(path)
    selection = Selection.from_dict(config["selection"])
    for name in selection.masked:
        entries = tensors[name]
        mask = torch.zeros(math.prod(entries.shape), dtype=torch.bool)
        mask[entries.indices] = True
        selection.masks[name] = mask.reshape(entries.shape)
    return selection


def stack_selection(parent: Selection, child: Selection, model: nn.Module) -> Selection:
    """What to save after ``child`` trained on top of ``parent``'s delta: both, against the parent's base.

    A continual update starts from the parent's state, so its own Selection names that state as its base.
    Saving the union against the original base instead keeps every version one delta on one base (what
    ``load_delta``, ``merge`` and a server of many deltas expect). A tensor whole in either is whole; one
    masked in both keeps the union of the masks. Method and options are the child's.
    """
    union = sorted(set(parent.trainable) | set(child.trainable))
    masks = {}
    for name in union:
        owners = [s for s in (parent, child) if name in s.trainable]
        if all(name in s.masked for s in owners):
            masks[name] = torch.stack([s.masks[name].cpu() for s in owners]).any(0)
    counts = {name: int(masks[name].sum()) if name in masks else effective_tensor(model, name).numel() for name in union}
    return Selection(
        method=child.method, options=child.options, trainable=union, new_parameters=list(parent.new_parameters),
        base_fingerprint=parent.base_fingerprint, roles={n: {**parent.roles, **child.roles}[n] for n in union},
        total_parameters=child.total_parameters, trainable_parameters=sum(counts.values()),
        inserted_parameters=sorted(set(parent.inserted_parameters) | set(child.inserted_parameters)),
        masked=sorted(masks), masks=masks,
    )
