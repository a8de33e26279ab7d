"""Wiring of the `training` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.training.nodes import prepare_training, pretrain


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare_training,
                inputs=["manifest", "clip_shards", "clip_embeddings", "negatives_table", "params:training",
                        "params:model", "params:negatives", "params:embedding"],
                outputs="training_inputs",
                name="prepare_training_inputs",
            ),
            Node(pretrain, inputs="training_inputs",
                 outputs=["pretrained_model", "training_checkpoint", "training_summary"],
                 name="pretrain"),
        ]
    )
