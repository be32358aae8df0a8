"""Reports: ablation statistics (stats.py) and report.md/.html + PNGs (render.py) from a tidy results
table; the table itself from MLflow or Tune results (results.py, reads via tracking/queries.py);
tuning-campaign summaries (tune_summary.py); the end-of-run console summary (run_summary.py).

No Ray; the launch layer runs the sweeps and calls in here. See docs/reports.md for how to read a report.
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
