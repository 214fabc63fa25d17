"""Identifier-like content in free text (e-mail, phone, record numbers, exact dates, URLs), found by pattern.

What is found is only ever *counted*: results hold counts per type and row numbers, never the
matched strings, so that a report, a JSON file or a log line cannot leak what it warns about.

The patterns are tuned not to fire on ordinary clinical and patient text: doses ("20 mg",
"11.25mg"), durations ("2 weeks"), ranges ("1-2 times", "100-200"), blood pressure ("120/80"),
fractions ("1/2"), percentages and years alone ("since 2013", "March 2015") do not match.
A day with a month ("March 6th", "3/30/2015", "13 January 2014") does: HIPAA's Safe Harbor
treats every date element finer than the year as an identifier.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
DAY = r"(?:0?[1-9]|[12]\d|3[01])"
ORDINAL = r"(?:st|nd|rd|th)"
# A number right after a month name that is really a quantity ("May 5 mg", "March 2 weeks later").
NOT_A_UNIT = r"(?!\s*(?:mg|mcg|ml|g|kg|lbs?|pounds|%|x\b|times|days?|weeks?|months?|years?|hours?|hrs?|minutes?|mins?)\b)"

PATTERNS: dict[str, re.Pattern] = {
    # Matches start only where a token starts, so a long run of word characters costs linear, not quadratic, time.
    "email": re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "url": re.compile(r"\bhttps?://\S+|\bwww\.[A-Za-z0-9-]+\.\S+", re.IGNORECASE),
    # 555-123-4567, (555) 123-4567, 555.123.4567, 1-800-555-0199, +44 20 7946 0958; needs separators or a +,
    # so a bare 10-digit number counts as an id number instead of twice.
    "phone": re.compile(r"(?<![\w/.-])(?:(?:\+|00)\d{1,3}[\s.-]?)?(?:1[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w/-])"
                        r"|(?<![\w/.-])\+\d{1,3}(?:[\s.-]\d{2,4}){3,5}(?![\w/-])"),
    # Record/account numbers: 7+ digits in a row (not part of a decimal or a 1,000,000 grouping), US SSN
    # shapes, and a number after an explicit label ("MRN: 12345", "patient id A-4471").
    "id_number": re.compile(r"(?<![\d.,])\d{7,}(?![\d.,]\d)"
                            r"|(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"
                            r"|\b(?:MRN|medical record(?: number| no\.?)?|record (?:number|no\.?)|patient (?:id|number|no\.?)|"
                            r"NHS (?:number|no\.?)|SSN|social security (?:number|no\.?))[\s:#.]*(?=[A-Z0-9-]*\d)[A-Z0-9-]{4,}",
                            re.IGNORECASE),
    # Day and month, with or without a year: 3/30/2015, 22/5/16, 2014-07-18, 18.07.2014, March 6th,
    # May 8 2009, Dec 23, 2014, 13 January 2014, the 12th of January. Month names must be capitalised:
    # "may" is also a verb.
    "date": re.compile(rf"(?<![\w/.-]){DAY}/{DAY}/(?:\d{{4}}|\d{{2}})(?![\w/-])"
                       rf"|(?<![\w/.-])(?:19|20)\d{{2}}-(?:0?[1-9]|1[0-2])-{DAY}(?![\w/-])"
                       rf"|(?<![\w/.-]){DAY}[.-]{DAY}[.-](?:19|20)\d{{2}}(?![\w/-])"
                       rf"|\b{MONTH}\.?\s+{DAY}(?:{ORDINAL})?\b{NOT_A_UNIT}(?:,?\s+(?:19|20)\d{{2}}\b)?"
                       rf"|\b{DAY}(?:{ORDINAL})?\s+(?:of\s+)?{MONTH}\b\.?(?:,?\s+(?:19|20)\d{{2}}\b)?"),
}
TYPES = tuple(PATTERNS)


@dataclass
class IdentifierScan:
    """Where identifier-like strings occur: per type, the matching strings' count and the row numbers.

    rows are 1-based row labels (the frame's index + 1); for a frame read straight from a file that is
    the data row (the header not counted). The matched text itself is deliberately not kept.
    """
    matches: dict[str, int]  # type -> number of matched strings
    rows: dict[str, list[int]]  # type -> row numbers with at least one match, ascending
    rows_scanned: int

    @property
    def rows_with_any(self) -> list[int]:
        return sorted(set().union(*self.rows.values())) if self.rows else []


def count_identifiers(text: str) -> dict[str, int]:
    """Number of matches per identifier type in one string (types with no match are left out)."""
    counts = {}
    for kind, pattern in PATTERNS.items():
        n = sum(1 for _ in pattern.finditer(text))
        if n:
            counts[kind] = n
    return counts


def mask_identifiers(text: str) -> str:
    """The text with every identifier-like match replaced by its type in brackets ("seen [date]")."""
    for kind, pattern in PATTERNS.items():
        text = pattern.sub(f"[{kind}]", text)
    return text


def scan_identifiers(texts: pd.Series) -> IdentifierScan:
    """Scan a column of free text; non-string cells (NaN, numbers) are skipped."""
    matches = {kind: 0 for kind in TYPES}
    rows: dict[str, list[int]] = {kind: [] for kind in TYPES}
    for label, value in texts.items():
        if not isinstance(value, str):
            continue
        for kind, n in count_identifiers(value).items():
            matches[kind] += n
            rows[kind].append(int(label) + 1)
    return IdentifierScan(matches=matches, rows={k: sorted(v) for k, v in rows.items()}, rows_scanned=len(texts))
