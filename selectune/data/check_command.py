"""``selectune check``: the data checks that ``train`` runs, on their own, with a readable report.

It reads and splits the files exactly as ``train`` would (same arguments, same seed), so what it
reports is what ``train`` will refuse or warn about.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

from selectune.config import CheckThresholds, ColumnsConfig, PreprocessingConfig, SplitConfig, with_settings, without

from selectune.io import atomic_write_json

from .checks import CheckReport, run_checks
from .readers import DataError
from .splits import Splits, load_splits


def check_splits(splits: Splits, *, id_col: str | None = None, group_cols: list[str] | str | None = None,
                 phi_policy: str = "warn", phi_cols: list[str] | str | None = None, raise_on_refusal: bool = True,
                 **thresholds) -> CheckReport:
    """Run the checks on loaded splits; row numbers point into the file each split came from."""
    protocol = splits.protocol
    files = protocol["files"]
    sources = {"train": files["train"],
               "validation": files["validation"] or f"{files['train']} (split off by selectune)",
               "test": files["test"] or (f"{files['train']} (split off by selectune)" if splits.test is not None else None)}
    frames = {}
    for role in ("train", "validation", "test"):
        frame = getattr(splits, role)
        if frame is not None:
            rows = splits.source_rows.get(role)
            frames[role] = frame.set_axis(rows) if rows is not None else frame
    return run_checks(frames, text_col=protocol["text_col"], feature_cols=protocol["feature_cols"], label_col=protocol["label_col"],
                      task=protocol["task"], id_col=id_col, group_cols=group_cols, phi_policy=phi_policy, phi_cols=phi_cols,
                      sources=sources, raise_on_refusal=raise_on_refusal, **thresholds)


def check(train: str, *, columns: ColumnsConfig = ColumnsConfig(), split: Annotated[SplitConfig, without("group_col")] = SplitConfig(),
          id_col: str | None = None, group_cols: list[str] | None = None, phi_policy: str = "warn", phi_cols: list[str] | None = None,
          thresholds: CheckThresholds = CheckThresholds(), seed: int = 0, out: str | None = None,
          preprocessing: Annotated[PreprocessingConfig, without("missing_indicators")] = PreprocessingConfig(),
          **settings: Any) -> dict[str, Any]:
    """Check data before training: leakage between splits (refused), imbalance, shift, small subgroups, identifiers.

    train: training data file (csv, tsv, jsonl, parquet)
    id_col: patient/group id column (what `train` calls --group-col): splits are made by it and an id in two splits is refused
    group_cols: subgroup columns (e.g. sex site period, or sex,site,period) checked for small groups
    phi_policy: identifier-like text (e-mail, phone, record number, date, URL): warn, or refuse
    phi_cols: free-text columns to scan for identifiers (default: --text-col)
    seed: seed of the splits (use the one you give `train`)
    out: also write the report as JSON here

    The result's ``status`` is ``refuse`` when the data were refused (the CLI exits 1).
    """
    configs = with_settings("check", {"columns": columns, "split": split, "thresholds": thresholds, "preprocessing": preprocessing},
                            settings)
    columns, split, thresholds, preprocessing = (configs[k] for k in ("columns", "split", "thresholds", "preprocessing"))
    try:
        splits = load_splits(train, split.validation, split.test, label_col=columns.label_col, text_col=columns.text_col,
                             feature_cols=columns.feature_cols or None, task=columns.task, val_fraction=split.val_fraction,
                             test_fraction=split.test_fraction, group_col=id_col, seed=seed,
                             preprocessing=preprocessing)
    except DataError as err:  # the splitting column is --group-col in `train` and --id-col here
        raise DataError(str(err).replace("--group-col", "--id-col")) from None
    report = check_splits(splits, id_col=id_col, group_cols=group_cols, phi_policy=phi_policy, phi_cols=phi_cols,
                          raise_on_refusal=False, **dataclasses.asdict(thresholds))
    result = {**report.to_json(), "split_protocol": splits.protocol}
    if out:
        atomic_write_json(Path(out), result)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"{name}: {info['rows']} rows from {info['source']}" for name, info in result["splits"].items()]
    lines.append("")
    # One line per check, unwrapped, so that each finding can be grepped.
    lines += [f"{r['status'].upper():<8} {r['check']}: {r['message']}" for r in result["results"]]
    verdict = {"refuse": "REFUSED: fix the data before training (exit 1)", "warn": "passed with warnings",
               "pass": "passed"}[result["status"]]
    lines += ["", f"data checks {verdict}"]
    return "\n".join(lines)
