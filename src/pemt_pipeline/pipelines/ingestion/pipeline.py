"""Wiring of the `ingestion` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.ingestion.nodes import index_videos, ingest_videos


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                index_videos,
                inputs=["source_videos", "params:ingestion"],
                outputs="video_index",
                name="index_source_videos",
            ),
            Node(
                ingest_videos,
                inputs=["video_index", "params:ingestion"],
                outputs=["clip_shards", "manifest", "rejects", "ingestion_summary"],
                name="ingest_videos",
            ),
        ]
    )
