"""Data layer: reading files, validating them, seeded splits, checks before training, and bundled example data sets."""

from .bundled import BUNDLED, BundledSet, export_bundled
from .checks import CheckReport, CheckResult, DataCheckRefused, DataLeakageError, IdentifierError, run_checks
from .readers import DataError, read_table
from .splits import Splits, load_splits

__all__ = ["BUNDLED", "BundledSet", "CheckReport", "CheckResult", "DataCheckRefused", "DataError", "DataLeakageError",
           "IdentifierError", "Splits", "export_bundled", "load_splits", "read_table", "run_checks"]
