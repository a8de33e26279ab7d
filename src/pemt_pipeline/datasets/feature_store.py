"""The feature export (`pemt_pipeline.features.export`) as a Kedro dataset: the library streams the
store into its folder itself; the dataset loads a lazy, memory-mapped `FeatureStore` over it."""

from __future__ import annotations

from pemt_pipeline.datasets.folder_store import _FolderStoreDataset
from pemt_pipeline.features.export import FeatureStore


class FeatureStoreDataset(_FolderStoreDataset):
    """Exported features of every stream, per clip and per video; loads a `FeatureStore`. Args: path
    (the folder, which `features.output_dir` must name; or an fsspec URL with local_dir, that folder:
    see `folder_store`), credentials (storage options of a URL)."""

    store_class = FeatureStore
    producer = "features"
    remote = "mirror"
