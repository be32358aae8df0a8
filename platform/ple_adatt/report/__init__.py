"""Ablation statistics and reports: tidy results table in, report.md/.html + PNGs out.

Pure functions only (no Ray, no MLflow); the launch layer collects results and calls
``write_report``. See docs/reports.md for how to read a report.
"""
from ple_adatt.report.render import SECTIONS, AdattDiagnostics, write_report
from ple_adatt.report.stats import (
    RESULT_COLUMNS,
    StudyMeta,
    adjust_pvalues,
    compare,
    mean_ci,
    metric_direction,
    paired_differences,
    paired_test,
    per_type_seed_values,
    summarize,
    validate_results,
    verdict,
)

__all__ = [
    "RESULT_COLUMNS", "SECTIONS", "AdattDiagnostics", "StudyMeta", "adjust_pvalues", "compare",
    "mean_ci", "metric_direction", "paired_differences", "paired_test", "per_type_seed_values",
    "summarize", "validate_results", "verdict", "write_report",
]
