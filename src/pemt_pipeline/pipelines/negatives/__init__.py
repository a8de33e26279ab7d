"""`negatives`: clip embeddings -> the content-aware negative-sampling table."""

from pemt_pipeline.pipelines.negatives.pipeline import create_pipeline

__all__ = ["create_pipeline"]
