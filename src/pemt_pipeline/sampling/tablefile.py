"""The negative table at any size: built block by block, kept in memory while small, spilled to
Parquet part files when large, written as one file or as a folder of parts (plain pyarrow).

Layouts on disk (the same path either way, e.g. ``data/05_model_input/negatives.parquet``):

- one Parquet file, when the table has at most `partition_rows` rows (the demo's case);
- a folder of parts ``part-00000.parquet``, ``part-00001.parquet``, ...: part i holds the anchors
  [i*w, (i+1)*w) with w = max(1, partition_rows // k) (at most max(partition_rows, k) rows a
  part), sorted as the whole table is (anchor, then descending probability); empty ranges have
  no part. Concatenated in name order, the parts are the single-file table, row for row.

Writing is crash-safe (`pemt_pipeline.atomic`): a file through a temporary beside it; a folder is
built as a temporary folder (each part itself written through a temporary and a rename) and
swapped in whole, so a kill or an error leaves the previous version, file or folder.

Building (`TableSink`): the builders hand over blocks of whole anchors. The sink keeps them in
memory until they exceed `partition_rows` rows, then appends every block to per-part spill files
in a scratch folder (``tempfile``'s, i.e. $TMPDIR: put it on the data's filesystem so that writing
the table links the parts instead of copying them), in row groups of at most ROW_GROUP rows, so memory stays
O(partition_rows + ROW_GROUP) whatever the table's size. A part whose blocks arrived out of anchor
order (clips not stored video after video) is re-sorted in memory at the end (one part at a time).
The scratch folder is deleted once the table is written or dropped; a killed process leaves it
(``negatives-*`` in $TMPDIR).

Reading (`read_columns`, `read_table`): part after part into preallocated numpy columns (peak: the
table plus one part), checked to be in anchor order across parts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pemt_pipeline.atomic import atomic_open, atomic_path, recover, remove_stale_temporaries
from pemt_pipeline.kill_points import KILL_AFTER_TABLE_PARTS, kill_at, kill_point

COLUMNS = ("anchor", "candidate", "probability", "distance")
DTYPES = {"anchor": np.int64, "candidate": np.int64, "probability": np.float32, "distance": np.float32}
SCHEMA = pa.schema([(c, pa.from_numpy_dtype(np.dtype(t))) for c, t in DTYPES.items()])
PART = "part-{:05d}.parquet"
PART_GLOB = "part-*.parquet"
ROW_GROUP = 1 << 20  # rows buffered (all parts together) before they are appended to the spill files


def sorted_columns(anchor, candidate, probability, distance) -> dict[str, np.ndarray]:
    """The table's order: by anchor, then descending probability (ties keep their given order);
    columns cast to the table's dtypes."""
    cols = dict(zip(COLUMNS, (np.asarray(x, dtype=DTYPES[c])
                              for c, x in zip(COLUMNS, (anchor, candidate, probability, distance)))))
    a = cols["anchor"]
    if len(a) > 1 and np.all(a[1:] >= a[:-1]):
        order = None  # already grouped by anchor: no copy
    else:
        order = np.argsort(a, kind="stable")
        a = a[order]
    p = cols["probability"] if order is None else cols["probability"][order]
    if np.any((a[1:] == a[:-1]) & (p[1:] > p[:-1])):  # selections come sorted; this is a guard
        order = (np.arange(len(a)) if order is None else order)[np.lexsort((-p, a))]
    return cols if order is None else {c: x[order] for c, x in cols.items()}


def part_width(partition_rows: int, k: int) -> int:
    """Anchor ids per part: a part holds at most max(partition_rows, k) rows."""
    return max(1, int(partition_rows) // max(1, int(k)))


def table_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files of the table at `path` (the file itself, or the parts of a folder in order)."""
    path = Path(path)
    recover(path)  # a folder swap killed between its two renames
    if path.is_dir():
        parts = sorted(path.glob(PART_GLOB))
        if not parts:
            raise ValueError(f"negative table {path} is a folder without {PART_GLOB} parts")
        return parts
    if not path.is_file():
        raise FileNotFoundError(f"negative table {path} does not exist: run the negatives pipeline first "
                                "(kedro run --pipelines negatives)")
    return [path]


def read_columns(path: str | os.PathLike, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The table at `path` (file or folder of parts) as numpy columns (all, or `columns`), read part
    by part into preallocated arrays; no per-row Python."""
    files = table_files(path)
    metas = [pq.read_schema(f) for f in files]
    names = list(columns) if columns is not None else list(metas[0].names)
    for f, schema in zip(files, metas):
        missing = [c for c in names if c not in schema.names]
        if missing:
            raise ValueError(f"negative table part {f} is missing columns {missing} (has {schema.names})")
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    out = {c: np.empty(sum(rows), dtype=metas[0].field(c).type.to_pandas_dtype()) for c in names}
    lo = 0
    for f, n in zip(files, rows):
        part = pq.read_table(f, columns=names)
        for c in names:
            at = lo
            for chunk in part.column(c).chunks:
                out[c][at:at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
                at += len(chunk)
        del part
        if len(files) > 1 and "anchor" in out and lo and n and out["anchor"][lo] < out["anchor"][lo - 1]:
            raise ValueError(f"negative table part {f} starts at anchor {out['anchor'][lo]}, before the end of "
                             f"the previous part ({out['anchor'][lo - 1]}): the parts are not in anchor order")
        lo += n
    return out


def read_table(path: str | os.PathLike, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """`read_columns` as a DataFrame over the same arrays (no copy)."""
    return pd.DataFrame(read_columns(path, columns), copy=False)


def _arrow(cols: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({c: pa.array(x) for c, x in cols.items()})


def _write_file(cols: dict[str, np.ndarray], path: Path) -> None:
    with atomic_open(path, "wb") as f:
        pq.write_table(_arrow(cols), f, row_group_size=ROW_GROUP)


def write_frame(table: pd.DataFrame, path: str | os.PathLike, partition_rows: int | None = None,
                k: int | None = None) -> Path:
    """Write a table held in memory: one file when it has at most `partition_rows` rows (or
    partition_rows is None), else a folder of parts by anchor range (k: the most rows an anchor
    has; default: counted). Crash-safe either way."""
    path = Path(path)
    cols = {c: table[c].to_numpy() for c in table.columns}
    remove_stale_temporaries(path.parent, path.name)
    if partition_rows is None or len(table) <= partition_rows:
        _write_file(cols, path)
        return path
    if "anchor" not in cols:
        raise ValueError(f"a partitioned negative table needs an anchor column, got {list(cols)}")
    a = cols["anchor"]
    if not np.all(a[1:] >= a[:-1]):
        order = np.argsort(a, kind="stable")
        cols = {c: x[order] for c, x in cols.items()}
        a = cols["anchor"]
    if k is None:
        k = int(np.diff(np.flatnonzero(np.r_[True, a[1:] != a[:-1], True])).max())
    width = part_width(partition_rows, k)
    bounds = np.searchsorted(a, np.arange(0, int(a[-1]) + width + 1, width))
    kill, written = kill_point(KILL_AFTER_TABLE_PARTS), 0
    with atomic_path(path, folder=True) as tmp:
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if hi > lo:
                _write_file({c: x[lo:hi] for c, x in cols.items()}, tmp / PART.format(i))
                written += 1
                kill_at(kill, written)
    return path


class NegativeTable:
    """A built table: in memory (columns), or part files in a scratch folder (spilled). `frame()`
    reads it whole; `write(path)` puts it at `path` (one file, or the folder of parts, moved)."""

    def __init__(self, columns: dict[str, np.ndarray] | None, parts: list[Path] | None,
                 scratch: Path | None, rows: int, anchors: int, per_anchor: tuple[int, int] | None):
        self._columns, self.parts, self._scratch = columns, parts, scratch
        self.rows, self.anchors, self.per_anchor = rows, anchors, per_anchor  # per_anchor: (min, max) rows
        self._cleanup = weakref.finalize(self, shutil.rmtree, scratch, True) if scratch is not None else None

    @property
    def partitioned(self) -> bool:
        return self.parts is not None

    def frame(self) -> pd.DataFrame:
        if self._columns is not None:
            return pd.DataFrame(self._columns, copy=False)
        cols = {c: np.empty(self.rows, dtype=t) for c, t in DTYPES.items()}
        lo = 0
        for f in self.parts:
            part = read_columns(f)
            n = len(part["anchor"])
            for c in COLUMNS:
                cols[c][lo:lo + n] = part[c]
            lo += n
        return pd.DataFrame(cols, copy=False)

    def write(self, path: str | os.PathLike) -> Path:
        """Crash-safely: one file (in memory) or the folder of parts (hard-linked, or copied across
        filesystems, into a temporary folder beside `path`, swapped in; the scratch folder is then
        deleted, and kept if the write fails). The table then reads from `path`."""
        path = Path(path)
        remove_stale_temporaries(path.parent, path.name)
        if self._columns is not None:
            _write_file(self._columns, path)
            return path
        kill = kill_point(KILL_AFTER_TABLE_PARTS)
        with atomic_path(path, folder=True) as tmp:
            for i, f in enumerate(self.parts):
                _link_or_copy(f, tmp / f.name)
                kill_at(kill, i + 1)
        self.parts = [path / f.name for f in self.parts]
        if self._cleanup is not None:
            self._cleanup()
        return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem (or no hard links there)
        shutil.copyfile(src, dst)


class TableSink:
    """Collects a build's blocks of whole anchors (any order of blocks) -> `NegativeTable`."""

    def __init__(self, partition_rows: int | None, k: int, scratch_dir: str | os.PathLike | None = None):
        self.partition_rows, self.k, self.scratch_dir = partition_rows, int(k), scratch_dir
        self.blocks: list[dict[str, np.ndarray]] = []
        self.rows, self.anchors = 0, 0
        self.count_min, self.count_max = None, None
        self._spill: _Spill | None = None

    def add(self, anchor, candidate, probability, distance) -> None:
        """One block: every row of its anchors (no anchor appears in another block)."""
        cols = sorted_columns(anchor, candidate, probability, distance)
        a = cols["anchor"]
        if len(a) == 0:
            return
        counts = np.diff(np.flatnonzero(np.r_[True, a[1:] != a[:-1], True]))
        self.anchors += len(counts)
        self.count_min = int(counts.min()) if self.count_min is None else min(self.count_min, int(counts.min()))
        self.count_max = int(counts.max()) if self.count_max is None else max(self.count_max, int(counts.max()))
        self.rows += len(a)
        if self._spill is None and self.partition_rows is not None and self.rows > self.partition_rows:
            self._spill = _Spill(part_width(self.partition_rows, self.k), self.scratch_dir)
            for block in self.blocks:
                self._spill.add(block)
            self.blocks = []
        if self._spill is not None:
            self._spill.add(cols)
        else:
            self.blocks.append(cols)

    def result(self) -> NegativeTable:
        per_anchor = (self.count_min, self.count_max) if self.anchors else None
        if self._spill is not None:
            parts = self._spill.finish()
            return NegativeTable(None, parts, self._spill.folder, self.rows, self.anchors, per_anchor)
        if not self.blocks:
            cols = {c: np.zeros(0, dtype=t) for c, t in DTYPES.items()}
        else:
            cols = sorted_columns(*(np.concatenate([b[c] for b in self.blocks]) for c in COLUMNS))
        self.blocks = []
        return NegativeTable(cols, None, None, self.rows, self.anchors, per_anchor)


class _Spill:
    """Per-part Parquet spill files in a scratch folder (see the module docstring)."""

    def __init__(self, width: int, scratch_dir: str | os.PathLike | None):
        self.width = width
        self.folder = Path(tempfile.mkdtemp(prefix="negatives-", dir=scratch_dir))
        self._guard = weakref.finalize(self, shutil.rmtree, self.folder, True)  # until handed over
        self.buffers: dict[int, list[dict[str, np.ndarray]]] = {}
        self.buffered = 0
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.last: dict[int, int] = {}  # last anchor written per part
        self.unsorted: set[int] = set()

    def add(self, cols: dict[str, np.ndarray]) -> None:
        a = cols["anchor"]  # sorted
        first, last = int(a[0]) // self.width, int(a[-1]) // self.width
        cuts = np.searchsorted(a, np.arange(first, last + 2) * self.width)
        for part, lo, hi in zip(range(first, last + 1), cuts[:-1], cuts[1:]):
            if hi > lo:
                self.buffers.setdefault(part, []).append({c: x[lo:hi] for c, x in cols.items()})
        self.buffered += len(a)
        if self.buffered >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        for part, blocks in sorted(self.buffers.items()):
            cols = {c: np.concatenate([b[c] for b in blocks]) for c in COLUMNS}
            a = cols["anchor"]
            if (part in self.last and a[0] < self.last[part]) or not np.all(a[1:] >= a[:-1]):
                self.unsorted.add(part)
            self.last[part] = int(cols["anchor"][-1])
            if part not in self.writers:
                self.writers[part] = pq.ParquetWriter(self.folder / PART.format(part), SCHEMA)
            self.writers[part].write_table(_arrow(cols))
        self.buffers, self.buffered = {}, 0

    def finish(self) -> list[Path]:
        self.flush()
        for writer in self.writers.values():
            writer.close()
        parts = []
        for part in sorted(self.writers):
            path = self.folder / PART.format(part)
            if part in self.unsorted:  # blocks came out of anchor order: sort this part in memory
                cols = read_columns(path)
                order = np.argsort(cols["anchor"], kind="stable")  # an anchor's rows stay together
                _write_file({c: x[order] for c, x in cols.items()}, path)
            parts.append(path)
        self._guard.detach()  # the NegativeTable owns the folder now
        return parts
