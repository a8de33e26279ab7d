"""`demo_data`: the embedded synthetic audio-visual dataset that `kedro run` uses by default."""

from pemt_pipeline.pipelines.demo_data.pipeline import create_pipeline

__all__ = ["create_pipeline"]
