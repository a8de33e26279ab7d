"""`training`: pretrain the shared low-rank model end to end (MEP + CPP, content-aware negatives)."""

from pemt_pipeline.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
