"""A folder of videos: which files to ingest, their ids, labels and splits.

Files are found recursively by extension (`extensions`, case-insensitive; None takes every file).
Directories whose name looks like a media file (``clip.mp4/``) are listed too, so that they are
reported as rejected rather than silently skipped; their contents are searched like any folder.

Labels, in order of precedence:
1. a labels CSV (`labels_csv`, or ``labels.csv`` at the top of the folder): columns ``path`` (relative
   to the folder), ``label`` and optionally ``split``; rows whose file is missing are reported as
   rejected (``missing_file``); files not in the CSV are kept without a label;
2. the one-sub-folder-per-class layout (every file exactly one folder deep): the folder is the label;
3. otherwise no labels.
A video without a split gets one from a hash of its path: ``test`` for a `test_fraction` share of
videos, ``train`` for the rest, stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

DEFAULT_EXTENSIONS = (
    "3g2", "3gp", "aac", "aif", "aiff", "asf", "avi", "flac", "flv", "m2ts", "m4a", "m4v", "mkv", "mov",
    "mp3", "mp4", "mpeg", "mpg", "mts", "mxf", "oga", "ogg", "ogv", "opus", "ts", "vob", "wav", "webm", "wmv",
)
INDEX_COLUMNS = ("video_id", "source_path", "path", "label", "split")
LABEL_PATH_COLUMNS = ("path", "video", "file", "filename")


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


def find_media(root: Path, extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS) -> list[str]:
    """Relative POSIX paths of candidate media files (and media-named folders), sorted."""
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {str(root)!r} does not exist or is not a folder")
    wanted = None if extensions is None else {e.lower().lstrip(".") for e in extensions}
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        ext = p.suffix.lower().lstrip(".")
        if p.is_dir() and (wanted is None or ext not in wanted):
            continue  # an ordinary folder (a media-named one is listed, to be reported)
        if wanted is None or ext in wanted:
            found.append(rel.as_posix())
    return sorted(found)


def read_labels(csv_path: Path) -> pd.DataFrame:
    """A labels CSV as a frame with columns path, label, split (split may be missing: NaN)."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"labels CSV {str(csv_path)!r} cannot be read: {exc}") from None
    path_col = next((c for c in LABEL_PATH_COLUMNS if c in table.columns), None)
    if path_col is None or "label" not in table.columns:
        raise ValueError(
            f"labels CSV {str(csv_path)!r} needs a path column (one of {LABEL_PATH_COLUMNS}) and a 'label' "
            f"column; it has {list(table.columns)}"
        )
    out = pd.DataFrame({"path": table[path_col].str.replace("\\", "/", regex=False).str.lstrip("./"),
                        "label": table["label"], "split": table.get("split")})
    duplicated = out["path"][out["path"].duplicated()]
    if len(duplicated):
        raise ValueError(f"labels CSV {str(csv_path)!r} lists {duplicated.iloc[0]!r} more than once")
    return out


def build_index(
    source: VideoSource,
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> pd.DataFrame:
    """One row per candidate video: video_id, source_path (relative), path (absolute), label, split."""
    root = Path(source.root).resolve()
    files = find_media(root, extensions)
    labels_csv = source.labels_csv
    if labels_csv is None and (root / "labels.csv").is_file():
        labels_csv = root / "labels.csv"
    if labels_csv is not None:
        labels = read_labels(Path(labels_csv)).set_index("path")
        relpaths = sorted(set(files) | set(labels.index))
        label = [labels["label"].get(p) for p in relpaths]
        split = [labels["split"].get(p) for p in relpaths]
    else:
        relpaths = files
        one_deep = bool(files) and all(len(Path(p).parts) == 2 for p in files)
        label = [Path(p).parts[0] if one_deep else None for p in relpaths]
        split = [None] * len(relpaths)
    split = [s if isinstance(s, str) and s else hash_split(p, test_fraction, split_seed) for p, s in zip(relpaths, split)]
    return pd.DataFrame(
        {
            "video_id": [video_id(p) for p in relpaths],
            "source_path": relpaths,
            "path": [str(root / p) for p in relpaths],
            "label": pd.array([lbl if isinstance(lbl, str) else None for lbl in label], dtype="string"),
            "split": split,
        },
        columns=list(INDEX_COLUMNS),
    )
