"""Data checks that warn: class imbalance, prevalence (or target) shift between splits, small subgroups."""
from __future__ import annotations

import pandas as pd
from scipy.stats import chi2_contingency, ks_2samp

from .check_report import CheckResult
from .identifiers import mask_identifiers


def label_counts(frames, label_col) -> pd.DataFrame:
    # rows: splits, columns: classes (sorted), zero where a split lacks a class
    labels = {name: frame[label_col].dropna().astype(str).map(mask_identifiers) for name, frame in frames.items()}
    return pd.DataFrame({name: s.value_counts() for name, s in labels.items()}).T.fillna(0).astype(int).sort_index(axis=1)


def class_imbalance(frames, label_col, ratio_limit) -> CheckResult:
    counts = label_counts(frames, label_col)
    reference = "train" if "train" in frames else next(iter(frames))
    row = counts.loc[reference]
    row = row[row > 0]
    ratio = float(row.max() / row.min())
    shares = (row / row.sum()).round(4)
    details = {"reference_split": reference, "counts": {s: counts.loc[s].to_dict() for s in counts.index},
               "largest_to_smallest": round(ratio, 2), "limit": ratio_limit}
    described = ", ".join(f"{c} {int(row[c])} ({shares[c]:.1%})" for c in row.index)
    if ratio >= ratio_limit:
        return CheckResult("class_imbalance", "warn",
                           f"Class imbalance in {reference}: {described}; the largest class is {ratio:.1f}x the smallest "
                           f"(warning at {ratio_limit:g}x). Accuracy will flatter the model: judge it by macro-F1/AUPRC and "
                           "sensitivity per class, and consider --class-weight balanced.", details)
    return CheckResult("class_imbalance", "pass", f"Classes in {reference}: {described} (largest/smallest {ratio:.1f}x).", details)


def prevalence_shift(frames, label_col, limit) -> CheckResult:
    counts = label_counts(frames, label_col)
    if len(counts) < 2:
        return CheckResult("prevalence_shift", "skipped", "Only one split, so there is no shift between splits to check.")
    reference = "train" if "train" in frames else counts.index[0]
    prevalence = counts.div(counts.sum(axis=1), axis=0)
    shifts = []
    for split in counts.index.drop(reference):
        diff = (prevalence.loc[split] - prevalence.loc[reference])
        cls = diff.abs().idxmax()
        table = counts.loc[[reference, split]]
        table = table.loc[:, table.sum() > 0]
        p = float(chi2_contingency(table.to_numpy())[1]) if table.shape[1] > 1 else 1.0
        shifts.append({"split": split, "class": cls, "reference": round(float(prevalence.loc[reference, cls]), 4),
                       "value": round(float(prevalence.loc[split, cls]), 4), "difference": round(float(diff[cls]), 4),
                       "chi2_p": round(p, 4)})
    details = {"reference_split": reference, "prevalence": prevalence.round(4).to_dict(orient="index"), "shifts": shifts,
               "limit": limit, "test": "chi-square test of independence on the split x class counts (p < 0.05)"}
    flagged = [s for s in shifts if abs(s["difference"]) >= limit and s["chi2_p"] < 0.05]
    text = "; ".join(f"{s['class']!s} {s['reference']:.1%} in {reference} vs {s['value']:.1%} in {s['split']} "
                     f"({s['difference'] * 100:+.1f} points, chi-square p={s['chi2_p']:.3g})" for s in (flagged or shifts))
    if flagged:
        return CheckResult("prevalence_shift", "warn",
                           f"Class prevalence differs between splits beyond chance: {text}. Metrics such as PPV/NPV and accuracy "
                           "do not transfer across prevalences; check how the splits were drawn.", details)
    return CheckResult("prevalence_shift", "pass", f"Largest prevalence difference per split: {text} (warning at "
                       f"{limit * 100:.0f} points with p < 0.05).", details)


def target_shift(frames, label_col) -> CheckResult:
    values = {name: pd.to_numeric(frame[label_col], errors="coerce").dropna() for name, frame in frames.items()}
    stats = {name: {"n": int(v.size), "mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4)} for name, v in values.items()}
    reference = "train" if "train" in frames else next(iter(frames))
    tests = [{"split": s, "ks_p": round(float(ks_2samp(values[reference], values[s]).pvalue), 4)} for s in values if s != reference]
    details = {"reference_split": reference, "stats": stats, "tests": tests, "test": "two-sample Kolmogorov-Smirnov (p < 0.01)"}
    flagged = [t for t in tests if t["ks_p"] < 0.01]
    text = "; ".join(f"{t['split']} mean {stats[t['split']]['mean']:g} vs {stats[reference]['mean']:g} (KS p={t['ks_p']:.3g})"
                     for t in (flagged or tests))
    if flagged:
        return CheckResult("target_shift", "warn", f"The target's distribution differs between splits beyond chance: {text}.", details)
    return CheckResult("target_shift", "pass", f"No target shift beyond chance{': ' + text if text else ''}.", details)


# ---------------------------------------------------------------- subgroups (warn)

MISSING_GROUP = "(missing)"


def subgroup_sizes(frames, group_cols, min_size) -> CheckResult:
    if not group_cols:
        return CheckResult("subgroup_size", "skipped", "No subgroup columns given (--group-cols).")
    sizes, small, unseen = {}, [], []
    for col in group_cols:
        sizes[col] = {}
        for split, frame in frames.items():
            # Group names are printed, so any that look like identifiers (a date as a group) are masked first.
            names = frame[col].astype(object).where(frame[col].notna(), MISSING_GROUP).astype(str).map(mask_identifiers)
            sizes[col][split] = {str(k): int(v) for k, v in names.value_counts().sort_index().items()}
            for group, n in sizes[col][split].items():
                if n < min_size:
                    small.append({"column": col, "split": split, "group": group, "n": n})
        if "train" in frames:
            for split in frames:
                missing = sorted(set(sizes[col][split]) - set(sizes[col]["train"]))
                unseen += [{"column": col, "split": split, "group": g} for g in missing]
    details = {"min_group_size": min_size, "sizes": sizes, "small": small, "unseen_in_train": unseen}
    if small or unseen:
        parts = []
        for col in group_cols:
            for split in frames:
                tiny = [s for s in small if s["column"] == col and s["split"] == split]
                if tiny:
                    tiny = sorted(tiny, key=lambda s: s["n"])
                    named = ", ".join(f"{s['group']} n={s['n']}" for s in tiny[:5]) + (", ..." if len(tiny) > 5 else "")
                    parts.append(f"{col} in {split}: {len(tiny)} of {len(sizes[col][split])} groups below {min_size} rows ({named})")
        if unseen:
            parts.append(f"{len(unseen)} group(s) absent from train")
        return CheckResult("subgroup_size", "warn",
                           f"Small subgroups: {'; '.join(parts)}. Their metrics will have wide confidence intervals; "
                           "merge small groups or collect more data before judging them.", details)
    return CheckResult("subgroup_size", "pass", f"Every subgroup has at least {min_size} rows in every split.", details)
