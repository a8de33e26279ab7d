"""Model files and the training checkpoint as Kedro datasets (weights-only torch files).

A model file may be an fsspec URL (`pemt_pipeline.storage`): it is saved to a local temporary file,
then uploaded whole; loading reads its copy in the local read cache. Storage options: `credentials`
(Kedro's credentials entry named in the catalog), else the entry ``object_storage`` for every URL
(`pemt_pipeline.hooks.ObjectStorage`). The training loop writes its checkpoints itself: they stay local.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

import yaml

from pemt_pipeline import storage
from pemt_pipeline.models import TrainedModel, load_state, load_trained, save_trained
from pemt_pipeline.models.authors import AuthorsCheckpoint, parse_checkpoint
from pemt_pipeline.training.checkpoint import load_checkpoint


def _url_or_path(filepath: str | None, what: str) -> Path | str | None:
    storage.refuse_userinfo(filepath, what)
    return None if not filepath else filepath if storage.is_url(filepath) else Path(filepath)


def _is_file(path: Path | str, options: dict[str, Any]) -> bool:
    if isinstance(path, Path):
        return path.is_file()
    try:
        return storage.info(path, options).get("type") == "file"
    except FileNotFoundError:
        return False


class ModelFileDataset(AbstractDataset):
    """One torch file (`filepath`, local or an fsspec URL) that a pipeline writes: `PRODUCER` names
    it in the error a load of a missing file raises; `credentials`: storage options of a URL."""

    PRODUCER = "training"

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None,
                 credentials: dict[str, Any] | None = None):
        self._filepath = _url_or_path(filepath, "model file")
        self._options = dict(credentials or {})
        self.metadata = metadata

    def _existing(self) -> Path:
        """The local file to read (a URL's cached copy); a DatasetError naming the pipeline to run
        when it does not exist."""
        if not _is_file(self._filepath, self._options):
            raise DatasetError(f"{storage.redact(self._filepath)!r} does not exist: run `kedro run --pipelines "
                               f"{self.PRODUCER}` first")
        return storage.local_copy(self._filepath, self._options)

    def _write(self, save, data) -> None:
        """`save(data, path)` to the file (a URL: into a local temporary file, uploaded whole)."""
        if isinstance(self._filepath, Path):
            save(data, self._filepath)
            return
        with storage.writing(self._filepath, self._options, suffix=".pt") as tmp:
            save(data, tmp)

    def _exists(self) -> bool:
        return _is_file(self._filepath, self._options)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": storage.redact(self._filepath)}


class PEMTModelDataset(ModelFileDataset):
    """A model file, pruned model file or training checkpoint (`pemt_pipeline.models.files`): loads
    as a `TrainedModel` (model in eval mode, ``torch.load(weights_only=True)``); saves a model file
    atomically (a pruned model with its architecture).

    Args:
        filepath: the .pt file (local or an fsspec URL).
        credentials: storage options of a URL.
    """

    def load(self) -> TrainedModel:
        return load_trained(self._existing())

    def save(self, data: TrainedModel) -> None:
        self._write(save_trained, data)


@dataclass
class TrainingCheckpoint:
    """A training checkpoint file; its contents (`pemt_pipeline.training.checkpoint`) load on first use."""

    path: Path

    @property
    def name(self) -> str:
        """The path relative to the working directory (the project's) when it lies below it."""
        path = Path(self.path).resolve()
        return str(path.relative_to(Path.cwd().resolve())) if path.is_relative_to(Path.cwd().resolve()) else str(path)

    @functools.cached_property
    def state(self) -> dict[str, Any]:
        return load_checkpoint(self.path)


class TrainingCheckpointDataset(ModelFileDataset):
    """The training checkpoint (`pemt_pipeline.training.checkpoint`): the training loop writes it
    itself while it runs (atomically, to resume after a kill), so saving only checks that the path
    handed over is this file; loading gives a `TrainingCheckpoint` (read, weights_only, on first use).

    Args:
        filepath: the checkpoint file (`<training.checkpoint_dir>/last.pt`).
    """

    def load(self) -> TrainingCheckpoint:
        return TrainingCheckpoint(self._existing())

    def save(self, data: str | Path) -> None:
        if isinstance(self._filepath, str) or Path(data).resolve() != self._filepath.resolve():
            raise DatasetError(f"training wrote its checkpoint to {str(data)!r}, but this dataset is "
                               f"{str(self._filepath)!r}: training.checkpoint_dir and the catalog disagree")
        if not self._filepath.is_file():
            raise DatasetError(f"training reported the checkpoint {str(data)!r}, which does not exist")


@dataclass
class AuthorsCheckpointFile:
    """An authors' checkpoint (`pemt_pipeline.models.authors`) and their YAML config, if given."""

    checkpoint: AuthorsCheckpoint
    config: dict[str, Any] | None


class AuthorsCheckpointDataset(AbstractDataset[None, AuthorsCheckpointFile]):
    """The authors' released checkpoint (`checkpoint.pyth`, read with ``weights_only=True``) and,
    optionally, the authors' YAML config it was trained with. Read only.

    Args:
        filepath: the checkpoint (local or an fsspec URL); None (no `--params import.path=...`) fails
            with a message saying so.
        config_filepath: the authors' config YAML (layers, heads, dropout); None: the model parameters.
        credentials: storage options of URLs.
    """

    def __init__(self, filepath: str | None = None, config_filepath: str | None = None,
                 metadata: dict[str, Any] | None = None, credentials: dict[str, Any] | None = None):
        self._filepath = _url_or_path(filepath, "import.path")
        self._config = _url_or_path(config_filepath, "import.authors_config")
        self._options = dict(credentials or {})
        self.metadata = metadata

    def load(self) -> AuthorsCheckpointFile:
        if self._filepath is None:
            raise DatasetError("no checkpoint to import: run with --params import.path=/path/to/checkpoint.pyth "
                               "(and optionally import.authors_config=/path/to/their_config.yaml)")
        if isinstance(self._filepath, str) and not _is_file(self._filepath, self._options):
            raise DatasetError(f"authors' checkpoint {self._filepath!r} does not exist")
        ckpt = parse_checkpoint(load_state(storage.local_copy(self._filepath, self._options), "authors' checkpoint"),
                                storage.redact(self._filepath))
        config = None
        if self._config is not None:
            if not _is_file(self._config, self._options):
                raise DatasetError(f"import.authors_config {storage.redact(self._config)!r} does not exist")
            config = yaml.safe_load(storage.local_copy(self._config, self._options).read_text())
            if not isinstance(config, dict):
                raise DatasetError(f"import.authors_config {storage.redact(self._config)!r} is not a YAML mapping")
        return AuthorsCheckpointFile(ckpt, config)

    def save(self, data: None) -> None:
        raise DatasetError("the authors' checkpoint is read only")

    def _exists(self) -> bool:
        return self._filepath is not None and _is_file(self._filepath, self._options)

    def _describe(self) -> dict[str, Any]:
        # no filepath (no --params import.path): the run's missing-input check leaves it to load()'s message
        return {"filepath": storage.redact(self._filepath) if self._filepath else None,
                "config_filepath": storage.redact(self._config) if self._config else None}
