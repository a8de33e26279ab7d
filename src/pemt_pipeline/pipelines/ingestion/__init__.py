"""`ingestion`: a folder of videos -> clip shards, a manifest and a rejects table."""

from pemt_pipeline.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
