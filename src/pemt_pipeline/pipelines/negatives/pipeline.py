"""Wiring of the `negatives` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.negatives.nodes import build_negatives


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_negatives,
                inputs=["clip_embeddings", "params:negatives"],
                outputs=["negatives_table", "negatives_summary"],
                name="build_negative_table",
            )
        ]
    )
