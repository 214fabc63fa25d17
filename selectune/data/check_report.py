"""The outcome of the data checks: one result per check, the report, and the errors that refuse data.

Results carry counts and row numbers only, so a report can be written, logged and shared without
repeating the ids, texts or identifiers it is about.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .readers import DataError

SHOWN_ROWS = 5  # row numbers quoted in a message; the JSON keeps up to MAX_ROWS per list
MAX_ROWS = 50


class DataCheckRefused(DataError):
    """The data failed a check that must not be overridden silently; `.report` holds every result."""

    def __init__(self, message: str, report: "CheckReport"):
        super().__init__(message)
        self.report = report


class DataLeakageError(DataCheckRefused):
    """The same patient/group id, or the same text/row, occurs in more than one split."""


class IdentifierError(DataCheckRefused):
    """Identifier-like content (e-mail, phone, record number, date, URL) in free text under phi_policy='refuse'."""


@dataclass
class CheckResult:
    check: str  # e.g. "id_leakage"
    status: str  # pass | warn | refuse | skipped
    message: str  # one or two sentences with the numbers; never raw ids, texts or matched strings
    details: dict[str, Any] = field(default_factory=dict)  # numbers and row numbers only


@dataclass
class CheckReport:
    results: list[CheckResult]
    splits: dict[str, dict[str, Any]]  # split -> {"rows": n, "source": file name or None}
    settings: dict[str, Any]

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.results}
        return "refuse" if "refuse" in statuses else "warn" if "warn" in statuses else "pass"

    @property
    def refusals(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "refuse"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "warn"]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "splits": self.splits, "settings": self.settings,
                "results": [asdict(r) for r in self.results]}

    def raise_if_refused(self) -> None:
        """Raise DataLeakageError (or IdentifierError when identifiers are the only refusal) naming every refusal."""
        refused = self.refusals
        if not refused:
            return
        kind = DataLeakageError if any(r.check != "identifiers" for r in refused) else IdentifierError
        raise kind(" ".join(r.message for r in refused), self)


def row_numbers(frame: pd.DataFrame, mask: np.ndarray | pd.Series) -> list[int]:
    """1-based row labels (index + 1) of the True entries, at most MAX_ROWS of them."""
    labels = frame.index[np.asarray(mask, dtype=bool)]
    return [int(label) + 1 for label in labels[:MAX_ROWS]]


def quote_rows(numbers: list[int], total: int) -> str:
    shown = ", ".join(map(str, numbers[:SHOWN_ROWS]))
    return shown + (f", ... ({total} in all)" if total > SHOWN_ROWS else "")


def plural(n: int, noun: str, many: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {many or noun + 's'}"
