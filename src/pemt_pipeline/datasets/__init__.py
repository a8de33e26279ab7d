"""Custom Kedro datasets: the only Kedro-aware code besides `pipelines/`."""

from pemt_pipeline.datasets.clip_shards import ClipShardsDataset
from pemt_pipeline.datasets.video_folder import VideoFolderDataset

__all__ = ["ClipShardsDataset", "VideoFolderDataset"]
