"""The settings of ``train``, ``compare``, ``update``, ``gate`` and ``check`` as dataclasses: declared once, validated once.

Each field carries its ``help`` in its metadata; ``selectune.cli`` expands a parameter annotated with one of
these classes into one ``--flag`` per field, so no option is declared twice. A command that does not use a
field drops it with ``Annotated[Config, without("field")]``; a command with another default passes an instance
as the parameter's default (``update`` holds out 25% for test).

List fields (``feature_cols``, ``hidden``, ``seeds``, ``group_cols``, ``methods``) are lists after
construction; a comma string (``"a,b"``, the old Python form) or a list of comma strings (the command line's
``--feature-cols a,b`` or ``--feature-cols a b``) is split into one.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

TASKS = ("classification", "regression", "generation")
ITEM_NAMES = {int: "integers", float: "numbers", str: "names"}


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata) -> Any:
    """A dataclass field with its help text; a list default becomes a factory (each instance its own list)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def as_list(value: Any, item_type: type, flag: str) -> list:
    """``"a,b"``, ``["a,b"]``, ``["a", "b"]`` -> ``["a", "b"]`` (items converted to ``item_type``); None -> []."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in (v.split(",") if isinstance(v, str) else [v])]
    parts = [p.strip() if isinstance(p, str) else p for p in parts]
    try:
        return [item_type(p) for p in parts if p != ""]
    except (TypeError, ValueError):
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        raise ValueError(f"{flag} must be comma-separated {ITEM_NAMES.get(item_type, item_type.__name__)} such as "
                         f"{'0,1,2' if item_type is int else 'a,b'}; got {shown!r}") from None


def flag_name(name: str) -> str:
    # A trailing underscore lets a Python keyword be a flag: ``from_`` -> ``--from``.
    return "--" + name.rstrip("_").replace("_", "-")


def list_item_type(annotation: Any) -> type | None:
    """``list[int]`` (or ``list[int] | None``) -> int; anything else -> None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
    return None


class _Lists:
    """Mixin: every ``list[...]`` field is normalised by :func:`as_list` after construction."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            item = list_item_type(hints[f.name])
            if item is not None:
                setattr(self, f.name, as_list(getattr(self, f.name), item, flag_name(f.name)))


@dataclass
class ColumnsConfig(_Lists):
    """What the model reads from the data, and what kind of target it predicts."""
    label_col: str = option("label", "column with the label")
    text_col: str | None = option(None, "column with the text (text classification)")
    feature_cols: list[str] = option([], "numeric feature columns (tabular): a b c or a,b,c")
    task: str = option("classification", "classification, regression (tabular) or generation (free text: --prompt-col/--response-col "
                                          "with free-form responses, or --text-col for plain language modelling)")
    prompt_col: str | None = option(None, "column with the prompt (causal-lm: a decoder LM learns to answer it)")
    response_col: str | None = option(None, "column with the response the model learns to give (causal-lm; replaces --label-col)")

    def validate(self) -> None:
        if self.text_col and self.feature_cols:
            raise ValueError("give either --text-col (text) or --feature-cols (tabular), not both")
        if self.prompt_col and (self.text_col or self.feature_cols):
            raise ValueError("give either --prompt-col (causal-lm) or --text-col / --feature-cols, not both")
        if bool(self.prompt_col) != bool(self.response_col):
            raise ValueError("causal-lm needs both --prompt-col (what the model reads) and --response-col (what it learns to answer)")
        if self.task not in TASKS or (self.text_col and self.task == "regression") or (self.feature_cols and self.task == "generation"):
            raise ValueError(f"--task must be classification or regression (regression only for tabular data), or generation (free text with "
                             f"--prompt-col/--response-col or --text-col), got {self.task!r}")


@dataclass
class SplitConfig(_Lists):
    """Which rows train, validate and test."""
    validation: str | None = option(None, "validation file; default: split --val-fraction off TRAIN")
    test: str | None = option(None, "test file; default: split --test-fraction off TRAIN (0 = no test)")
    val_fraction: float = option(0.15, "fraction of TRAIN held out for validation when --validation is not given")
    test_fraction: float = option(0.0, "fraction of TRAIN held out for test when --test is not given")
    group_col: str | None = option(None, "patient/group id column: all rows of a group stay in one split")


@dataclass
class ModelConfig(_Lists):
    """The base model, and the shape of what is new on it."""
    model: str = option(help="base model: a local HF folder, `minilm` (bundled all-MiniLM-L6-v2, read by mean pooling as it "
                             "was trained; also `minilm-mean`), `minilm-cls` (the same through its leftover CLS pooler), `smollm2` (bundled SmolLM2-135M-Instruct, causal-lm), `mlp` (new tabular MLP) or a tabular model folder")
    hidden: list[int] = option([64, 64], "hidden layer sizes of a new tabular MLP: 64 64 or 64,64")
    max_length: int = option(128, "max tokens per text")

    @property
    def hidden_text(self) -> str:
        """``"64,64"``: how run_config.json and compare.json have always recorded it."""
        return ",".join(map(str, self.hidden))


@dataclass
class PreprocessingConfig(_Lists):
    """How a new tabular base prepares its inputs (fitted on the training split, stored with the model); an update
    reuses its base's preprocessing."""
    impute: str | None = option(None, "fill missing feature values: median, mean or most_frequent (categorical columns: most frequent level)")
    missing_indicators: bool = option(False, "add a 0/1 'was missing' feature for each column with missing training values (with --impute)")
    categorical_cols: list[str] = option([], "feature columns holding categories (one-hot; a value unseen in training is 'unknown'): a b or a,b")

    def validate(self) -> None:
        if self.impute not in (None, "median", "mean", "most_frequent"):
            raise ValueError(f"--impute must be median, mean or most_frequent, got {self.impute!r}")
        if self.missing_indicators and not self.impute:
            raise ValueError("--missing-indicators marks imputed values: add --impute median (or mean, most_frequent)")

    @property
    def requested(self) -> bool:
        return bool(self.impute or self.missing_indicators or self.categorical_cols)


@dataclass
class TrackingConfig(_Lists):
    """Where a finished command is logged besides its OUT folder: an MLflow tracking server (``selectune.tracking``;
    the optional extra ``pip install 'selectune[mlflow]'``). Logged after the local outputs are complete."""
    mlflow_uri: str | None = option(None, "also log the finished run to this MLflow tracking server, e.g. http://127.0.0.1:5000 "
                                          "(settings, metrics with CIs, the delta, the gate result; needs pip install 'selectune[mlflow]')")
    mlflow_experiment: str = option("selectune", "MLflow experiment the runs go into (with --mlflow-uri)")


@dataclass
class TrainConfig(_Lists):
    """How the loop trains (``selectune.train.loop.fit``)."""
    lr: float | None = option(None, "learning rate (default: the method's, bitfit 1e-3, full 3e-5)")
    # New parameters start random with nothing pretrained to preserve, and MiniLM's pooler outputs are ~0.03 in
    # scale, so at lr 1e-3 a fresh classifier cannot grow large enough in a few hundred steps to separate classes.
    new_lr: float | None = option(1e-2, "learning rate of new parameters (a fresh classifier) when pretrained ones train too")
    epochs: int = option(3, "training epochs")
    batch_size: int = option(32, "examples per optimizer step per process")
    eval_batch_size: int = option(64, "examples per evaluation batch", cli=False)
    weight_decay: float = option(0.0, "AdamW weight decay on matrices")
    warmup_ratio: float = option(0.1, "fraction of steps with linear warmup")
    seed: int = option(0, "seed for splits, init, shuffling and dropout")
    grad_accum: int = option(1, "gradient accumulation steps")
    mixed_precision: str = option("no", "no, fp16 or bf16")
    metric: str | None = option(None, "validation metric for keep-best/early stopping (default macro_f1, or rmse for regression)")
    patience: int | None = option(None, "stop after this many epochs without validation improvement")
    keep_best: bool = option(True, "restore the best validation epoch at the end")
    class_weight: str | None = option(None, "`balanced` weights the loss by inverse class frequency")
    # HF attention reads its module's ``p`` too; set back after training, so a merged copy keeps its own dropout.
    dropout: float | None = option(None, "dropout probability while training, for every dropout layer (default: the model's own)")
    progress: bool = option(True, "show the progress bar")

    def validate(self) -> None:
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"--class-weight must be 'balanced' or omitted, got {self.class_weight!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1) (0 turns dropout off), got {self.dropout}")

    def for_task(self, default_metric: str) -> TrainConfig:
        """This config with the metric filled in: the task's default (macro_f1 for classification, rmse for regression)."""
        return dataclasses.replace(self, metric=self.metric or default_metric)


@dataclass
class OutputConfig(_Lists):
    """What ``train`` writes besides the delta, and what it does with an OUT (or its checkpoints) already there."""
    save_model: bool = option(False, "also write the merged model to OUT/model (always done for a new MLP)")
    checkpoint: bool = option(True, "write a checkpoint after each epoch to OUT.checkpoints/ (removed when the run completes)")
    resume: bool = option(False, "continue an interrupted run from the last complete checkpoint in OUT.checkpoints/")
    overwrite: bool = option(False, "replace OUT if it exists")


@dataclass(frozen=True)
class Without:
    """``Annotated[Config, without("lr")]``: the command has no flag for these fields (it sets them itself)."""
    names: tuple[str, ...]


def without(*names: str) -> Without:
    return Without(names)


def cli_fields(cls: type, dropped: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that become flags."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and f.name not in dropped]


def with_settings(command: str, configs: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Python callers may pass any config field flat (``train(path, model="mlp", epochs=1)``): each goes to the
    config that declares it. A config given as a class is built from the settings (its required fields must be there)."""
    owner = {f.name: key for key, cfg in configs.items() for f in dataclasses.fields(cfg)}
    unknown = sorted(set(settings) - set(owner))
    if unknown:
        raise TypeError(f"{command}() got unexpected keyword argument(s): {', '.join(unknown)}")
    resolved = {}
    for key, cfg in configs.items():
        mine = {name: value for name, value in settings.items() if owner[name] == key}
        resolved[key] = cfg(**mine) if isinstance(cfg, type) else dataclasses.replace(cfg, **mine) if mine else cfg
    return resolved


@dataclass
class CheckThresholds(_Lists):
    """When a data check warns (``selectune check``, ``run_checks``)."""
    min_group_size: int = option(30, "subgroups with fewer rows than this in a split are warned about")
    imbalance_ratio: float = option(3.0, "warn when the largest class is this many times the smallest")
    max_prevalence_shift: float = option(0.05, "warn when a class's share differs this much between splits (and beyond chance)")
    max_missingness_shift: float = option(0.1, "warn when a feature's share of missing values differs this much between splits (and beyond chance)")
