"""The folder of clip shards written by ingestion, as a Kedro dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.media.shards import ShardStore


class ClipShardsDataset(AbstractDataset[ShardStore, ShardStore]):
    """Loads a lazy `ShardStore` over the folder.

    Ingestion workers write the shards themselves (in parallel, atomically); saving only checks that
    the store handed over is this folder, so the catalog and the parameters cannot disagree.

    Args:
        path: the shard folder.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> ShardStore:
        if not self._path.is_dir():
            raise DatasetError(f"shard folder {str(self._path)!r} does not exist: run the ingestion pipeline first")
        return ShardStore(self._path)

    def save(self, data: ShardStore) -> None:
        if Path(data.root).resolve() != self._path.resolve():
            raise DatasetError(f"shards were written to {str(data.root)!r}, but this dataset is {str(self._path)!r}")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
