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


class ClipEmbeddings:
    """Read side: lazily memory-mapped arrays and the clip table (first putting back the previous
    store if a swap was killed half-way, see `pemt_pipeline.atomic.recover`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        recover(self.root)

    def __repr__(self) -> str:
        return f"ClipEmbeddings({str(self.root)!r})"

    def array(self, name: str) -> np.ndarray:
        if name not in ARRAYS:
            raise ValueError(f"no embedding {name!r}; the store has {ARRAYS}")
        return np.load(self.root / f"{name}.npy", mmap_mode="r")

    @property
    def visual(self) -> np.ndarray:
        return self.array("visual")

    @property
    def audio(self) -> np.ndarray:
        return self.array("audio")

    @property
    def clips(self) -> pd.DataFrame:
        return pd.read_parquet(self.root / "clips.parquet")

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.root / "meta.json").read_text())


class EmbeddingWriter:
    """Write side: fills memory-mapped arrays in a temporary folder, then swaps it into place
    (removing first what killed runs left beside the store)."""

    def __init__(self, root: str | os.PathLike, n_clips: int, dims: dict[str, int]):
        self.root = Path(root)
        remove_stale_temporaries(self.root.parent, self.root.name)
        self.tmp = temporary(self.root, folder=True)
        self.arrays: dict[str, np.memmap] = {}
        with discard_on_error(self.tmp, self.root):
            for name in ARRAYS:
                path = self.tmp / f"{name}.npy"
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                              shape=(n_clips, dims[name]))
                preallocate(path)
        self.written = 0

    def write(self, batch: dict[str, np.ndarray]) -> None:
        n = len(batch[ARRAYS[0]])
        for name in ARRAYS:
            self.arrays[name][self.written:self.written + n] = batch[name]
        self.written += n

    def close(self, clips: pd.DataFrame, meta: dict[str, Any]) -> ClipEmbeddings:
        expected = len(next(iter(self.arrays.values())))
        if self.written != expected or len(clips) != expected:
            self.abort()
            raise RuntimeError(f"embedding store incomplete: {self.written} of {expected} clips written")
        with discard_on_error(self.tmp, self.root):
            for arr in self.arrays.values():
                arr.flush()
            self.arrays.clear()
            clips.to_parquet(self.tmp / "clips.parquet", index=False)
            (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            commit(self.tmp, self.root)
        return ClipEmbeddings(self.root)

    def abort(self) -> None:
        self.arrays.clear()
        discard(self.tmp)
