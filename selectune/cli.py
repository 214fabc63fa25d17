"""The command line. Thin: each command is a library function whose signature *is* the CLI.

Positional parameters become positional arguments, keyword-only ones become ``--flags`` with their
defaults shown, and the ``name: help`` lines of the docstring become the help text.
"""
from __future__ import annotations

import argparse
import inspect as pyinspect
import json
import os
import sys
import typing
from typing import Any, Callable

from selectune.data import DataError


def _docs(fn: Callable) -> tuple[str, dict[str, str]]:
    doc = pyinspect.getdoc(fn) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    helps = {}
    for line in doc.splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier():
            helps[name] = text
    return summary, helps


def _add_command(sub, name: str, fn: Callable) -> None:
    summary, helps = _docs(fn)
    parser = sub.add_parser(name, help=summary, description=summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(fn)
    for pname, param in pyinspect.signature(fn).parameters.items():
        kind = hints.get(pname, str)
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind) if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)) else kind
        text = helps.get(pname, " ")
        if param.default is pyinspect.Parameter.empty and param.kind == param.POSITIONAL_OR_KEYWORD:
            if typing.get_origin(base) is list:
                parser.add_argument(pname, nargs="+", type=typing.get_args(base)[0], help=text)
            else:
                parser.add_argument(pname, type=base, help=text)
            continue
        # A trailing underscore lets a Python keyword be a flag: ``from_`` -> ``--from``.
        flag = "--" + pname.rstrip("_").replace("_", "-")
        required = param.default is pyinspect.Parameter.empty
        if base is bool:
            parser.add_argument(flag, dest=pname, action=argparse.BooleanOptionalAction, default=param.default, help=text)
        else:
            parser.add_argument(flag, dest=pname, type=base, default=None if required else param.default, required=required, help=text,
                                metavar=pname.rstrip("_").upper())
    parser.set_defaults(_fn=fn)


def methods() -> list[dict[str, Any]]:
    """List the selection methods with their options."""
    from selectune.methods import METHODS

    return [{"name": s.name, "summary": s.summary, "default_lr": s.default_lr,
             "options": [{"name": n, "default": d, "help": h} for n, d, h in s.option_docs()]} for s in METHODS.values()]


def inspect(model: str, *, method: str = "bitfit", num_labels: int = 2) -> dict[str, Any]:
    """Show what METHOD would train on MODEL, per role, without training.

    model: HF model folder, `minilm`, or a tabular model folder
    method: method with options, e.g. bitfit:roles=query+mlp_in
    num_labels: labels for the new classifier head (text models)
    """
    from selectune.methods import parse_method
    from selectune.models import resolve_model
    from selectune.selection import select, trainable_report
    from selectune.tasks import load_base_model

    path = resolve_model(model)
    _, loaded = load_base_model(path, n_outputs=num_labels, with_tokenizer=False)
    net = loaded.model
    name, options = parse_method(method)
    selection = select(net, name, new_parameters=loaded.new_parameters, **options)
    return {"model": path, "method": name, "options": selection.options, "new_parameters": selection.new_parameters,
            "inserted_parameters": selection.inserted_parameters,
            "trainable_parameters": selection.trainable_parameters, "total_parameters": selection.total_parameters,
            "trainable_percent": selection.trainable_percent, "roles": trainable_report(net, selection)}


def data(name: str, out: str) -> dict[str, str]:
    """Export a bundled real data set (drug-reviews, breast-cancer, diabetes) as CSV files into OUT.

    name: drug-reviews, breast-cancer or diabetes
    out: output directory
    """
    from selectune.data import export_bundled

    return export_bundled(name, out)


def summary(runs: list[str], *, reference: str | None = None) -> list[dict[str, Any]]:
    """Compare the test metrics of training RUNS side by side, with the majority-class floor.

    runs: output folders of `selectune train`
    reference: a benchmark JSON (benchmarks/results/*.json) whose chosen run per method is added as a row
    """
    from pathlib import Path

    def dropout(value: float | None) -> str:  # None: the model's own dropout
        return "model" if value is None else f"{value:g}"

    rows: list[dict[str, Any]] = []
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; give folders written by `selectune train --out`")
        m = json.loads(path.read_text())
        if not rows and m.get("majority_baseline"):
            rows.append({"model": "majority class", "source": "train labels", **m["majority_baseline"]})
        delta = Path(run) / "delta" / "delta.safetensors"
        tc = m["config"]["train_config"]
        rows.append({"model": m["method"], "source": run, **(m.get("test") or {}), "epochs": tc["epochs"], "lr": f"{tc['lr']:g}",
                     "dropout": dropout(tc.get("dropout")),
                     "trainable %": f"{m['trainable_percent']:.3f}",
                     "delta KB": f"{delta.stat().st_size / 1000:.0f}", "train s": f"{m['train_seconds']:.0f}"})
    if reference:
        ref = json.loads(Path(reference).read_text())
        for method, r in ref.get("chosen", {}).items():  # rows of methods run above too: the same recipe reproduces them
            rows.append({"model": method, "source": Path(reference).name, "accuracy": r["test_accuracy"], "macro_f1": r["test_macro_f1"],
                         "epochs": ref.get("recipe", {}).get("epochs", ""), "lr": f"{r['lr']:g}",
                         "dropout": dropout(r.get("dropout")),
                         "trainable %": f"{r['trainable_percent']:.3f}", "delta KB": f"{r['delta_bytes'] / 1000:.0f}"})
    return rows


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Fixed-width text table; floats to 4 significant decimals."""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    return "\n".join([line, "  ".join("-" * w for w in widths)] + ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body])


def _print_result(command: str, result: Any) -> None:
    if command == "methods":
        width = max(len(m["name"]) for m in result) + 2
        for m in result:
            print(f"{m['name']:<{width}}{m['summary']}  (default lr {m['default_lr']:g})")
            for o in m["options"]:
                print(f"{'':<{width + 2}}{o['name']}={o['default']}: {o['help']}")
    elif command == "inspect":
        print(f"{result['method']} {result['options']} on {result['model']}")
        for row in result["roles"]:
            row["% of role"], row["% of model"] = f"{row['pct_of_role']:.3f}", f"{row['pct_of_model']:.4f}"
        print(table(result["roles"], ["role", "tensors", "trainable", "total", "% of role", "% of model"]))
        if result["new_parameters"]:
            print(f"new (random-init, always trained): {', '.join(result['new_parameters'])}")
        if result["inserted_parameters"]:
            inserted = result["inserted_parameters"]
            print(f"inserted (zero-init biases on bias-free layers, outputs unchanged until trained): {len(inserted)} tensors, "
                  f"e.g. {', '.join(inserted[:3])}")
    elif command == "train":
        rows = []
        if result.get("majority_baseline"):
            rows.append({"model": "majority class", **result["majority_baseline"], "trainable %": "-"})
        if result.get("test"):
            rows.append({"model": result["method"], **result["test"], "trainable %": f"{result['trainable_percent']:.3f}"})
        cols = ["model", "n", "accuracy", "macro_f1", "auroc", "trainable %"] if "accuracy" in (result.get("test") or {}) else ["model", "n", "mae", "rmse", "r2", "trainable %"]
        print(f"\n{result['method']}: {result['trainable_parameters']:,} of {result['total_parameters']:,} parameters "
              f"({result['trainable_percent']:.3f}%), lr {result['lr']:g}, best epoch {result['best_epoch']}, "
              f"{result['train_seconds']:.0f} s ({result['examples_per_second']:.1f} ex/s)")
        if rows:
            print(table(rows, cols))
    elif command == "summary":
        print(table(result, ["model", "accuracy", "macro_f1", "auroc", "epochs", "lr", "dropout", "trainable %", "delta KB", "train s", "source"]))
    elif isinstance(result, (dict, list)):
        print(json.dumps(result, indent=2, default=str))
    elif result is not None:
        print(result)


# The one list of commands: name -> "module:function". The function's signature is the command line.
# A function may carry a ``render(result) -> str`` attribute to print its result as text (else JSON),
# and may return a dict with an ``exit_code`` (e.g. a failed gate exits 1).
COMMANDS = {
    "train": "selectune.train.run:train",
    "evaluate": "selectune.evaluate.run:evaluate",
    "predict": "selectune.evaluate.run:predict",
    "inspect": "selectune.cli:inspect",
    "merge": "selectune.models:merge",
    "methods": "selectune.cli:methods",
    "data": "selectune.cli:data",
    "check": "selectune.data.check_command:check",
    "summary": "selectune.cli:summary",
    "update": "selectune.registry.update:update",
    "registry add": "selectune.registry.commands:add",
    "registry promote": "selectune.registry.commands:promote",
    "registry rollback": "selectune.registry.commands:rollback",
    "registry history": "selectune.registry.commands:history",
    "registry show": "selectune.registry.commands:show",
    "registry export": "selectune.registry.commands:export",
    "registry verify": "selectune.registry.commands:verify",
    "serve": "selectune.serve.app:serve",
    "compare": "selectune.compare.run:compare",
    "gate": "selectune.evaluate.gate:gate",
    "report": "selectune.report.build:report",
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
    for name, target in COMMANDS.items():
        if wanted and name.split(" ")[0] != wanted:
            continue
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:  # "registry add" -> `selectune registry add`
            members = ", ".join(n.rpartition(" ")[2] for n in COMMANDS if n.rpartition(" ")[0] == group)
            groups[group] = sub.add_parser(group, help=f"{group} commands: {members}").add_subparsers(dest="subcommand", required=True)
        _add_command(groups[group] if group else sub, leaf, _resolve(target))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = vars(parser.parse_args(argv))
    command, fn = " ".join(filter(None, (args.pop("command"), args.pop("subcommand", None)))), args.pop("_fn")
    from selectune.delta import DeltaError
    from selectune.tasks import ModelLoadError

    try:
        result = fn(**args)
    except (DataError, DeltaError, ModelLoadError, OSError, ValueError) as err:  # OSError: existing/unwritable --out
        print(f"selectune {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selectune {command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`, one process reports
        render = getattr(fn, "render", None)
        if render is not None:
            print(render(result))
        else:
            _print_result(command, result)
    return int(result.get("exit_code", 0)) if isinstance(result, dict) else 0


if __name__ == "__main__":
    sys.exit(main())
