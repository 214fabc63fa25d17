"""The command line. Thin: each command is a library function whose signature *is* the CLI.

Positional parameters become positional arguments, keyword-only ones become ``--flags`` with their
defaults shown, and the ``name: help`` lines of the docstring become the help text. A parameter annotated
with a config dataclass (``selectune.config``) becomes one flag per field, with the field's ``help``; a
``list[...]`` parameter or field takes its items space- or comma-separated (``--hidden 64 64``, ``--hidden 64,64``).

Library functions return results or raise; ``COMMANDS`` maps each command to its function, the function that
prints its result, and its exit status (2 for bad input, raised as DataError/DeltaError/ModelLoadError/ValueError).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect as pyinspect
import json
import os
import sys
import types
import typing
from typing import Any, Callable

from selectune.config import Without, as_list, cli_fields, flag_name, list_item_type
from selectune.data import DataError
from selectune.text_table import table


def _docs(fn: Callable) -> tuple[str, dict[str, str]]:
    doc = pyinspect.getdoc(fn) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    helps = {}
    for line in doc.splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier():
            helps[name] = text
    return summary, helps


def _unwrap(kind: Any) -> tuple[Any, tuple]:
    """(the type without ``| None`` and ``Annotated``, the ``Annotated`` extras)."""
    extras: tuple = ()
    if typing.get_origin(kind) is typing.Annotated:
        kind, *rest = typing.get_args(kind)
        extras = tuple(rest)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    return kind, extras


class _ListOption(argparse.Action):
    """``--x a b`` and ``--x a,b`` both give ``["a", "b"]`` (strings: the config or ``as_list`` converts them)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [p.strip() for v in values for p in v.split(",") if p.strip()])


def _add_option(parser, dest: str, name: str, base: Any, default: Any, required: bool, text: str) -> None:
    flag = flag_name(name)
    if base is bool:
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text)
    elif list_item_type(base) is not None:
        parser.add_argument(flag, dest=dest, action=_ListOption, nargs="+", default=default, required=required, help=text,
                            metavar=name.rstrip("_").upper())
    else:
        parser.add_argument(flag, dest=dest, type=base, default=default, required=required, help=text, metavar=name.rstrip("_").upper())


def _add_config(parser, pname: str, cls: type, default: Any, dropped: tuple[str, ...]) -> None:
    """One flag per field of the config dataclass ``cls`` (dest: the field's name), grouped back into ``cls`` by ``main``."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls, dropped):
        value = getattr(default, f.name) if dataclasses.is_dataclass(default) else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        required = value is dataclasses.MISSING
        _add_option(parser, f.name, f.name, _unwrap(hints[f.name])[0], None if required else value, required,
                    f.metadata.get("help", " "))


def _add_command(sub, name: str, fn: Callable) -> None:
    summary, helps = _docs(fn)
    # No abbreviations: with flags generated from configs, `compare --lr` would silently mean `--lr-sweep`.
    parser = sub.add_parser(name, help=summary, description=summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                            allow_abbrev=False)
    hints = typing.get_type_hints(fn, include_extras=True)
    for pname, param in pyinspect.signature(fn).parameters.items():
        if param.kind == param.VAR_KEYWORD:  # flat settings for Python callers; the CLI fills the configs
            continue
        base, extras = _unwrap(hints.get(pname, str))
        if dataclasses.is_dataclass(base):
            dropped = tuple(n for e in extras if isinstance(e, Without) for n in e.names)
            _add_config(parser, pname, base, param.default, dropped)
            continue
        text = helps.get(pname, " ")
        if param.default is pyinspect.Parameter.empty and param.kind == param.POSITIONAL_OR_KEYWORD:
            if list_item_type(base) is not None:
                parser.add_argument(pname, nargs="+", type=list_item_type(base), help=text)
            else:
                parser.add_argument(pname, type=base, help=text)
            continue
        required = param.default is pyinspect.Parameter.empty
        _add_option(parser, pname, pname, base, None if required else param.default, required, text)
    parser.set_defaults(_fn=fn)


def _call_arguments(fn: Callable, args: dict[str, Any]) -> dict[str, Any]:
    """The parsed flags as ``fn``'s arguments: a config parameter's fields built into its dataclass, list parameters
    converted to their item type (a bad item is a ValueError naming the flag, exit 2)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    call: dict[str, Any] = {}
    for pname, param in pyinspect.signature(fn).parameters.items():
        if param.kind == param.VAR_KEYWORD:
            continue
        base, extras = _unwrap(hints.get(pname, str))
        if dataclasses.is_dataclass(base):
            dropped = tuple(n for e in extras if isinstance(e, Without) for n in e.names)
            values = {f.name: args[f.name] for f in cli_fields(base, dropped)}
            default = param.default
            call[pname] = dataclasses.replace(default, **values) if dataclasses.is_dataclass(default) else base(**values)
        else:
            item, value = list_item_type(base), args[pname]
            call[pname] = as_list(value, item, flag_name(pname)) if item is not None and value is not None else value
    return call


def methods() -> list[dict[str, Any]]:
    """List the selection methods with their options."""
    from selectune.methods import METHODS

    return [{"name": s.name, "summary": s.summary, "default_lr": s.default_lr,
             "options": [{"name": n, "default": d, "help": h} for n, d, h in s.option_docs()]} for s in METHODS.values()]


def inspect(model: str, *, method: str = "bitfit", num_labels: int = 2) -> dict[str, Any]:
    """Show what METHOD would train on MODEL, per role, without training.

    model: HF model folder (a decoder saved with its LM head, e.g. LlamaForCausalLM, is read as causal-lm), `minilm` (mean pooling) or `minilm-cls` (CLS pooler), `smollm2`, or a tabular model folder
    method: method with options, e.g. bitfit:roles=query+mlp_in
    num_labels: labels for the new classifier head (text models)
    """
    from selectune.methods import parse_method
    from selectune.models import resolve_model
    from selectune.selection import select, trainable_report
    from selectune.tasks import load_base_model

    path = resolve_model(model)
    task_class, loaded = load_base_model(path, n_outputs=num_labels, with_tokenizer=False)
    net = loaded.model
    name, options = parse_method(method)
    options = {**task_class.method_defaults(name), **options}  # as train does (causal-lm: BitFit inserts missing biases)
    selection = select(net, name, new_parameters=loaded.new_parameters, **options)
    return {"model": path, "method": name, "options": selection.options, "new_parameters": selection.new_parameters,
            "inserted_parameters": selection.inserted_parameters,
            "trainable_parameters": selection.trainable_parameters, "total_parameters": selection.total_parameters,
            "trainable_percent": selection.trainable_percent, "roles": trainable_report(net, selection)}


def data(name: str, out: str) -> dict[str, str]:
    """Export a bundled real data set (drug-reviews, drug-reviews-questions, breast-cancer, diabetes, diabetes-missing, lung-cancer) as CSV files into OUT.

    name: drug-reviews, drug-reviews-questions (the reviews asked as a question, for causal-lm), breast-cancer, diabetes, diabetes-missing (its impossible zeros as missing values) or lung-cancer
    out: output directory
    """
    from selectune.data import export_bundled

    return export_bundled(name, out)


def summary(runs: list[str], *, reference: str | None = None, reference_task: str | None = None) -> dict[str, Any]:
    """Compare the test metrics of training RUNS side by side, with the majority-class floor; say so when BitFit is not the best.

    runs: output folders of `selectune train`
    reference: a benchmark JSON whose rows are added: benchmarks/results/recipe.json (per task: settings by cross-validation, 5-seed means with CIs) or another benchmark's `chosen` rows
    reference_task: the task of a multi-task reference (recipe.json: rating or condition); default: the runs' label column
    """
    from pathlib import Path

    from selectune.compare.reference import dropout_text, read_reference

    rows: list[dict[str, Any]] = []
    mine: list[dict[str, Any]] = []  # what a run must match to reproduce a reference row
    label_col = None
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; give folders written by `selectune train --out`")
        m = json.loads(path.read_text())
        if not rows and m.get("majority_baseline"):
            rows.append({"model": "majority class", "source": "train labels", **m["majority_baseline"]})
        delta = Path(run) / "delta" / "delta.safetensors"
        tc = m["config"]["train_config"]
        label_col = label_col or m["config"].get("label_col")
        rows.append({"model": m["method"], "source": run, **(m.get("test") or {}), "epochs": tc["epochs"], "lr": f"{tc['lr']:g}",
                     "dropout": dropout_text(tc.get("dropout")),
                     "trainable %": f"{m['trainable_percent']:.3f}",
                     "delta KB": f"{delta.stat().st_size / 1000:.0f}", "train s": f"{m['train_seconds']:.0f}"})
        mine.append({"method": m["method"], "source": run, "train_config": tc, "max_length": m["config"].get("max_length"),
                     "validation_rows": m.get("split_protocol", {}).get("sizes", {}).get("validation"),
                     "macro_f1": (m.get("test") or {}).get("macro_f1")})
    ref = read_reference(reference, reference_task, default_task=label_col) if reference else None
    rows += ref.rows if ref else []
    return {"rows": rows, "notes": flagship_notes(rows, ref.recommendation if ref else None, ref, mine),
            "reference_recommendation": ref.recommendation if ref else None}


def flagship_notes(rows: list[dict[str, Any]], advice: dict[str, Any] | None, reference=None,
                   runs: list[dict[str, Any]] = ()) -> list[str]:
    """A line when BitFit is not the best row by test macro-F1 (RMSE for regression), and what compare recommends.

    With a reference of seed means (recipe.json), BitFit is judged among the reference rows (a mean over five seeds
    is not compared with one run), with the paired CI of the difference; and each run that has a reference row's
    setting is checked against that row's seed.
    """
    from selectune.compare.reference import paired_text, recommendation_text, reproduction_notes
    from selectune.evaluate.metrics import HIGHER_IS_BETTER

    scored = [r for r in rows if r["source"] != "train labels"]
    if reference is not None and reference.seed_means:
        scored = reference.rows
    notes = reproduction_notes(list(runs), reference) if reference is not None else []
    metric = next((m for m in ("macro_f1", "rmse") if any(isinstance(r.get(m), float) for r in scored)), None)
    bitfit = [r for r in scored if r["model"] == "bitfit" and isinstance(r.get(metric), float)]
    if metric is None or not bitfit:
        return notes
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    best = max((r for r in scored if isinstance(r.get(metric), float)), key=lambda r: sign * r[metric])
    if best["model"] == "bitfit":
        return notes
    mine = max(bitfit, key=lambda r: sign * r[metric])
    paired = paired_text(reference, best["model"], metric) if reference is not None else ""
    notes.insert(0, f"BitFit is not the best here: {best['model']} ({best['source']}, {best['epochs']} epochs) has test {metric} "
                    f"{best[metric]:.3f}, BitFit {mine[metric]:.3f} ({mine['source']}, {mine['epochs']} epochs)"
                    + (f"; {paired}." if paired else "."))
    if advice:
        notes.insert(1, recommendation_text(advice))
    return notes


def render_methods(result: list[dict[str, Any]]) -> str:
    width = max(len(m["name"]) for m in result) + 2
    lines = []
    for m in result:
        lines.append(f"{m['name']:<{width}}{m['summary']}  (default lr {m['default_lr']:g})")
        lines += [f"{'':<{width + 2}}{o['name']}={o['default']}: {o['help']}" for o in m["options"]]
    return "\n".join(lines)


def render_inspect(result: dict[str, Any]) -> str:
    lines = [f"{result['method']} {result['options']} on {result['model']}"]
    for row in result["roles"]:
        row["% of role"], row["% of model"] = f"{row['pct_of_role']:.3f}", f"{row['pct_of_model']:.4f}"
    lines.append(table(result["roles"], ["role", "tensors", "trainable", "total", "% of role", "% of model"]))
    if result["new_parameters"]:
        lines.append(f"new (random-init, always trained): {', '.join(result['new_parameters'])}")
    if result["inserted_parameters"]:
        inserted = result["inserted_parameters"]
        lines.append(f"inserted (zero-init biases on bias-free layers, outputs unchanged until trained): {len(inserted)} tensors, "
                     f"e.g. {', '.join(inserted[:3])}")
    return "\n".join(lines)


def render_summary(result: dict[str, Any]) -> str:
    """The table (its `epochs` column: each row's epoch budget), then a blank line and the notes, if any."""
    columns = ["model", "accuracy", "macro_f1", "95% CI", "auroc", "epochs", "lr", "dropout", "trainable %", "delta KB", "train s",
               "source"]
    text = table(result["rows"], [c for c in columns if any(r.get(c) not in (None, "") for r in result["rows"])])
    return "\n".join([text, "", *result["notes"]]) if result["notes"] else text


def render_json(result: Any) -> str | None:
    """The default: JSON for dicts and lists, the value itself otherwise, nothing for None."""
    if isinstance(result, (dict, list)):
        return json.dumps(result, indent=2, default=str)
    return None if result is None else str(result)


@dataclasses.dataclass(frozen=True)
class Command:
    """A command: the library function whose signature is its command line ("module:function"), the function that
    prints its result as text ("module:function"; default JSON), and its exit status from the result (default 0).
    Library functions return results or raise; only this table turns a result into an exit status."""
    target: str
    render: str = "selectune.cli:render_json"
    exit_status: Callable[[Any], int] = lambda result: 0


def _refused(result: dict[str, Any]) -> int:
    return 1 if result["status"] == "refuse" else 0  # the data were refused (a finding); 2 stays reserved for bad input


def _failed_gate(result: dict[str, Any]) -> int:
    return 0 if result["passed"] else 1


def _problems(result: dict[str, Any]) -> int:
    return 1 if result["problems"] else 0


# The one list of commands.
COMMANDS = {
    "train": Command("selectune.train.run:train", "selectune.train.run:render"),
    "evaluate": Command("selectune.evaluate.run:evaluate"),
    "predict": Command("selectune.evaluate.run:predict"),
    "inspect": Command("selectune.cli:inspect", "selectune.cli:render_inspect"),
    "merge": Command("selectune.models:merge"),
    "methods": Command("selectune.cli:methods", "selectune.cli:render_methods"),
    "data": Command("selectune.cli:data"),
    "check": Command("selectune.data.check_command:check", "selectune.data.check_command:render", _refused),
    "summary": Command("selectune.cli:summary", "selectune.cli:render_summary"),
    "update": Command("selectune.registry.update:update", "selectune.registry.update:render"),
    "registry add": Command("selectune.registry.commands:add", "selectune.registry.commands:render_summary"),
    "registry promote": Command("selectune.registry.commands:promote", "selectune.registry.commands:render_summary"),
    "registry rollback": Command("selectune.registry.commands:rollback", "selectune.registry.commands:render_summary"),
    "registry history": Command("selectune.registry.commands:history", "selectune.registry.commands:render_history"),
    "registry show": Command("selectune.registry.commands:show"),
    "registry export": Command("selectune.registry.commands:export"),
    "registry verify": Command("selectune.registry.commands:verify", "selectune.registry.commands:render_verify", _problems),
    "registry mirror": Command("selectune.registry.commands:mirror"),
    "serve": Command("selectune.serve.app:serve"),
    "compare": Command("selectune.compare.run:compare", "selectune.compare.render:render_comparison"),
    "tune": Command("selectune.compare.tune:tune", "selectune.compare.render:render_tune"),
    "gate": Command("selectune.evaluate.gate:gate", "selectune.evaluate.gate:render", _failed_gate),
    "report": Command("selectune.report.build:report", "selectune.report.build:render"),
}


def _resolve(target: str) -> Callable:
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or, when ARGV names one, for that command only.

    Each command's module imports torch/transformers/FastAPI; importing only the one asked for keeps a
    CLI call from paying for all of them (seconds per call on 2 cores)."""
    parser = argparse.ArgumentParser(prog="selectune", description="Selective fine-tuning (BitFit and friends) with tiny, verifiable deltas.")
    sub = parser.add_subparsers(dest="command", required=True)
    first = next((a for a in argv or [] if not a.startswith("-")), None)
    wanted = first if first in {n.split(" ")[0] for n in COMMANDS} else None
    groups: dict[str, Any] = {}
    for name, command in COMMANDS.items():
        if wanted and name.split(" ")[0] != wanted:
            continue
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:  # "registry add" -> `selectune registry add`
            members = ", ".join(n.rpartition(" ")[2] for n in COMMANDS if n.rpartition(" ")[0] == group)
            groups[group] = sub.add_parser(group, help=f"{group} commands: {members}").add_subparsers(dest="subcommand", required=True)
        _add_command(groups[group] if group else sub, leaf, _resolve(command.target))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = vars(parser.parse_args(argv))
    command, fn = " ".join(filter(None, (args.pop("command"), args.pop("subcommand", None)))), args.pop("_fn")
    from selectune.delta import DeltaError
    from selectune.tasks import ModelLoadError

    try:
        result = fn(**_call_arguments(fn, args))
    except (DataError, DeltaError, ModelLoadError, OSError, ValueError) as err:  # OSError: existing/unwritable --out
        print(f"selectune {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selectune {command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`, one process reports
        text = _resolve(COMMANDS[command].render)(result)
        if text is not None:
            print(text)
    return COMMANDS[command].exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
