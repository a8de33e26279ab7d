"""A folder of videos: which files to ingest, their ids, labels and splits.

Files are found recursively by extension (`extensions`, case-insensitive; None takes every file);
names starting with a dot (hidden files and folders) are skipped. Directories whose name looks like a
media file (``clip.mp4/``) are listed too, so that they are reported as rejected rather than silently
skipped; their contents are searched like any folder.

Only files inside the folder are ingested. A path that leads outside it stays a row of the index,
with ``reject_reason`` ``outside_source``: ingestion reports it as rejected and never opens it (its
``path`` is missing, NA). Such a path is
- a labels CSV path that climbs out of the folder (``sub/../../x.mp4``, ``../x.mp4``), or an absolute
  path elsewhere (an absolute path inside the folder is read as the relative path it names);
- unless `follow_symlinks`, a symbolic link (found in the folder, or on a labelled path) whose target
  lies outside the folder. A linked folder outside is then one such row, and is not searched.
With `follow_symlinks` those links are followed (a link back to one of its own parent folders is not,
so loops end). A link whose target is inside the folder is fine; a linked folder inside is not searched
a second time (its target is searched where it is). The detail does not tell whether the target exists.

Labels, in order of precedence:
1. a labels CSV (`labels_csv`, or ``labels.csv`` at the top of the folder): columns ``path`` (relative
   to the folder or absolute; ``\\`` is read as ``/``, leading ``./`` dropped), ``label`` and optionally
   ``split`` (``train`` or ``test``, case and surrounding spaces ignored); rows whose file is missing are
   reported as rejected (``missing_file``); files not in the CSV are kept without a label. An empty CSV,
   an empty path cell or another split value is an error naming the CSV and the line (the header is
   line 1, as in a spreadsheet); blank lines are ignored;
2. the one-sub-folder-per-class layout (every file exactly one folder deep): the folder is the label;
3. otherwise no labels.
A video without a split (or with an empty split cell) gets one from a hash of its path: ``test`` for a
`test_fraction` share of videos, ``train`` for the rest, stable across runs and machines.

Index columns (`INDEX_COLUMNS`): video_id; source_path (POSIX path relative to the folder, as found or
as listed); path (absolute; NA on an ``outside_source`` row); label; split; reject_reason (NA, or
``outside_source``: ingestion must reject the row with this reason and `reject_detail`, without opening
anything); reject_detail (NA, or why, for the rejects table). path, label and the reject columns have
the pandas ``string`` dtype (missing: ``pd.NA``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (
    "3g2", "3gp", "aac", "aif", "aiff", "asf", "avi", "flac", "flv", "m2ts", "m4a", "m4v", "mkv", "mov",
    "mp3", "mp4", "mpeg", "mpg", "mts", "mxf", "oga", "ogg", "ogv", "opus", "ts", "vob", "wav", "webm", "wmv",
)
INDEX_COLUMNS = ("video_id", "source_path", "path", "label", "split", "reject_reason", "reject_detail")
LABEL_PATH_COLUMNS = ("path", "video", "file", "filename")
# The splits the pipelines read (training/pruning `splits`, evaluation `train_splits`/`test_splits`).
SPLITS = ("train", "test")
OUTSIDE_SOURCE = "outside_source"
ESCAPES_DETAIL = "the labels CSV path leads outside the video folder; only files inside it are ingested"
SYMLINK_DETAIL = ("a symbolic link to a target outside the video folder; not followed unless "
                  "ingestion.follow_symlinks is true")
_HEADER_LINES = 1  # CSV line of the first row is its position + 1 + this (line 1 is the header)


@dataclass(frozen=True)
class VideoSource:
    """A folder of media files and, optionally, its labels CSV."""

    root: Path
    labels_csv: Path | None = None


def video_id(relpath: str) -> str:
    """A readable, filesystem-safe, unique id: the ASCII-slugged stem plus a hash of the path."""
    stem = unicodedata.normalize("NFKD", Path(relpath).stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:48] or "video"
    return f"{slug}-{hashlib.sha1(relpath.encode()).hexdigest()[:8]}"


def hash_split(relpath: str, test_fraction: float, seed: int = 0) -> str:
    digest = hashlib.sha1(f"{seed}:{relpath}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


# --- paths -----------------------------------------------------------------------------------------

def _within(path: str | os.PathLike, real_root: str | os.PathLike) -> bool:
    """Whether `path` is `real_root` or below it (both already resolved)."""
    return Path(path).is_relative_to(real_root)


def _escapes(relpath: str) -> bool:
    """Whether a normalised path leaves the folder lexically (absolute, or starting with ``..``)."""
    return PurePosixPath(relpath).is_absolute() or relpath == ".." or relpath.startswith("../")


def clean_path(raw: str) -> str:
    """A path as written in a labels CSV, normalised: ``\\`` -> ``/``, leading ``./`` prefixes dropped
    (a prefix, repeatedly: ``././a.mp4`` -> ``a.mp4``; ``../a.mp4`` keeps its ``..``), then
    ``a//b``, ``a/./b`` and ``a/x/../b`` collapsed (POSIX rules, no file system access)."""
    path = raw.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return posixpath.normpath(path)


def _root_spellings(root: str | os.PathLike) -> tuple[PurePosixPath, ...]:
    """The folder as given (made absolute) and resolved: an absolute CSV path may use either."""
    given = PurePosixPath(posixpath.normpath(Path(root).absolute().as_posix()))
    return tuple(dict.fromkeys((given, PurePosixPath(Path(root).resolve().as_posix()))))


def _relative_to_root(path: str, roots: tuple[PurePosixPath, ...]) -> str:
    """An absolute normalised path under one of `roots` as a relative path; any other path unchanged."""
    pure = PurePosixPath(path)
    if not pure.is_absolute():
        return path
    for root in roots:
        if pure.is_relative_to(root):
            return pure.relative_to(root).as_posix()
    return path


def outside_detail(real_root: Path, relpath: str, follow_symlinks: bool = False) -> str | None:
    """Why `relpath` (normalised) lies outside the folder `real_root` (resolved), or None when inside.

    The detail is one fixed text per kind (a path that climbs out, a link that leads out), the same
    whether the target outside is a file, a folder or nothing, so it cannot probe the file system."""
    if _escapes(relpath):
        return ESCAPES_DETAIL
    if not follow_symlinks and not _within(os.path.realpath(real_root / relpath), real_root):
        return SYMLINK_DETAIL
    return None


# --- finding files ---------------------------------------------------------------------------------

def _entries(folder: str) -> list[os.DirEntry]:
    """A folder's entries sorted by name; an unreadable folder is logged and yields none."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        logger.warning("cannot list folder %r (%s): its files are not ingested", folder, exc.strerror or exc)
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def find_media(
    root: Path,
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS,
    *,
    follow_symlinks: bool = False,
) -> list[str]:
    """Relative POSIX paths of candidate media files (and media-named folders), sorted.

    Symbolic links whose target lies outside `root` are listed (media-named files, and folders of any
    name) but, unless `follow_symlinks`, not searched: `build_index` reports them as ``outside_source``.
    Linked folders inside `root` are not searched again; links to a parent folder are never followed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {str(root)!r} does not exist or is not a folder")
    wanted = None if extensions is None else {e.lower().lstrip(".") for e in extensions}
    real_root = os.path.realpath(root)
    found = []
    # (folder, its relpath prefix, its real path, the real paths of it and its parents)
    stack = [(str(root), "", real_root, frozenset({real_root}))]
    while stack:
        folder, prefix, real_folder, ancestors = stack.pop()
        for entry in _entries(folder):
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            media_named = wanted is None or Path(entry.name).suffix.lower().lstrip(".") in wanted
            is_dir, link = _is_dir(entry), entry.is_symlink()
            real = os.path.realpath(entry.path) if link else os.path.join(real_folder, entry.name)
            outside = link and not _within(real, real_root)
            if outside and not follow_symlinks:
                if media_named or is_dir:
                    found.append(rel)  # reported, not searched
                continue
            if not is_dir:
                if media_named:
                    found.append(rel)
                continue
            if media_named:
                found.append(rel)  # a media-named folder, to be reported
            if (link and not outside) or real in ancestors:
                continue  # searched where it is / a loop
            stack.append((entry.path, rel + "/", real, ancestors | {real}))
    return sorted(found)


# --- labels CSV ------------------------------------------------------------------------------------

def _line(position: int) -> int:
    return position + 1 + _HEADER_LINES


def _where(csv_path: Path, position: int) -> str:
    return f"labels CSV {str(csv_path)!r} line {_line(position)} (line 1 is the header)"


def normalise_split(value: object, csv_path: Path, position: int) -> str | None:
    """A split cell as ``train``/``test`` (case and surrounding spaces ignored), None when empty."""
    if not isinstance(value, str) or not value.strip():
        return None
    split = value.strip().lower()
    if split not in SPLITS:
        raise ValueError(f"{_where(csv_path, position)}: split {value!r} is not one of {list(SPLITS)} "
                         "(case and surrounding spaces are ignored; leave the cell empty for a split from "
                         "a hash of the path)")
    return split


def _read_table(csv_path: Path) -> pd.DataFrame:
    """The CSV's cells as strings (empty: NaN), blank lines dropped; the index is the row position
    counting blank lines, so that `_line` gives the line a spreadsheet shows."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""], skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"labels CSV {str(csv_path)!r} is empty: it needs a header line (path, label and "
                         "optionally split) and one line per video") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"labels CSV {str(csv_path)!r} cannot be read: {exc}") from None
    table = table[~table.isna().all(axis=1)]
    if table.empty:
        raise ValueError(f"labels CSV {str(csv_path)!r} has no rows: it needs one line per video under "
                         f"its header {list(table.columns)}")
    return table


def read_labels(csv_path: Path, root: Path | None = None) -> pd.DataFrame:
    """A labels CSV as a frame with columns path (normalised, see `clean_path`; relative to `root` when
    an absolute path lies under it), label, split (``train``/``test`` or None) and line (1: header)."""
    table = _read_table(csv_path)
    path_col = next((c for c in LABEL_PATH_COLUMNS if c in table.columns), None)
    if path_col is None or "label" not in table.columns:
        raise ValueError(
            f"labels CSV {str(csv_path)!r} needs a path column (one of {LABEL_PATH_COLUMNS}) and a 'label' "
            f"column; it has {list(table.columns)}"
        )
    roots = _root_spellings(root) if root is not None else ()
    paths = []
    for position, raw in table[path_col].items():
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{_where(csv_path, position)}: the {path_col!r} cell is empty")
        paths.append(_relative_to_root(clean_path(raw), roots))
    splits = table["split"] if "split" in table.columns else pd.Series(None, index=table.index, dtype=object)
    out = pd.DataFrame({
        "path": paths,
        "label": table["label"].to_numpy(),
        "split": [normalise_split(v, csv_path, pos) for pos, v in splits.items()],
        "line": [_line(pos) for pos in table.index],
    })
    duplicated = out[out["path"].duplicated(keep=False)]
    if len(duplicated):
        first = duplicated["path"].iloc[0]
        lines = duplicated.loc[duplicated["path"] == first, "line"].tolist()
        raise ValueError(f"labels CSV {str(csv_path)!r} lists {first!r} more than once (lines "
                         f"{', '.join(map(str, lines))}; line 1 is the header)")
    return out


# --- the index -------------------------------------------------------------------------------------

def _no_media_error(source: VideoSource, extensions: tuple[str, ...] | None) -> ValueError:
    what = "any file" if extensions is None else f"a file with one of the extensions {list(extensions)}"
    return ValueError(f"no media files to ingest: the video folder {str(source.root)!r} has none (searched "
                      f"recursively for {what}, hidden names skipped; check ingestion.source_dir and "
                      "ingestion.extensions)")


def build_index(
    source: VideoSource,
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    *,
    follow_symlinks: bool = False,
) -> pd.DataFrame:
    """One row per candidate video, with the columns `INDEX_COLUMNS` (see the module docstring).

    Raises FileNotFoundError when the folder is missing, ValueError when it holds no media file and no
    labels CSV lists any, or when the labels CSV is invalid."""
    root = Path(source.root).resolve()
    files = find_media(root, extensions, follow_symlinks=follow_symlinks)
    labels_csv = source.labels_csv
    if labels_csv is None and (root / "labels.csv").is_file():
        labels_csv = root / "labels.csv"
    if labels_csv is not None:
        labels = read_labels(Path(labels_csv), source.root).set_index("path")
        relpaths = sorted(set(files) | set(labels.index))
        label = [labels["label"].get(p) for p in relpaths]
        split = [labels["split"].get(p) for p in relpaths]
    else:
        relpaths = files
        one_deep = bool(files) and all(len(Path(p).parts) == 2 for p in files)
        label = [Path(p).parts[0] if one_deep else None for p in relpaths]
        split = [None] * len(relpaths)
    if not relpaths:
        raise _no_media_error(source, extensions)
    split = [s if isinstance(s, str) else hash_split(p, test_fraction, split_seed) for p, s in zip(relpaths, split)]
    detail = [outside_detail(root, p, follow_symlinks) for p in relpaths]
    path = [None if d else str(root / p) for p, d in zip(relpaths, detail)]
    return pd.DataFrame(
        {
            "video_id": [video_id(p) for p in relpaths],
            "source_path": relpaths,
            "path": pd.array(path, dtype="string"),
            "label": pd.array([lbl if isinstance(lbl, str) else None for lbl in label], dtype="string"),
            "split": split,
            "reject_reason": pd.array([OUTSIDE_SOURCE if d else None for d in detail], dtype="string"),
            "reject_detail": pd.array(detail, dtype="string"),
        },
        columns=list(INDEX_COLUMNS),
    )
