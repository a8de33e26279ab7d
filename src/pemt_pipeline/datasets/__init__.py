"""Custom Kedro datasets: the only Kedro-aware code besides `pipelines/`."""

from pemt_pipeline.datasets.folder_store import ClipEmbeddingsDataset, ClipShardsDataset
from pemt_pipeline.datasets.model_file import PEMTModelDataset
from pemt_pipeline.datasets.report_files import OptionalJSONDataset, ReportDataset
from pemt_pipeline.datasets.video_folder import VideoFolderDataset

__all__ = ["ClipEmbeddingsDataset", "ClipShardsDataset", "OptionalJSONDataset", "PEMTModelDataset",
           "ReportDataset", "VideoFolderDataset"]
