"""Fixed-width text tables for terminal output, shared by every command's renderer."""
from __future__ import annotations

from typing import Any


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Fixed-width text table; floats to 4 significant decimals."""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    return "\n".join([line, "  ".join("-" * w for w in widths)] + ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body])
