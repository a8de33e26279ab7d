"""kedro-datasets' file datasets with crash-safe local saves (`pemt_pipeline.atomic`).

kedro-datasets writes a local file in place, so a save that fails part-way (a kill, a full disk)
truncates the previous good file. These subclasses write a local file to a temporary beside it,
fsync it and rename it into place (after removing the temporaries a killed save of the same file
left), so the previous version survives any failure; load, `load_args`, `save_args`, `fs_args`
(``open_args_save``: mode, encoding, newline, errors) and versioning are kedro-datasets'. A remote
path (``s3://``, ``gs://``, ...) keeps fsspec's upload: an object store never shows a half-written
object.

`AtomicPartitionedDataset` with ``overwrite: true`` builds the new set of partitions in a temporary
folder and swaps it in, instead of deleting the folder first: a kill leaves the old set or the new.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import IO, Any

import pandas as pd
from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.partitions import PartitionedDataset

from pemt_pipeline.atomic import atomic_open, atomic_path, recover, remove_stale_temporaries


class _AtomicLocalSave:
    """Shared by the file datasets: write the save path through `atomic_open`."""

    def _save_atomically(self, write: Callable[[IO], None]) -> None:
        path = Path(get_filepath_str(self._get_save_path(), self._protocol))
        remove_stale_temporaries(path.parent, path.name)
        open_args = dict(self._fs_open_args_save)
        with atomic_open(path, open_args.pop("mode"), **open_args) as f:
            write(f)
        self._invalidate_cache()


class AtomicParquetDataset(_AtomicLocalSave, ParquetDataset):
    """`pandas.ParquetDataset` whose local save is atomic. Same arguments."""

    def save(self, data: pd.DataFrame) -> None:
        if self._protocol != "file" or "partition_cols" in self._save_args:  # the latter: kedro's error
            return ParquetDataset.save.__wrapped__(self, data)
        self._save_atomically(lambda f: data.to_parquet(f, **self._save_args))


class AtomicCSVDataset(_AtomicLocalSave, CSVDataset):
    """`pandas.CSVDataset` whose local save is atomic. Same arguments."""

    def save(self, data: pd.DataFrame) -> None:
        if self._protocol != "file":
            return CSVDataset.save.__wrapped__(self, data)
        self._save_atomically(lambda f: data.to_csv(path_or_buf=f, **self._save_args))


class AtomicJSONDataset(_AtomicLocalSave, JSONDataset):
    """`json.JSONDataset` whose local save is atomic. Same arguments."""

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            return JSONDataset.save.__wrapped__(self, data)
        self._save_atomically(lambda f: json.dump(data, f, **self._save_args))


class AtomicPartitionedDataset(PartitionedDataset):
    """`partitions.PartitionedDataset` whose local ``overwrite: true`` save replaces the whole folder
    at once: the partitions are saved into a temporary folder beside it, which is then swapped in
    (`pemt_pipeline.atomic`), so the previous set survives a kill or a full disk. Same arguments;
    other saves are kedro-datasets'."""

    def _local_path(self) -> Path | None:
        return Path(self._filesystem._strip_protocol(self._path)) if self._protocol == "file" else None

    def load(self) -> dict[str, Callable[[], Any]]:
        if (path := self._local_path()) is not None:
            recover(path)
        return PartitionedDataset.load.__wrapped__(self)

    def _exists(self) -> bool:
        if (path := self._local_path()) is not None:
            recover(path)
        return super()._exists()

    def save(self, data: dict[str, Any]) -> None:
        path = self._local_path()
        if path is None or not self._overwrite:
            return PartitionedDataset.save.__wrapped__(self, data)
        remove_stale_temporaries(path.parent, path.name)
        with atomic_path(path, folder=True) as tmp:
            for partition_id, partition_data in sorted(data.items()):
                self._partition_to_path(partition_id)  # checks that the id stays inside the folder
                kwargs = deepcopy(self._dataset_config)
                kwargs[self._filepath_arg] = str(tmp / f"{partition_id.lstrip('/')}{self._filename_suffix}")
                if callable(partition_data) and self._save_lazily:
                    partition_data = partition_data()  # noqa: PLW2901
                self._dataset_type(**kwargs).save(partition_data)
        self._invalidate_caches()
