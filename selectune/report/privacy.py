"""Keep identifier-like text out of the report.

The report is built from aggregate files only, and raw data rows are never read. Strings that still came
from users or their data — file paths, the command line, column, label and group names, check messages —
pass through :func:`redact` before they are rendered: whatever the data checks' patterns recognise as an
e-mail, phone number, record number, exact date or URL is replaced by its type ("[email]"), never copied.
Hashes and numbers the library computed are not passed through it (a sha256 may hold a digit run).
"""
from __future__ import annotations

from typing import Any

from selectune.data.identifiers import mask_identifiers


def redact(value: Any) -> str:
    return "–" if value is None else mask_identifiers(str(value))
