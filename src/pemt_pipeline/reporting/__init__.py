"""Reporting library (no Kedro): the fusion-comparison report as one self-contained HTML page and
a Markdown twin with its figures, ending with a conclusion drawn from the numbers by explicit rules.

    report = render_report(fusion_results, pruning_results)   # pruning_results may be None
    save_report(report, "data/08_reporting/fusion", stem="report")
"""

from .conclusion import RULES, draw_conclusion
from .report import DEFAULT_TITLE, SECTIONS, Report, render_report, save_report
from .schema import ReportInputError, validate_fusion, validate_pruning

__all__ = [
    "DEFAULT_TITLE", "RULES", "Report", "ReportInputError", "SECTIONS", "draw_conclusion",
    "render_report", "save_report", "validate_fusion", "validate_pruning",
]
