"""Wiring of the `embedding` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.embedding.nodes import embed_all_clips


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                embed_all_clips,
                inputs=["manifest", "clip_shards", "params:embedding", "params:model"],
                outputs=["clip_embeddings", "embedding_summary"],
                name="embed_clips",
            )
        ]
    )
