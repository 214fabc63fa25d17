"""The update report: one self-contained HTML file and a Markdown version, built only from saved files."""
from selectune.report.build import build, report

__all__ = ["build", "report"]
