"""The clip-embedding store: a folder that can be memory-mapped whatever its size.

- ``visual.npy``  float32 [N, Dv]   visual CNN embedding of each clip
- ``audio.npy``   float32 [N, Da]   audio CNN embedding of each clip
- ``clips.parquet``  one row per clip: clip_id (= row in the arrays), video_id, clip_index,
  clip_start, label, split
- ``meta.json``   how they were made (model configuration, checkpoint or seed, ...)
The arrays are NumPy ``.npy`` files written through `numpy.lib.format.open_memmap`, so writing
streams batch by batch and reading (`np.load(mmap_mode="r")`) never loads more than is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ARRAYS = ("visual", "audio")


class ClipEmbeddings:
    """Read side: lazily memory-mapped arrays and the clip table."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

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
    """Write side: fills memory-mapped arrays in a temporary folder, then swaps it into place."""

    def __init__(self, root: str | os.PathLike, n_clips: int, dims: dict[str, int]):
        self.root = Path(root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", dir=self.root.parent))
        self.arrays = {name: np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=np.float32,
                                                       shape=(n_clips, dims[name])) for name in ARRAYS}
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
        for arr in self.arrays.values():
            arr.flush()
        self.arrays.clear()
        clips.to_parquet(self.tmp / "clips.parquet", index=False)
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        if self.root.exists():
            shutil.rmtree(self.root)
        os.replace(self.tmp, self.root)
        return ClipEmbeddings(self.root)

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
