"""The clip-embedding store: a folder that can be memory-mapped whatever its size.

- ``visual.npy``  float32 [N, Dv]   visual CNN embedding of each clip
- ``audio.npy``   float32 [N, Da]   audio CNN embedding of each clip
- ``clips.parquet``  one row per clip: clip_id (= row in the arrays), video_id, clip_index,
  clip_start, label, split
- ``meta.json``   how they were made (model configuration, checkpoint or seed, ...)
The arrays are NumPy ``.npy`` files written through `numpy.lib.format.open_memmap`, so writing
streams batch by batch and reading (`np.load(mmap_mode="r")`) never loads more than is touched.
The store is built in a temporary folder beside it (disk blocks preallocated, so a full disk fails at
creation with a clear error instead of SIGBUS) and swapped in by `pemt_pipeline.atomic`: a kill at any
moment leaves a complete store, the previous or the new one.

`ArrayStore` / `ArrayStoreWriter` are that folder pattern for any set of arrays and tables (the
feature export, features/export.py, writes its store with them); `ClipEmbeddings` /
`EmbeddingWriter` are the clip-embedding store built on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pemt_pipeline.atomic import (commit, discard, discard_on_error, preallocate, recover, remove_stale_temporaries,
                                  temporary)

ARRAYS = ("visual", "audio")


class ArrayStore:
    """Read side of a store folder: ``<name>.npy`` arrays (memory-mapped, read lazily),
    ``<name>.parquet`` tables and ``meta.json`` (first putting back the previous store if a swap
    was killed half-way, see `pemt_pipeline.atomic.recover`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        recover(self.root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def load_array(self, name: str) -> np.ndarray:
        return np.load(self.root / f"{name}.npy", mmap_mode="r")

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.root / f"{name}.parquet")

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.root / "meta.json").read_text())


class ClipEmbeddings(ArrayStore):
    """The clip-embedding store: lazily memory-mapped arrays and the clip table."""

    def array(self, name: str) -> np.ndarray:
        if name not in ARRAYS:
            raise ValueError(f"no embedding {name!r}; the store has {ARRAYS}")
        return self.load_array(name)

    @property
    def visual(self) -> np.ndarray:
        return self.array("visual")

    @property
    def audio(self) -> np.ndarray:
        return self.array("audio")

    @property
    def clips(self) -> pd.DataFrame:
        return self.table("clips")


class ArrayStoreWriter:
    """Write side of a store folder: every array of `shapes` (name -> shape; a name may hold a
    sub-folder, e.g. ``clips/visual``) is preallocated as a memory-mapped ``.npy`` of `dtype` in a
    temporary folder beside `root` (removing first what killed runs left there), filled block of
    rows by block of rows (`append`), and the folder is swapped into place by `commit` once every
    array is full; `abort` (or any failure) leaves the previous store."""

    def __init__(self, root: str | os.PathLike, shapes: dict[str, tuple[int, ...]], dtype: Any = np.float32):
        self.root = Path(root)
        remove_stale_temporaries(self.root.parent, self.root.name)
        self.tmp = temporary(self.root, folder=True)
        self.arrays: dict[str, np.memmap] = {}
        with discard_on_error(self.tmp, self.root):
            for name, shape in shapes.items():
                path = self.tmp / f"{name}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
                preallocate(path)
        self.rows = dict.fromkeys(self.arrays, 0)  # rows written so far, per array

    def append(self, name: str, rows: np.ndarray) -> None:
        """Write `rows` [n, ...] after the rows already written to array `name` (cast to its dtype)."""
        start, array = self.rows[name], self.arrays[name]
        if start + len(rows) > len(array):
            raise ValueError(f"{name}: {start + len(rows)} rows written to an array of {len(array)}")
        array[start:start + len(rows)] = rows
        self.rows[name] = start + len(rows)

    def commit(self, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> None:
        """Flush the arrays, write ``<name>.parquet`` per table and ``meta.json``, swap the folder in."""
        short = [f"{name} ({self.rows[name]} of {len(a)} rows)" for name, a in self.arrays.items()
                 if self.rows[name] != len(a)]
        if short:
            self.abort()
            raise RuntimeError(f"store {str(self.root)!r} incomplete: {', '.join(short)}")
        with discard_on_error(self.tmp, self.root):
            for arr in self.arrays.values():
                arr.flush()
            self.arrays.clear()
            for name, table in tables.items():
                table.to_parquet(self.tmp / f"{name}.parquet", index=False)
            (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            commit(self.tmp, self.root)

    def abort(self) -> None:
        self.arrays.clear()
        discard(self.tmp)


class EmbeddingWriter(ArrayStoreWriter):
    """Write side of the clip-embedding store: `write` a batch of clips to both arrays, `close`
    with the clip table."""

    def __init__(self, root: str | os.PathLike, n_clips: int, dims: dict[str, int]):
        super().__init__(root, {name: (n_clips, dims[name]) for name in ARRAYS})

    @property
    def written(self) -> int:
        return self.rows[ARRAYS[0]]

    def write(self, batch: dict[str, np.ndarray]) -> None:
        for name in ARRAYS:
            self.append(name, batch[name])

    def close(self, clips: pd.DataFrame, meta: dict[str, Any]) -> ClipEmbeddings:
        expected = len(next(iter(self.arrays.values())))
        if self.written != expected or len(clips) != expected:
            self.abort()
            raise RuntimeError(f"embedding store incomplete: {self.written} of {expected} clips written")
        self.commit({"clips": clips}, meta)
        return ClipEmbeddings(self.root)
