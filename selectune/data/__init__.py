"""Data layer: reading files, validating them, seeded splits, and bundled example data sets."""

from .bundled import BUNDLED, BundledSet, export_bundled
from .readers import DataError, read_table
from .splits import Splits, load_splits

__all__ = ["BUNDLED", "BundledSet", "DataError", "Splits", "export_bundled", "load_splits", "read_table"]
