"""`features`: a model file over the ingested videos -> per-clip and per-video features of every
stream (memory-mapped arrays + Parquet tables)."""

from pemt_pipeline.pipelines.features.pipeline import create_pipeline

__all__ = ["create_pipeline"]
