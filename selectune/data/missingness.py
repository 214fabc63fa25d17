"""Data check that reports missing feature values per column and split, and warns when missingness shifts between
splits (a lab measured at one site and not another changes what the model's imputed inputs mean)."""
from __future__ import annotations

import numpy as np
from scipy.stats import chi2_contingency

from .check_report import CheckResult


def missingness(frames, feature_cols, limit: float) -> CheckResult:
    """Missing values per feature column and split; warn where a column's missing share differs by ``limit`` or more
    between the reference split (train) and another, beyond chance (chi-square p < 0.05)."""
    if not feature_cols:
        return CheckResult("missingness", "skipped", "No --feature-cols given (text data), so missing feature values were not counted.")
    counts = {split: {c: int(frame[c].isna().sum()) for c in feature_cols} for split, frame in frames.items()}
    rows = {split: len(frame) for split, frame in frames.items()}
    reference = "train" if "train" in frames else next(iter(frames))
    shifts = []
    for split in (s for s in frames if s != reference):
        for col in feature_cols:
            a, b = counts[reference][col], counts[split][col]
            share_a, share_b = a / max(rows[reference], 1), b / max(rows[split], 1)
            table = np.array([[a, rows[reference] - a], [b, rows[split] - b]])
            p = float(chi2_contingency(table)[1]) if (table.sum(axis=0) > 0).all() else 1.0
            if abs(share_b - share_a) >= limit and p < 0.05:
                shifts.append({"column": col, "split": split, "reference": round(share_a, 4), "value": round(share_b, 4),
                               "chi2_p": round(p, 4)})
    details = {"reference_split": reference, "missing": counts, "rows": rows, "shifts": shifts, "limit": limit}
    present = {split: {c: n for c, n in cols.items() if n} for split, cols in counts.items()}
    summary = "; ".join(f"{split}: " + (", ".join(f"{c} {n} of {rows[split]}" for c, n in cols.items()) or "none")
                        for split, cols in present.items())
    if shifts:
        text = "; ".join(f"{s['column']} {s['reference']:.1%} missing in {reference} vs {s['value']:.1%} in {s['split']} "
                         f"(chi-square p={s['chi2_p']:.3g})" for s in shifts)
        return CheckResult("missingness", "warn",
                           f"Missingness shifts between splits: {text}. Imputed values stand in for different patients in each "
                           "split; check how the data were collected (site, period, test ordering) before trusting the comparison.",
                           details)
    return CheckResult("missingness", "pass", f"Missing feature values per split: {summary}.", details)
