"""Wiring of the `finetune` pipeline: one node per protocol, tagged with its name (choose with
`--tags video,visual_cnn`), each writing its fine-tuned model and results; `collect_finetune_results`
(tagged with every protocol) gathers whichever results exist."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.finetuning.config import ALL_PROTOCOLS
from pemt_pipeline.pipelines.finetune.nodes import (audio_linear_kfold, collect_results, finetune_video,
                                                    finetune_visual_cnn)


def create_pipeline(**kwargs) -> Pipeline:
    inputs = ["pretrained_model", "manifest", "clip_shards", "params:finetune", "params:training.augment"]
    return Pipeline(
        [
            Node(finetune_video, inputs=inputs, outputs=["finetuned_video_model", "finetune_video_results"],
                 name="finetune_video", tags="video"),
            Node(finetune_visual_cnn, inputs=inputs,
                 outputs=["finetuned_visual_cnn_model", "finetune_visual_cnn_results"],
                 name="finetune_visual_cnn", tags="visual_cnn"),
            Node(audio_linear_kfold, inputs=["pretrained_model", "params:finetune", "params:ingestion"],
                 outputs="finetune_audio_results", name="audio_linear_kfold", tags="audio_linear_kfold"),
            Node(collect_results,
                 inputs=["finetune_video_results", "finetune_visual_cnn_results", "finetune_audio_results"],
                 outputs=["finetune_results", "finetune_summary"], name="collect_finetune_results",
                 tags=list(ALL_PROTOCOLS)),
        ]
    )
