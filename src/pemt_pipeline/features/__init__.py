"""Clip features: eval-time clip transforms, the dataset of clip sequences read from shards (with
its augmentation), embedding every clip with the model's CNNs, and the memory-mapped embedding
store. Nothing here imports Kedro."""

from pemt_pipeline.features.dataset import (AugmentConfig, ShardClipDataset, collate, derive_seed, make_generator,
                                            model_batch)
from pemt_pipeline.features.embed import EmbedConfig, embed_clips
from pemt_pipeline.features.export import FeatureExportConfig, FeatureStore, export_features
from pemt_pipeline.features.store import ClipEmbeddings, EmbeddingWriter
from pemt_pipeline.features.transforms import audio_clips, video_clips

__all__ = ["AugmentConfig", "ClipEmbeddings", "EmbedConfig", "EmbeddingWriter", "ShardClipDataset", "audio_clips",
           "collate", "derive_seed", "embed_clips", "make_generator", "model_batch", "video_clips",
           "FeatureExportConfig", "FeatureStore", "export_features"]
