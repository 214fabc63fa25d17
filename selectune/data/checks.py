"""Checks on the data before any training or evaluation: leakage between splits, imbalance, identifiers.

Leakage (the same patient/group id, or the same text/row, in two splits) and, under
``phi_policy="refuse"``, identifier-like text are *refused*; class imbalance, a prevalence shift between
splits, tiny subgroups, duplicates inside one split and (by default) identifier-like text are *warned*
about, with the numbers. Every result names counts and row numbers only: ids, texts and matched
identifiers are never copied into a message, a report or a log.

Row numbers are 1-based row labels (a frame's index + 1). For a frame read straight from a file that is
the file's data row (the header not counted); `train` passes frames indexed by their row in the file
they came from, so a validation split cut from the training file names rows of the training file.
"""
from __future__ import annotations

import dataclasses
from itertools import combinations

import pandas as pd

from selectune.config import CheckThresholds, with_settings

from .balance import class_imbalance, prevalence_shift, subgroup_sizes, target_shift
from .check_report import (MAX_ROWS, CheckReport, CheckResult, DataCheckRefused, DataLeakageError, IdentifierError, plural,
                           quote_rows, row_numbers)
from .identifiers import TYPES as IDENTIFIER_TYPES
from .identifiers import scan_identifiers
from .missingness import missingness
from .readers import DataError

__all__ = ["CheckReport", "CheckResult", "DataCheckRefused", "DataLeakageError", "IdentifierError", "run_checks"]

PHI_POLICIES = ("warn", "refuse")


def run_checks(frames: dict[str, pd.DataFrame | None], *, text_col: str | None = None, feature_cols: list[str] | None = None,
               label_col: str | None = None, task: str = "classification", id_col: str | None = None,
               group_cols: list[str] | str | None = None, phi_policy: str = "warn", phi_cols: list[str] | str | None = None,
               sources: dict[str, str] | None = None, thresholds: CheckThresholds = CheckThresholds(), raise_on_refusal: bool = True,
               **threshold_settings: float) -> CheckReport:
    """Check the splits in FRAMES ({"train": df, "validation": df, "test": df}; None entries are left out).

    text_col / feature_cols: what the model reads; identical values across splits are leakage.
    label_col: for imbalance and prevalence shift (classification) or distribution shift (regression).
    id_col: patient/group id; an id in more than one split is leakage. A frame without the column is
        reported as unchecked (status "skipped" for that split), not guessed at.
    group_cols: subgroup columns (sex, site, period...); groups below min_group_size rows are warned about.
    phi_policy: "warn" (default) or "refuse" when free text holds identifier-like strings.
    phi_cols: free-text columns to scan (default: text_col).
    sources: split -> file it came from, recorded in the report so row numbers can be looked up.
    thresholds: when imbalance, prevalence shift and small subgroups warn; or give them flat (``min_group_size=5``).
    raise_on_refusal: raise DataLeakageError / IdentifierError (with `.report`) instead of returning.
    """
    thresholds = with_settings("run_checks", {"thresholds": thresholds}, threshold_settings)["thresholds"]
    frames = {name: frame for name, frame in frames.items() if frame is not None}
    group_cols = split_names(group_cols)
    phi_cols = split_names(phi_cols) or ([text_col] if text_col else [])
    feature_cols = split_names(feature_cols)
    validate(frames, text_col, feature_cols, label_col, task, group_cols, phi_policy, phi_cols, id_col, thresholds)

    results = [
        id_leakage(frames, id_col),
        duplicate_leakage(frames, text_col, feature_cols),
        duplicates_within_splits(frames, text_col, feature_cols),
    ]
    if label_col is not None and task == "classification":
        results += [class_imbalance(frames, label_col, thresholds.imbalance_ratio),
                    prevalence_shift(frames, label_col, thresholds.max_prevalence_shift)]
    elif label_col is not None and task == "regression":  # generation: free text has no distribution to compare
        results.append(target_shift(frames, label_col))
    results.append(subgroup_sizes(frames, group_cols, thresholds.min_group_size))
    results.append(missingness(frames, feature_cols, thresholds.max_missingness_shift))
    results.append(identifiers(frames, phi_cols, phi_policy))

    settings = {"text_col": text_col, "feature_cols": feature_cols or None, "label_col": label_col, "task": task, "id_col": id_col,
                "group_cols": group_cols, "phi_policy": phi_policy, "phi_cols": phi_cols, **dataclasses.asdict(thresholds),
                "identifier_types": list(IDENTIFIER_TYPES)}
    splits = {name: {"rows": len(frame), "source": (sources or {}).get(name)} for name, frame in frames.items()}
    report = CheckReport(results=results, splits=splits, settings=settings)
    if raise_on_refusal:
        report.raise_if_refused()
    return report


# ---------------------------------------------------------------- input validation

def split_names(names: list[str] | str | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip() for n in names if n and n.strip()]


def validate(frames, text_col, feature_cols, label_col, task, group_cols, phi_policy, phi_cols, id_col,
             thresholds: CheckThresholds) -> None:
    min_group_size, imbalance_ratio, max_prevalence_shift = (thresholds.min_group_size, thresholds.imbalance_ratio,
                                                             thresholds.max_prevalence_shift)
    if not frames:
        raise DataError("No data to check: give at least one split (e.g. the training file).")
    if phi_policy not in PHI_POLICIES:
        raise DataError(f"Unknown --phi-policy {phi_policy!r}: use 'warn' (report identifier-like text) "
                        "or 'refuse' (stop when any is found).")
    if task not in ("classification", "regression", "generation"):
        raise DataError(f"Unknown task {task!r}: use 'classification', 'regression' or 'generation'.")
    if text_col and feature_cols:
        raise DataError("Give either --text-col (text data) or --feature-cols (tabular data), not both.")
    if min_group_size < 1 or imbalance_ratio < 1 or not 0 < max_prevalence_shift < 1:
        raise DataError(f"Check thresholds out of range (min group size {min_group_size}, imbalance ratio {imbalance_ratio}, "
                        f"prevalence shift {max_prevalence_shift}): use a size >= 1, a ratio >= 1 and a shift between 0 and 1.")
    if id_col and id_col in group_cols:
        raise DataError(f"Column {id_col!r} is both the patient/group id (--id-col) and a subgroup column (--group-cols); "
                        "a subgroup is a category like sex or site, so drop it from --group-cols.")
    needed = {"--text-col": [text_col] if text_col else [], "--feature-cols": feature_cols, "--label-col": [label_col] if label_col else [],
              "--group-cols": group_cols, "--phi-cols": phi_cols}
    for split, frame in frames.items():
        for flag, names in needed.items():
            for name in names:
                if name not in frame.columns:
                    raise DataError(f"Column {name!r} ({flag}) not found in the {split} data; it has columns: "
                                    f"{', '.join(map(str, frame.columns))}. Pass the right name with {flag}.")
    if id_col and not any(id_col in frame.columns for frame in frames.values()):
        raise DataError(f"Column {id_col!r} (--id-col) is in none of the splits ({', '.join(frames)}); "
                        "pass the column that holds the patient/group id, or leave --id-col out.")


# ---------------------------------------------------------------- helpers

def normalized_text(series: pd.Series) -> pd.Series:
    # Case and whitespace differences do not make a copy a different example.
    return series.map(lambda v: " ".join(str(v).casefold().split()) if isinstance(v, str) else v)


def row_keys(frame: pd.DataFrame, text_col: str | None, feature_cols: list[str]) -> pd.Series | None:
    """One 64-bit hash per row of what the model reads: compared as numbers, never kept as text."""
    if text_col:
        return pd.util.hash_pandas_object(normalized_text(frame[text_col]), index=False)
    if feature_cols:
        # as float64: 1 from a CSV and 1.0 from JSON lines are the same value but hash differently as int and float;
        # a category column (text such as "F") is compared as text
        columns = {c: numeric_or_text(frame[c]) for c in feature_cols}
        return pd.util.hash_pandas_object(pd.DataFrame(columns, index=frame.index), index=False)
    return None


def numeric_or_text(series: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(series, errors="coerce")
    if (numbers.isna() & series.notna()).any():
        return series.map(lambda v: v if pd.isna(v) else str(v))
    return numbers.astype("float64")


def id_keys(series: pd.Series) -> pd.Series:
    # 17 read from a CSV and "17" or 17.0 from JSON lines name the same patient.
    def key(v):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return str(v).strip()
    hashed = pd.util.hash_pandas_object(series.map(key, na_action="ignore"), index=False).astype(object)
    return hashed.where(series.notna(), None)  # a missing id is no id: it matches nothing


def inputs_name(text_col: str | None) -> str:
    return "text" if text_col else "row"


# ---------------------------------------------------------------- leakage (refuse)

def overlap(frames: dict[str, pd.DataFrame], keys: dict[str, pd.Series]):
    """For each pair of splits sharing keys: (a, b, number of shared keys, rows in a, rows in b, row totals)."""
    pairs = []
    for a, b in combinations(keys, 2):
        shared = set(keys[a].dropna()) & set(keys[b].dropna())
        if shared:
            in_a, in_b = keys[a].isin(shared).to_numpy(), keys[b].isin(shared).to_numpy()
            pairs.append({"splits": [a, b], "shared": len(shared), "rows": {a: row_numbers(frames[a], in_a), b: row_numbers(frames[b], in_b)},
                          "row_counts": {a: int(in_a.sum()), b: int(in_b.sum())}})
    return pairs


def describe_pairs(pairs, noun) -> str:
    parts = []
    for p in pairs:
        a, b = p["splits"]
        parts.append(f"{plural(p['shared'], noun)} shared by {a} and {b} ({a} rows {quote_rows(p['rows'][a], p['row_counts'][a])}; "
                     f"{b} rows {quote_rows(p['rows'][b], p['row_counts'][b])})")
    return "; ".join(parts)


def id_leakage(frames, id_col) -> CheckResult:
    if not id_col:
        return CheckResult("id_leakage", "skipped", "No patient/group id column given (--id-col), so leakage by patient was not checked.")
    present = {name: frame for name, frame in frames.items() if id_col in frame.columns}
    missing = sorted(set(frames) - set(present))
    pairs = overlap(present, {name: id_keys(frame[id_col]) for name, frame in present.items()})
    details = {"id_col": id_col, "pairs": pairs, "unchecked_splits": missing,
               "ids_per_split": {name: int(frame[id_col].nunique()) for name, frame in present.items()}}
    note = (f" The {', '.join(missing)} data has no {id_col!r} column, so patients shared with it were not checked." if missing else "")
    if pairs:
        total = sum(p["shared"] for p in pairs)
        return CheckResult("id_leakage", "refuse",
                           f"Leakage: {plural(total, 'value')} of the patient/group id column {id_col!r} in more than one split: "
                           f"{describe_pairs(pairs, 'id')}. A model evaluated on patients it was trained on looks better than it is; "
                           f"keep each patient in one split (or give one file and let selectune split it by {id_col!r}: "
                           f"--group-col in train, --id-col in check).{note}", details)
    status = "warn" if missing else "pass"
    return CheckResult("id_leakage", status, f"No value of {id_col!r} occurs in more than one split.{note}", details)


def duplicate_leakage(frames, text_col, feature_cols) -> CheckResult:
    keys = {name: row_keys(frame, text_col, feature_cols) for name, frame in frames.items()}
    if any(k is None for k in keys.values()):
        return CheckResult("duplicate_leakage", "skipped", "No --text-col or --feature-cols given, so copies across splits were not checked.")
    noun = inputs_name(text_col)
    pairs = overlap(frames, keys)
    details = {"compared": ([text_col] if text_col else feature_cols),
               "normalization": "case-folded, whitespace collapsed" if text_col else "exact values", "pairs": pairs}
    if pairs:
        total = sum(p["shared"] for p in pairs)
        return CheckResult("duplicate_leakage", "refuse",
                           f"Leakage: {plural(total, 'identical ' + noun)} in more than one split: {describe_pairs(pairs, noun)}. "
                           "Remove the copies from one split (for splits cut from one file: remove the duplicates from that file, "
                           "or give a patient/group id that copies share: --group-col in train, --id-col in check).", details)
    return CheckResult("duplicate_leakage", "pass", f"No identical {noun}s in more than one split.", details)


def duplicates_within_splits(frames, text_col, feature_cols) -> CheckResult:
    keys = {name: row_keys(frame, text_col, feature_cols) for name, frame in frames.items()}
    if any(k is None for k in keys.values()):
        return CheckResult("duplicates_within_split", "skipped", "No --text-col or --feature-cols given.")
    noun = inputs_name(text_col)
    found = {}
    for name, key in keys.items():
        repeated = key.duplicated(keep=False).to_numpy()
        if repeated.any():
            found[name] = {"rows": row_numbers(frames[name], repeated), "row_count": int(repeated.sum()),
                           "extra_copies": int(key.duplicated().sum())}
    if found:
        parts = [f"{name}: {f['extra_copies']} extra copies among rows {quote_rows(f['rows'], f['row_count'])}" for name, f in found.items()]
        return CheckResult("duplicates_within_split", "warn",
                           f"Repeated {noun}s inside a split ({'; '.join(parts)}); they weigh those examples more. Drop the copies "
                           "unless the repetition is intended.", {"splits": found})
    return CheckResult("duplicates_within_split", "pass", f"No repeated {noun}s inside any split.", {"splits": {}})


# ---------------------------------------------------------------- identifiers (warn or refuse)

def identifiers(frames, phi_cols, policy) -> CheckResult:
    if not phi_cols:
        return CheckResult("identifiers", "skipped", "No free-text column to scan (tabular data without --phi-cols).")
    per_split, totals, rows_total, scanned = {}, {k: 0 for k in IDENTIFIER_TYPES}, 0, 0
    for split, frame in frames.items():
        per_split[split] = {}
        for col in phi_cols:
            scan = scan_identifiers(frame[col])
            hit_rows = scan.rows_with_any
            per_split[split][col] = {"rows_scanned": scan.rows_scanned, "rows_with_identifiers": len(hit_rows),
                                     "matches": scan.matches, "rows_per_type": {k: len(v) for k, v in scan.rows.items()},
                                     "rows": hit_rows[:MAX_ROWS]}
            for kind, n in scan.matches.items():
                totals[kind] += n
            rows_total += len(hit_rows)
            scanned += scan.rows_scanned
    details = {"policy": policy, "columns": phi_cols, "matches": totals, "rows_with_identifiers": rows_total,
               "rows_scanned": scanned, "per_split": per_split,
               "note": "counts and row numbers only; matched strings are never stored"}
    if not rows_total:
        return CheckResult("identifiers", "pass", f"No identifier-like strings in {', '.join(phi_cols)} ({scanned} rows scanned).", details)
    kinds = ", ".join(f"{kind} {n}" for kind, n in totals.items() if n)
    where = "; ".join(f"{split} rows {quote_rows(c['rows'], c['rows_with_identifiers'])}"
                      for split, cols in per_split.items() for c in cols.values() if c["rows_with_identifiers"])
    text = (f"Identifier-like strings in free text ({', '.join(phi_cols)}): {plural(sum(totals.values()), 'match', 'matches')} ({kinds}) "
            f"in {rows_total} of {scanned} rows "
            f"({where}).")
    if policy == "refuse":
        return CheckResult("identifiers", "refuse", f"{text} Refused under --phi-policy refuse: remove or mask them "
                           "(e.g. replace with [DATE], [PHONE]) and run again.", details)
    return CheckResult("identifiers", "warn", f"{text} Review and de-identify them before sharing data or models; "
                       "--phi-policy refuse makes this stop the run.", details)
