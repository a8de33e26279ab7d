"""`embedding`: every ingested clip -> visual and audio CNN embeddings (memory-mapped)."""

from pemt_pipeline.pipelines.embedding.pipeline import create_pipeline

__all__ = ["create_pipeline"]
