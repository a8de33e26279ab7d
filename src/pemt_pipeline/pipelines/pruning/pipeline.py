"""Wiring of the `pruning` pipeline: parse `params:pruning` once, load the training checkpoint,
embed training batches with its (frozen) CNNs, prune to every FLOPs target (one model file each),
measure base and pruned models, collect `pruning_results`."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.pruning.nodes import (collect_results, embed_batches, load_source, measure_base,
                                                   measure_pruned, parse_pruning_config, prune_models)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(parse_pruning_config, inputs="params:pruning", outputs="pruning_config",
                 name="parse_pruning_config"),
            Node(load_source, inputs="training_checkpoint", outputs=["pruning_base_model", "pruning_objective_state"],
                 name="load_pruning_source"),
            Node(embed_batches, inputs=["pruning_base_model", "manifest", "clip_shards", "pruning_config",
                                        "params:training.augment"],
                 outputs="pruning_batches", name="embed_pruning_batches"),
            Node(prune_models,
                 inputs=["pruning_base_model", "pruning_objective_state", "pruning_batches", "pruning_config",
                         "params:training.loss"],
                 outputs=["pruned_models", "pruning_search_logs"], name="prune_to_flops_targets"),
            Node(measure_base,
                 inputs=["pruning_base_model", "manifest", "params:evaluation", "params:training.augment",
                         "pruning_config"],
                 outputs="pruning_base_metrics", name="measure_base_model"),
            Node(measure_pruned,
                 inputs=["pruned_models", "manifest", "params:evaluation", "params:training.augment",
                         "pruning_config"],
                 outputs="pruned_model_metrics", name="measure_pruned_models"),
            Node(collect_results,
                 inputs=["pruning_base_metrics", "pruned_model_metrics", "pruning_search_logs", "pruning_config",
                         "training_checkpoint"],
                 outputs="pruning_results", name="collect_pruning_results"),
        ]
    )
