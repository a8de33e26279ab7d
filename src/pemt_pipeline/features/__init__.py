"""Clip features: eval-time clip transforms, embedding every clip with the model's CNNs, and the
memory-mapped embedding store. Nothing here imports Kedro."""

from pemt_pipeline.features.embed import EmbedConfig, embed_clips, load_model
from pemt_pipeline.features.store import ClipEmbeddings, EmbeddingWriter
from pemt_pipeline.features.transforms import audio_clips, video_clips

__all__ = ["ClipEmbeddings", "EmbedConfig", "EmbeddingWriter", "audio_clips", "embed_clips", "load_model", "video_clips"]
