"""A folder of media files as a Kedro dataset."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline import storage
from pemt_pipeline.atomic import atomic_open, remove_stale_temporaries
from pemt_pipeline.media.folder import DEFAULT_EXTENSIONS, VideoSource


def _optional_path(value: str | None) -> Path | str | None:
    return None if value in (None, "", "null", "None") else value if storage.is_url(value) else Path(value)


def _remote_kind(url: str) -> str | None:
    """"file", "directory" or None (missing) for a URL (one metadata request; the error says why
    a store cannot be reached, without its text)."""
    try:
        return storage.info(url).get("type")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatasetError(f"{storage.redact(url)!r} cannot be read ({exc.strerror or type(exc).__name__})") from None


class VideoFolderDataset(AbstractDataset[dict[str, bytes], VideoSource]):
    """Loads a `VideoSource` (the folder and its labels CSV; nothing is read yet).

    Saves ``{relative path: file bytes}``: each file is written atomically (`pemt_pipeline.atomic`,
    after removing the temporaries a killed save of it left), and media files already in the folder
    that are not in the dict are removed, so the folder holds exactly what was saved.

    A remote folder (an fsspec URL, `pemt_pipeline.storage`) is read only: ingestion lists it and its
    workers download the videos, with the storage options of the credentials entry ``object_storage``
    (`pemt_pipeline.hooks.ObjectStorage`).

    Args:
        path: the folder (a local path or an fsspec URL).
        labels_csv: a labels CSV (columns path, label, split), or a Kinetics-style CSV; default:
            ``labels.csv`` in the folder if there is one. Which labels apply (this CSV, UCF101 split
            lists, class folders, none) is the ingestion's `layout` parameter (`media.folder`).
    """

    def __init__(self, path: str, labels_csv: str | None = None, metadata: dict[str, Any] | None = None):
        storage.refuse_userinfo(path, "video folder")
        self._path = path.rstrip("/") if storage.is_url(path) else Path(path)
        self._labels_csv = _optional_path(labels_csv)
        self.metadata = metadata

    def load(self) -> VideoSource:
        if isinstance(self._path, str):
            if _remote_kind(self._path) != "directory":
                raise DatasetError(f"video folder {storage.redact(self._path)!r} does not exist or is not a folder")
            if self._labels_csv is not None and not (_remote_kind(str(self._labels_csv)) == "file"
                                                      if storage.is_url(self._labels_csv) else
                                                      self._labels_csv.is_file()):
                raise DatasetError(f"labels CSV {storage.redact(self._labels_csv)!r} does not exist")
            return VideoSource(self._path, self._labels_csv)
        if not self._path.is_dir():
            raise DatasetError(f"video folder {str(self._path)!r} does not exist or is not a folder")
        if self._labels_csv is not None and not self._labels_csv.is_file():
            raise DatasetError(f"labels CSV {str(self._labels_csv)!r} does not exist")
        return VideoSource(self._path, self._labels_csv)

    def save(self, data: dict[str, bytes]) -> None:
        if isinstance(self._path, str):
            raise DatasetError(f"the video folder {storage.redact(self._path)!r} is remote: it is read only")
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
        if isinstance(self._path, str):
            return _remote_kind(self._path) == "directory"
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": storage.redact(self._path),
                "labels_csv": None if self._labels_csv is None else storage.redact(self._labels_csv)}
