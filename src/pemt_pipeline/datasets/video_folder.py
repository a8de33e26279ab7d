"""A folder of media files as a Kedro dataset."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.atomic import atomic_open, remove_stale_temporaries
from pemt_pipeline.media.folder import DEFAULT_EXTENSIONS, VideoSource


def _optional_path(value: str | None) -> Path | None:
    return None if value in (None, "", "null", "None") else Path(value)


class VideoFolderDataset(AbstractDataset[dict[str, bytes], VideoSource]):
    """Loads a `VideoSource` (the folder and its labels CSV; nothing is read yet).

    Saves ``{relative path: file bytes}``: each file is written atomically (`pemt_pipeline.atomic`,
    after removing the temporaries a killed save of it left), and media files already in the folder
    that are not in the dict are removed, so the folder holds exactly what was saved.

    Args:
        path: the folder.
        labels_csv: a labels CSV (columns path, label, split), or a Kinetics-style CSV; default:
            ``labels.csv`` in the folder if there is one. Which labels apply (this CSV, UCF101 split
            lists, class folders, none) is the ingestion's `layout` parameter (`media.folder`).
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
        names_by_folder = defaultdict(set)
        for target in (self._path / rel for rel in data):
            names_by_folder[target.parent].add(target.name)
        for folder, names in names_by_folder.items():
            remove_stale_temporaries(folder, names)
        for rel, blob in data.items():
            with atomic_open(self._path / rel) as f:
                f.write(blob)
        keep = {(self._path / rel).resolve() for rel in data}
        for old in self._path.rglob("*"):
            if old.is_file() and old.suffix.lower().lstrip(".") in DEFAULT_EXTENSIONS and old.resolve() not in keep:
                old.unlink()

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "labels_csv": None if self._labels_csv is None else str(self._labels_csv)}
