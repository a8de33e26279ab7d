"""Wiring of the `evaluation` pipeline (the audio downstream nodes carry the tag `audio_downstream`)."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.evaluation.nodes import (audio_downstream_probe, extract_features, probe_videos, retrieve,
                                                      summarise, summarise_audio)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(extract_features, inputs=["pretrained_model", "manifest", "clip_shards", "params:evaluation",
                                           "params:training.augment"],
                 outputs="video_features", name="extract_video_features", tags="video"),
            Node(probe_videos, inputs=["video_features", "manifest", "params:evaluation"],
                 outputs="probe_metrics", name="probe_videos", tags="video"),
            Node(retrieve, inputs=["pretrained_model", "video_features", "manifest", "params:evaluation"],
                 outputs="retrieval_metrics", name="retrieve_audio_visual", tags="video"),
            Node(summarise, inputs=["probe_metrics", "retrieval_metrics"], outputs="evaluation_summary",
                 name="summarise_evaluation", tags="video"),
            Node(audio_downstream_probe, inputs=["pretrained_model", "params:evaluation", "params:ingestion"],
                 outputs="audio_probe_metrics", name="probe_audio_folder", tags="audio_downstream"),
            Node(summarise_audio, inputs="audio_probe_metrics", outputs="audio_evaluation_summary",
                 name="summarise_audio_probe", tags="audio_downstream"),
        ]
    )
