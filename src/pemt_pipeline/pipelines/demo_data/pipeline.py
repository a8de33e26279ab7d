"""Wiring of the `demo_data` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.demo_data.nodes import generate_demo_videos


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_demo_videos,
                inputs="params:demo_data",
                outputs=["demo_videos", "demo_labels"],
                name="generate_demo_videos",
            )
        ]
    )
