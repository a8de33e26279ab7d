"""`report`: the fusion comparison (early / mid / late fusion, sharing variants) as HTML + Markdown."""

from pemt_pipeline.pipelines.report.pipeline import create_pipeline, render_pipeline

__all__ = ["create_pipeline", "render_pipeline"]
