"""A folder of media files as a Kedro dataset."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.media.folder import DEFAULT_EXTENSIONS, VideoSource


def _optional_path(value: str | None) -> Path | None:
    return None if value in (None, "", "null", "None") else Path(value)


class VideoFolderDataset(AbstractDataset[dict[str, bytes], VideoSource]):
    """Loads a `VideoSource` (the folder and its labels CSV; nothing is read yet).

    Saves ``{relative path: file bytes}``: each file is written atomically, and media files already in
    the folder that are not in the dict are removed, so the folder holds exactly what was saved.

    Args:
        path: the folder.
        labels_csv: a labels CSV (columns path, label, split); default: ``labels.csv`` in the folder if
            there is one, else labels from the one-sub-folder-per-class layout.
    """

    def __init__(self, path: str, labels_csv: str | None = None, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._labels_csv = _optional_path(labels_csv)
        self.metadata = metadata

    def load(self) -> VideoSource:
        if not self._path.is_dir():
            raise DatasetError(f"video folder {str(self._path)!r} does not exist or is not a folder")
        if self._labels_csv is not None and not self._labels_csv.is_file():
            raise DatasetError(f"labels CSV {str(self._labels_csv)!r} does not exist")
        return VideoSource(self._path, self._labels_csv)

    def save(self, data: dict[str, bytes]) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        for rel, blob in data.items():
            target = self._path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, target)
        keep = {(self._path / rel).resolve() for rel in data}
        for old in self._path.rglob("*"):
            if old.is_file() and old.suffix.lower().lstrip(".") in DEFAULT_EXTENSIONS and old.resolve() not in keep:
                old.unlink()

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "labels_csv": None if self._labels_csv is None else str(self._labels_csv)}
