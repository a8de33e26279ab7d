"""Folders written by the library (in parallel or streaming), as Kedro datasets.

Ingestion workers write clip shards, and embedding streams into memory-mapped arrays, themselves;
such a dataset loads a lazy reader over its folder, and saving only checks that the reader handed
over is this folder, so the catalog and the parameters cannot disagree. Loading first puts back the
previous folder if a swap was killed half-way (`pemt_pipeline.atomic.recover`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.atomic import recover
from pemt_pipeline.features.store import ClipEmbeddings
from pemt_pipeline.media.shards import ShardStore


class _FolderStoreDataset(AbstractDataset):
    store_class: ClassVar[type]
    producer: ClassVar[str]  # the pipeline that writes the folder

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self):
        recover(self._path)
        if not self._path.is_dir():
            raise DatasetError(f"{str(self._path)!r} does not exist: run the {self.producer} pipeline first")
        return self.store_class(self._path)

    def save(self, data) -> None:
        if Path(data.root).resolve() != self._path.resolve():
            raise DatasetError(f"{self.producer} wrote to {str(data.root)!r}, but this dataset is {str(self._path)!r}")

    def _exists(self) -> bool:
        recover(self._path)
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class ClipShardsDataset(_FolderStoreDataset):
    """The clip shards of ingestion; loads a `ShardStore`. Args: path (the shard folder)."""

    store_class = ShardStore
    producer = "ingestion"


class ClipEmbeddingsDataset(_FolderStoreDataset):
    """Per-clip CNN embeddings; loads a `ClipEmbeddings` (memory-mapped). Args: path (the folder)."""

    store_class = ClipEmbeddings
    producer = "embedding"
