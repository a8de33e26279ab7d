"""Folders written by the library (in parallel or streaming), as Kedro datasets.

Ingestion workers write clip shards, and embedding streams into memory-mapped arrays, themselves;
such a dataset loads a lazy reader over its folder, and saving only checks that the reader handed
over is this folder, so the catalog and the parameters cannot disagree. Loading first puts back the
previous folder if a swap was killed half-way (`pemt_pipeline.atomic.recover`).

fsspec URLs (`pemt_pipeline.storage`):
- the shard folder may be a URL: ingestion uploads each shard whole, readers go through the local
  read cache (`ClipShardsDataset`);
- the embedding store and the feature export are memory-mapped, so they are written to and read
  from a local folder, `local_dir` (the library's `output_dir`), and the URL holds the reference
  copy: saving uploads the finished folder (each file whole, ``meta.json`` last); loading uses the
  local folder when it mirrors the remote one (the objects' versions, recorded beside it, match),
  else downloads the remote folder and swaps it in whole first. Another machine thus trains on the
  store embedding wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline import storage
from pemt_pipeline.atomic import atomic_open, atomic_path, recover
from pemt_pipeline.features.store import ClipEmbeddings
from pemt_pipeline.media.shards import ShardStore

INDEX = "meta.json"  # uploaded last: a store whose meta.json is there is complete


class _FolderStoreDataset(AbstractDataset):
    store_class: ClassVar[type]
    producer: ClassVar[str]  # the pipeline that writes the folder
    remote: ClassVar[str | None] = None  # a URL path: "direct" (read through the cache) | "mirror" (local_dir)

    def __init__(self, path: str, metadata: dict[str, Any] | None = None, local_dir: str | None = None,
                 credentials: dict[str, Any] | None = None):
        storage.refuse_userinfo(path, f"the {self.producer} folder")
        url = storage.is_url(path)
        if url and self.remote is None:
            raise DatasetError(f"{type(self).__name__} is a local folder, got the URL {storage.redact(path)!r}")
        if url and self.remote == "mirror" and not local_dir:
            raise DatasetError(f"{type(self).__name__} at the URL {storage.redact(path)!r} needs local_dir: the local "
                               f"folder the {self.producer} pipeline writes (its output_dir) and reads from")
        if local_dir and storage.is_url(local_dir):
            raise DatasetError(f"local_dir must be a local folder, got {storage.redact(local_dir)!r}")
        self._path = path.rstrip("/") if url else Path(path)
        self._local = Path(local_dir) if url and local_dir else None  # the mirror of a URL
        self._options = dict(credentials or {})
        self.metadata = metadata

    @property
    def _folder(self) -> Path | None:
        """The local folder the store is read from and written to (None: a URL read directly)."""
        return self._local if isinstance(self._path, str) else self._path

    def load(self):
        if self._folder is None:
            if not self._exists():
                raise DatasetError(f"{self._path!r} holds no shard: run the {self.producer} pipeline first")
            return self.store_class(self._path)
        if self._local is not None:
            self._mirror()
        recover(self._folder)
        if not self._folder.is_dir():
            raise DatasetError(f"{str(self._folder)!r} does not exist: run the {self.producer} pipeline first")
        return self.store_class(self._folder)

    def save(self, data) -> None:
        folder = self._folder
        same = (str(data.root).rstrip("/") == self._path if folder is None
                else not storage.is_url(data.root) and Path(data.root).resolve() == folder.resolve())
        if not same:
            raise DatasetError(f"{self.producer} wrote to {storage.redact(data.root)!r}, but this dataset is "
                               f"{storage.redact(folder or self._path)!r}")
        if self._local is not None:
            storage.upload_folder(self._local, self._path, last=(INDEX,), storage_options=self._options)
            self._record_versions(self._remote_versions())

    def _exists(self) -> bool:
        if isinstance(self._path, str):  # a remote folder exists once it holds an object (a store: its index)
            listed = storage.listing(self._path, storage_options=self._options)
            return INDEX in listed if self._local is not None else bool(listed)
        recover(self._path)
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        out = {"path": storage.redact(self._path)}
        if self._local is not None:
            out["local_dir"] = str(self._local)
        return out

    # --- a URL store mirrored in local_dir
    def _versions_file(self) -> Path:
        return self._local.with_name(f".{self._local.name}.remote.json")

    def _remote_versions(self) -> dict[str, str]:
        listed = storage.listing(self._path, storage_options=self._options, recursive=True)
        return {name: storage.version(entry) for name, entry in listed.items()}

    def _record_versions(self, versions: dict[str, str]) -> None:
        with atomic_open(self._versions_file(), "w") as f:
            json.dump({"url": self._path, "versions": versions}, f, sort_keys=True)

    def _mirror(self) -> None:
        """Make local_dir a copy of the remote store (downloaded whole and swapped in) unless it is one."""
        versions = self._remote_versions()
        if INDEX not in versions:
            raise DatasetError(f"{self._path!r} holds no {INDEX}: run the {self.producer} pipeline first")
        try:
            recorded = json.loads(self._versions_file().read_text())
        except (OSError, ValueError):
            recorded = {}
        recover(self._local)
        if recorded == {"url": self._path, "versions": versions} and self._local.is_dir():
            return
        with atomic_path(self._local, folder=True) as tmp:
            for name in versions:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                with storage.downloaded(storage.join(self._path, name), tmp, self._options) as part:
                    shutil.move(part, tmp / name)
            if self._remote_versions() != versions:
                raise DatasetError(f"{self._path!r} changed while it was downloaded (is the {self.producer} "
                                   "pipeline writing it?): load it again")
        self._record_versions(versions)


class ClipShardsDataset(_FolderStoreDataset):
    """The clip shards of ingestion; loads a `ShardStore`. Args: path (the shard folder, local or an
    fsspec URL)."""

    store_class = ShardStore
    producer = "ingestion"
    remote = "direct"


class ClipEmbeddingsDataset(_FolderStoreDataset):
    """Per-clip CNN embeddings; loads a `ClipEmbeddings` (memory-mapped). Args: path (the folder, or
    an fsspec URL with local_dir, the folder `embedding.output_dir` names), credentials (storage
    options of a URL)."""

    store_class = ClipEmbeddings
    producer = "embedding"
    remote = "mirror"
