"""The task registry: the only list of tasks. Adding a task = one module in this folder + one line below.

A task is a ``Task`` subclass (``base.py``): the one place that knows how its data becomes a model, batches,
a loss, predictions, metrics and a served answer. Stages ask it; none branches on its kind.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from selectune.tasks.base import Example, LoadedModel, Task
from selectune.tasks.errors import InputError, InputLimits, ModelLoadError

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"task {cls.__name__} needs a class variable `name` (its registry name)")
    for attribute in ("hf_task_type", "metric_family", "outputs_probabilities"):
        if not hasattr(cls, attribute):
            raise ValueError(f"task {name!r} needs a class variable `{attribute}` (see selectune/tasks/base.py)")
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered")
    if inspect.isabstract(cls):
        raise TypeError(f"task {name!r} leaves abstract methods unimplemented: {sorted(cls.__abstractmethods__)}")
    TASKS[name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}") from None


def task_from_metadata(data: dict[str, Any]) -> Task:
    """A task from the metadata a delta or merged model carries (``kind`` names the registered task)."""
    return get_task(data["kind"]).from_metadata(data)


def task_from_options(*, label_col: str, text_col: str | None = None, feature_cols: list[str] | None = None,
                      task: str = "classification", max_length: int = 128, prompt_col: str | None = None,
                      response_col: str | None = None) -> Task:
    """The task the train/compare options describe: ``--text-col``, ``--feature-cols`` or ``--prompt-col``/``--response-col``,
    and ``--task``.

    Its labels are set from the data (``task.labels = splits.labels``) once the data are read."""
    if text_col and feature_cols:
        raise ValueError("give either --text-col (text) or --feature-cols (tabular), not both")
    options = dict(label_col=label_col, text_col=text_col, feature_cols=list(feature_cols or []), task=task, max_length=max_length,
                   prompt_col=prompt_col, response_col=response_col)
    for cls in TASKS.values():
        # A task takes the options its from_options names; one given an option (a column) it cannot read is not the task
        # the options describe (--prompt-col is no tabular task).
        wanted = inspect.signature(cls.from_options).parameters
        if any(value for key, value in options.items() if key not in wanted):
            continue
        found = cls.from_options(**{k: v for k, v in options.items() if k in wanted})
        if found is not None:
            return found
    raise ValueError(f"--task must be classification or regression (regression only for tabular data), or generation (free text with --prompt-col/"
                     f"--response-col or --text-col), got {task!r}")


def task_class_for_model_dir(path: str | os.PathLike) -> type[Task]:
    """The task that runs on the base model in ``path`` (serving, ``inspect``: no data yet): the first registered one
    whose own model class the folder was saved as (``prefers_model_dir``: a LLaMA saved as a causal LM is one, though a
    classifier could be put on it too), else the first that can run on it."""
    claiming = [cls for cls in TASKS.values() if cls.claims_model_dir(path)]
    for cls in claiming:
        if cls.prefers_model_dir(path):
            return cls
    if claiming:
        return claiming[0]
    raise ModelLoadError(f"{path} holds no model a registered task ({', '.join(TASKS)}) runs on; give a Hugging Face "
                         "sequence-classification or causal-LM model folder, or a tabular model folder written by `selectune train`.")


def load_base_model(path: str, n_outputs: int = 2, with_tokenizer: bool = True) -> tuple[type[Task], LoadedModel]:
    """(the task class, the base model in eval mode) for a base folder with no task settings yet."""
    cls = task_class_for_model_dir(path)
    return cls, cls.load_base(path, n_outputs, with_tokenizer)


from selectune.tasks.tabular import TabularClassification, TabularRegression  # noqa: E402
from selectune.tasks.text_classification import TextClassification  # noqa: E402
from selectune.tasks.causal_lm import CausalLM  # noqa: E402
from selectune.tasks.text_generation import TextGeneration  # noqa: E402

register_task(TextClassification)
register_task(TabularClassification)
register_task(TabularRegression)
register_task(CausalLM)
register_task(TextGeneration)

__all__ = ["TASKS", "Task", "TextClassification", "TabularClassification", "TabularRegression", "CausalLM", "TextGeneration", "LoadedModel", "Example", "ModelLoadError", "InputError", "InputLimits", "register_task",
           "get_task", "task_from_metadata", "task_from_options", "task_class_for_model_dir", "load_base_model"]
