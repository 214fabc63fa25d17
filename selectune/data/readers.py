"""Reading tabular input files (CSV, TSV, JSON lines, Parquet) into pandas.

Every failure becomes a DataError whose message names the file and says how to fix it,
because the CLI shows that message to the user verbatim and exits with status 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


class DataError(ValueError):
    """Bad input data.

    str(err) is one or two sentences that name the problem (file, column, row numbers where
    relevant) and the fix. The CLI prints it and exits 2; nothing is written.
    """


# Compressed variants are read by pandas through its `compression="infer"` default.
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")
TEXT_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None}
SUPPORTED = ".csv, .tsv, .jsonl, .parquet (text formats may also end in " + ", ".join(COMPRESSIONS) + ")"


def file_format(path: Path) -> tuple[str, bool]:
    """Return (format suffix, is_compressed) from the file name, case-insensitively."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSIONS
    if compressed:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    if fmt in TEXT_FORMATS or (fmt == ".parquet" and not compressed):
        return fmt, compressed
    raise DataError(
        f"Unsupported file type for {path}: use one of {SUPPORTED}. "
        "Convert the file or rename it so its extension matches its content."
    )


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/Parquet file into a DataFrame, raising DataError on any problem.

    Values are read as-is: only truly empty fields become NaN. Strings such as "NA" or "None"
    stay strings, because they can be real class names and silently dropping them would
    change the data behind the user's back.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        where = "" if path.is_absolute() else f" (relative paths start at {os.getcwd()})"
        raise DataError(f"Data file {what}: {path}. Check the path{where}.")
    fmt, compressed = file_format(path)
    if path.stat().st_size == 0:
        raise DataError(f"Data file {path} has no rows (it is empty). Point to a file with a header and data rows.")

    try:
        if fmt == ".parquet":
            frame = read_parquet(path)
        elif fmt == ".jsonl":
            frame = read_jsonl(path, compressed)
        else:
            frame = pd.read_csv(
                path, sep=TEXT_FORMATS[fmt], encoding="utf-8-sig", keep_default_na=False, na_values=[""]
            )
    except UnicodeDecodeError:
        raise DataError(
            f"Data file {path} is not UTF-8 text. "
            f"Re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{''.join(path.suffixes)}`."
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"Data file {path} has no rows. Point to a file with a header and data rows.") from None
    except pd.errors.ParserError as err:
        raise DataError(
            f"Data file {path} is malformed and could not be parsed as {fmt[1:].upper()}: {first_line(err)}. "
            "Check for unbalanced quotes or rows with extra separators."
        ) from None

    if len(frame) == 0:
        raise DataError(f"Data file {path} has no rows (only a header). Point to a file with data rows.")
    return frame


def read_parquet(path: Path) -> pd.DataFrame:
    # Imported here so that CSV-only users do not pay pyarrow's import cost.
    import pyarrow

    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise DataError(
            f"Data file {path} is not a readable Parquet file: {first_line(err)}. "
            "Re-export it (e.g. DataFrame.to_parquet) or use CSV instead."
        ) from None


def read_jsonl(path: Path, compressed: bool) -> pd.DataFrame:
    try:
        # dtype=False keeps JSON values as written: "1" stays a string and a "date" column is not parsed.
        return pd.read_json(path, lines=True, encoding="utf-8-sig", dtype=False, precise_float=True)
    except UnicodeDecodeError:
        raise
    except ValueError as err:
        where = "" if compressed else bad_json_line(path)
        raise DataError(
            f"Data file {path} is not valid JSON lines{where}: {first_line(err)}. "
            "Each line must be one JSON object, e.g. {\"text\": \"...\", \"label\": \"...\"}."
        ) from None


def bad_json_line(path: Path) -> str:
    """Find the first line json cannot parse, so the error can point at it (only run on failure)."""
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return f" (line {number})"
            if not isinstance(value, dict):
                return f" (line {number} is not a JSON object)"
    return ""


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
