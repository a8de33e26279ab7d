"""Custom Kedro datasets: the only Kedro-aware code besides `pipelines/`."""

from pemt_pipeline.datasets.atomic_files import (AtomicCSVDataset, AtomicJSONDataset, AtomicParquetDataset,
                                                 AtomicPartitionedDataset)
from pemt_pipeline.datasets.feature_store import FeatureStoreDataset
from pemt_pipeline.datasets.folder_store import ClipEmbeddingsDataset, ClipShardsDataset
from pemt_pipeline.datasets.negative_table import NegativeTableDataset
from pemt_pipeline.datasets.model_file import (AuthorsCheckpointDataset, PEMTModelDataset,
                                               TrainingCheckpointDataset)
from pemt_pipeline.datasets.report_files import OptionalJSONDataset, ReportDataset
from pemt_pipeline.datasets.video_folder import VideoFolderDataset

__all__ = ["AuthorsCheckpointDataset", "AtomicCSVDataset", "AtomicJSONDataset", "AtomicParquetDataset",
           "AtomicPartitionedDataset",
           "ClipEmbeddingsDataset", "ClipShardsDataset", "NegativeTableDataset", "OptionalJSONDataset",
           "PEMTModelDataset",
           "ReportDataset", "TrainingCheckpointDataset", "VideoFolderDataset", "FeatureStoreDataset"]
