"""Per-epoch training checkpoints, written atomically, so ``selectune train --resume`` continues an
interrupted run and ends with the same delta bytes as a run that was never interrupted.

    OUT.checkpoints/epoch-0003/
        tensors.safetensors   trainable parameters, floating buffers, the best epoch's parameters (keep-best),
                              optimizer state (AdamW moments and step counts), torch RNG states
        state.json            epoch, FitResult so far, early-stopping counter, scheduler and optimizer
                              settings, numpy/python RNG states, the run's identity, sha256 of the tensors

An epoch folder is written under a temp name in the same folder, every file fsynced, renamed into place
and the folder fsynced, so an ``epoch-*`` folder is complete; the last ``keep`` are kept. Nothing is
pickled. The data order needs no state: Accelerate's seedable sampler shuffles epoch e with seed + e.
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from selectune.fingerprint import file_sha256
from selectune.io import atomic_write_json, staged_folder

TENSORS, STATE = "tensors.safetensors", "state.json"
PARAM, BUFFER, BEST, OPTIMIZER, RNG = "param/", "buffer/", "best/", "optimizer/", "rng/"


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from; the message says why and what to do."""


@dataclasses.dataclass
class Resumed:
    epoch: int
    result: Any  # FitResult
    best_state: dict[str, torch.Tensor] | None
    stale: int
    seen: int


@dataclasses.dataclass
class Checkpoints:
    folder: Path
    """Where epoch folders go; by convention ``OUT.checkpoints`` beside the run's output folder."""
    identity: dict[str, Any]
    """What the run is (settings, data hashes); resuming with anything different is refused."""
    resume: bool = False
    keep: int = 2

    def __post_init__(self):
        self.folder = Path(self.folder)
        # JSON round trip: the saved identity is compared with what a resumed run builds afresh.
        self.identity = json.loads(json.dumps(self.identity, sort_keys=True, default=str))

    # ---- writing -------------------------------------------------------------------------------
    def save(self, epoch: int, model: nn.Module, optimizer, scheduler, result, best_state, stale: int, seen: int) -> Path:
        tensors: dict[str, torch.Tensor] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                tensors[PARAM + name] = param.detach()
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point():  # running statistics would change; constant id buffers need not travel
                tensors[BUFFER + name] = buffer.detach()
        for name, value in (best_state or {}).items():
            tensors[BEST + name] = value
        optimizer_state = optimizer.state_dict()
        optimizer_json: dict[str, Any] = {"param_groups": optimizer_state["param_groups"], "state": {}}
        for index, entry in optimizer_state["state"].items():
            optimizer_json["state"][str(index)] = {}
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{OPTIMIZER}{index}/{key}"] = value
                else:
                    optimizer_json["state"][str(index)][key] = value
        tensors[RNG + "torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"{RNG}cuda/{i}"] = state
        numpy_state = np.random.get_state()
        state = {
            "epoch": epoch, "identity": self.identity, "result": dataclasses.asdict(result), "stale": stale, "seen": seen,
            "has_best_state": best_state is not None, "scheduler": scheduler.state_dict(), "optimizer": optimizer_json,
            "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            "python_rng": random.getstate(),
        }
        final = self.folder / f"epoch-{epoch:04d}"
        with staged_folder(final) as staging:  # replaces the folder of an epoch a resumed run redoes
            save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(staging / TENSORS))
            state["tensors_sha256"] = file_sha256(staging / TENSORS)
            atomic_write_json(staging / STATE, state)  # written last: a folder with state.json is complete
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old[1], ignore_errors=True)
        return final

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- reading -------------------------------------------------------------------------------
    def complete(self) -> list[tuple[int, Path]]:
        """(epoch, folder) of every checkpoint whose state and tensors are whole, oldest first."""
        found = []
        for path in sorted(self.folder.glob("epoch-*")) if self.folder.is_dir() else []:
            try:
                state = json.loads((path / STATE).read_text())
                if state["tensors_sha256"] == file_sha256(path / TENSORS):
                    found.append((int(state["epoch"]), path))
            except (OSError, ValueError, KeyError):
                continue  # damaged: an older checkpoint may still be good
        return found

    def restore(self, model: nn.Module, optimizer, scheduler, result_type: type) -> Resumed:
        """Load the last complete checkpoint into ``model`` (unwrapped), ``optimizer`` and ``scheduler``; set the RNGs."""
        found = self.complete()
        if not found:
            raise CheckpointError(f"nothing to resume: {self.folder} holds no complete checkpoint (one is written after "
                                  "each epoch). Run again without --resume.")
        epoch, path = found[-1]
        state = json.loads((path / STATE).read_text())
        if state["identity"] != self.identity:
            changed = sorted(k for k in set(state["identity"]) | set(self.identity)
                             if state["identity"].get(k) != self.identity.get(k))
            raise CheckpointError(f"the checkpoint in {path} was written by a run with different {', '.join(changed)}; "
                                  "resume with exactly the same command and data, or start over with --overwrite.")
        tensors = load_file(str(path / TENSORS))
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        with torch.no_grad():
            for key, value in tensors.items():
                if key.startswith(PARAM):
                    params[key[len(PARAM):]].copy_(value)
                elif key.startswith(BUFFER):
                    buffers[key[len(BUFFER):]].copy_(value)
        optimizer_state = {"param_groups": state["optimizer"]["param_groups"],
                           "state": {int(i): dict(entry) for i, entry in state["optimizer"]["state"].items()}}
        for key, value in tensors.items():
            if key.startswith(OPTIMIZER):
                index, name = key[len(OPTIMIZER):].split("/", 1)
                optimizer_state["state"].setdefault(int(index), {})[name] = value
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors[RNG + "torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith(RNG + "cuda/"))]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        kind, keys, *rest = state["numpy_rng"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        best = {k[len(BEST):]: v for k, v in tensors.items() if k.startswith(BEST)} if state["has_best_state"] else None
        return Resumed(epoch=epoch, result=result_type(**state["result"]), best_state=best, stale=state["stale"], seen=state["seen"])
