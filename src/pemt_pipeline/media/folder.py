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

Labels: the layout (`LabelLayout.layout`, ``ingestion.layout``) says where they come from:
- ``labels_csv``: a labels CSV (`labels_csv`, or ``labels.csv`` at the top of the folder): columns ``path``
  (relative to the folder or absolute; ``\\`` is read as ``/``, leading ``./`` dropped), ``label`` and
  optionally ``split`` (``train`` or ``test``, case and surrounding spaces ignored); rows whose file is
  missing are reported as rejected (``missing_file``); files not in the CSV are kept without a label. An
  empty CSV, an empty path cell or another split value is an error naming the CSV and the line (the
  header is line 1, as in a spreadsheet); blank lines are ignored;
- ``kinetics``: a Kinetics-style CSV (the same `labels_csv`): columns ``youtube_id``, ``label`` and
  optionally ``time_start``, ``time_end`` (whole seconds) and ``split`` (``train``; ``val``, ``valid``,
  ``validate``, ``validation`` and ``test`` are all read as ``test``: Kinetics' validation set is the one
  with published labels; empty: from the hash). A row's file is found anywhere in the folder (e.g. under
  ``<split>/<label>/``) by its name: ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` (the usual
  downloaders' naming) first, else ``<youtube_id>.<ext>``. Rows without a file are reported as rejected
  (``missing_file``; source_path: the name looked for, without extension) and counted in a log warning;
  files no row names are kept without a label. Two files with the name a row looks for, or two rows
  naming one file, are an error naming the lines;
- ``ucf101``: the UCF101 split lists ``trainlist0N.txt`` (lines ``Class/v_Class_g08_c01.avi 1``, the class
  index 1-based) and ``testlist0N.txt`` (``Class/v_Class_g01_c01.avi``), N = `ucf101_split`, and, if
  present, ``classInd.txt`` (``1 ApplyEyeMakeup``), against which the indices are checked. The lists are
  read from `split_lists_dir`, else the first of <folder>, <folder>/ucfTrainTestlist and
  <folder>/../ucfTrainTestlist that holds the train list. The label is the class folder (the path's
  parent), the split the list. A listed path is matched as written, else by its last two parts (so the
  folder may be the archive's parent of ``UCF-101/``); listed files that are missing are rejected
  (``missing_file``). Files in neither list are not ingested (another split's or extra files; a log
  warning counts them). A malformed line, an unknown class index, or a path listed twice is an error
  naming the list and the line (line 1 is the first line);
- ``class_folders``: one sub-folder per class: files exactly one folder deep take it as their label,
  others get none;
- ``none``: no labels (a labels.csv in the folder is not read);
- ``auto`` (default): ``kinetics`` when the labels CSV (given, or labels.csv) has a ``youtube_id`` column
  and no path column, else ``labels_csv`` when there is a labels CSV; else ``ucf101`` when its train list
  is found; else ``class_folders`` when every file is exactly one folder deep; else ``none``.
A video without a split (or with an empty split cell) gets one from a hash of its path: ``test`` for a
`test_fraction` share of videos, ``train`` for the rest, stable across runs and machines.

Index columns (`INDEX_COLUMNS`): video_id; source_path (POSIX path relative to the folder, as found or
as listed); path (absolute; NA on an ``outside_source`` row); label; split; reject_reason (NA, or
``outside_source``: ingestion must reject the row with this reason and `reject_detail`, without opening
anything); reject_detail (NA, or why, for the rejects table). path, label and the reject columns have
the pandas ``string`` dtype (missing: ``pd.NA``).

A remote folder (an fsspec URL, `pemt_pipeline.storage`) is indexed by listing it (one request per
page, nothing downloaded); ``path`` is then each file's URL. Object stores have no symbolic links,
so only the lexical ``outside_source`` rule applies; a labels CSV (given, or ``labels.csv`` at the top)
is read through fsspec; the ``ucf101`` layout needs its lists in a local `split_lists_dir`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from pemt_pipeline import storage
from pemt_pipeline.configs import NON_EMPTY, at_least, one_of, optional, require

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
LAYOUTS = ("auto", "labels_csv", "class_folders", "ucf101", "kinetics", "none")
UCF101_LIST_FOLDER = "ucfTrainTestlist"  # where the UCF101 archive puts its split lists
# Kinetics split values -> the pipelines' splits (the validation set is the labelled held-out set)
KINETICS_SPLITS = {"train": "train", "val": "test", "valid": "test", "validate": "test", "validation": "test",
                   "test": "test"}
_DOWNLOADER_NAME = re.compile(r"^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")  # <id>_<start:06d>_<end:06d>


@dataclass(frozen=True)
class VideoSource:
    """A folder of media files and, optionally, its labels CSV."""

    root: Path
    labels_csv: Path | None = None


@dataclass(frozen=True)
class LabelLayout:
    """Where a folder's labels come from (the module docstring describes each layout).

    layout: one of `LAYOUTS`; ucf101_split: N of the UCF101 lists trainlist0N.txt / testlist0N.txt;
    split_lists_dir: the folder of those lists (None: looked for, see the module docstring)."""

    layout: str = "auto"
    ucf101_split: int = 1
    split_lists_dir: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Choices and ranges; ValueError naming `ingestion.<key>`."""
        require("ingestion", self, layout=one_of(LAYOUTS), ucf101_split=at_least(1),
                split_lists_dir=optional(NON_EMPTY))


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


def find_remote_media(root: str, extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS) -> list[str]:
    """`find_media` for a remote folder (a URL): relative POSIX paths of its media files, sorted,
    from one recursive listing; hidden names (any part starting with ``.``) skipped."""
    wanted = None if extensions is None else {e.lower().lstrip(".") for e in extensions}
    try:
        names = storage.listing(root, recursive=True)
    except OSError as exc:
        raise FileNotFoundError(f"video folder {storage.redact(root)!r} cannot be listed ({type(exc).__name__})") \
            from None
    return [rel for rel in names if not any(part.startswith(".") for part in rel.split("/"))
            and (wanted is None or PurePosixPath(rel).suffix.lower().lstrip(".") in wanted)]


def _is_file(path: str | os.PathLike) -> bool:
    if not storage.is_url(path):
        return Path(path).is_file()
    try:
        return storage.info(path).get("type") == "file"
    except OSError:
        return False


# --- labels CSV ------------------------------------------------------------------------------------

def _refuse_duplicates(table: pd.DataFrame, column: str, what: str) -> None:
    """A ValueError naming `what` and the lines where the first repeated value of `column` stands."""
    duplicated = table[table[column].duplicated(keep=False)]
    if len(duplicated):
        first = duplicated[column].iloc[0]
        lines = duplicated.loc[duplicated[column] == first, "line"].tolist()
        raise ValueError(f"{what} lists {first!r} more than once (lines {', '.join(map(str, lines))}; "
                         "line 1 is the header)")


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
    _refuse_duplicates(out, "path", f"labels CSV {str(csv_path)!r}")
    return out


# --- Kinetics CSV ----------------------------------------------------------------------------------

def _whole_seconds(value: object, csv_path: Path, position: int, column: str) -> int | None:
    """A time cell as whole seconds (``14`` or ``14.0``), None when empty."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number.is_integer() or number < 0:
        raise ValueError(f"{_where(csv_path, position)}: {column} {value!r} is not a whole number of seconds >= 0")
    return int(number)


def read_kinetics(csv_path: Path) -> pd.DataFrame:
    """A Kinetics-style CSV as a frame with columns youtube_id, time_start, time_end (int or None),
    label, split (``train``/``test`` or None, see `KINETICS_SPLITS`), name (the file stem looked for
    first: ``<id>_<start:06d>_<end:06d>``, or the id without times) and line (1: header)."""
    table = _read_table(csv_path)
    if "youtube_id" not in table.columns or "label" not in table.columns:
        raise ValueError(f"Kinetics CSV {str(csv_path)!r} needs the columns 'youtube_id' and 'label' (and "
                         f"optionally time_start, time_end, split); it has {list(table.columns)}")
    rows = []
    for position, row in table.iterrows():
        youtube_id = row["youtube_id"].strip() if isinstance(row["youtube_id"], str) else ""
        if not youtube_id:
            raise ValueError(f"{_where(csv_path, position)}: the 'youtube_id' cell is empty")
        start, end = (_whole_seconds(row.get(c), csv_path, position, c) for c in ("time_start", "time_end"))
        raw_split = row.get("split")
        split = None
        if isinstance(raw_split, str) and raw_split.strip():
            split = KINETICS_SPLITS.get(raw_split.strip().lower())
            if split is None:
                raise ValueError(f"{_where(csv_path, position)}: split {raw_split!r} is not one of "
                                 f"{list(KINETICS_SPLITS)} (case ignored; val* and test are read as test)")
        name = youtube_id if start is None or end is None else f"{youtube_id}_{start:06d}_{end:06d}"
        label = row["label"].strip() if isinstance(row["label"], str) and row["label"].strip() else None
        rows.append((youtube_id, start, end, label, split, name, _line(position)))
    out = pd.DataFrame(rows, columns=["youtube_id", "time_start", "time_end", "label", "split", "name", "line"])
    _refuse_duplicates(out, "name", f"Kinetics CSV {str(csv_path)!r}")
    return out


def kinetics_labels(csv_path: Path, files: list[str]) -> pd.DataFrame:
    """The rows of a Kinetics CSV matched to `files` (relative paths): columns path, label, split;
    a row without a file gets its name (without extension) as path, so ingestion rejects it as
    ``missing_file``; their count and the first few are logged."""
    table = read_kinetics(csv_path)
    by_stem: dict[str, list[str]] = {}
    for relpath in files:
        by_stem.setdefault(PurePosixPath(relpath).stem, []).append(relpath)
    where = f"Kinetics CSV {str(csv_path)!r}"
    paths, claimed, missing = [], {}, []
    for row in table.itertuples():
        found = by_stem.get(row.name) or by_stem.get(row.youtube_id) or []
        if len(found) > 1:
            raise ValueError(f"{where} line {row.line}: {row.youtube_id!r} matches {len(found)} files "
                             f"({', '.join(found[:3])}): keep one")
        if not found:
            missing.append(f"{row.name} (line {row.line})")
            paths.append(row.name)
            continue
        if found[0] in claimed:
            raise ValueError(f"{where} lines {claimed[found[0]]} and {row.line} both name the file {found[0]!r}")
        claimed[found[0]] = row.line
        paths.append(found[0])
    if missing:
        logger.warning("%s: %d of %d row(s) have no file in the video folder (rejected as missing_file), "
                       "first: %s", where, len(missing), len(table), ", ".join(missing[:5]))
    return pd.DataFrame({"path": paths, "label": table["label"].to_numpy(), "split": table["split"].to_numpy()})


# --- UCF101 split lists ----------------------------------------------------------------------------

def _list_lines(path: Path) -> list[tuple[int, list[str]]]:
    """The whitespace-separated fields of each non-blank line of a text list, with its line number."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"UCF101 list {str(path)!r} cannot be read: {exc}") from None
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"UCF101 list {str(path)!r} is empty")
    return lines


def read_class_index(path: Path) -> dict[int, str]:
    """UCF101's classInd.txt (lines ``1 ApplyEyeMakeup``) as {index: class name}."""
    classes: dict[int, str] = {}
    for number, fields in _list_lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"UCF101 list {str(path)!r} line {number}: expected '<class index> <class name>', "
                             f"got {' '.join(fields)!r}")
        index, name = int(fields[0]), fields[1]
        if index in classes or name in classes.values():
            raise ValueError(f"UCF101 list {str(path)!r} line {number}: class {index} {name!r} is listed twice")
        classes[index] = name
    return classes


def find_split_lists(root: Path, layout: LabelLayout) -> Path | None:
    """The folder holding ``trainlist0N.txt`` (N = layout.ucf101_split), or None (see the module docstring)."""
    train = f"trainlist{layout.ucf101_split:02d}.txt"
    if layout.split_lists_dir is not None:
        return Path(layout.split_lists_dir) if (Path(layout.split_lists_dir) / train).is_file() else None
    for folder in (root, root / UCF101_LIST_FOLDER, root.parent / UCF101_LIST_FOLDER):
        if (folder / train).is_file():
            return folder
    return None


def read_ucf101_lists(folder: Path, split: int = 1) -> pd.DataFrame:
    """The UCF101 lists trainlist0N.txt and testlist0N.txt of `folder` (N = `split`) as a frame with
    columns path (as listed, normalised), label (the class folder), split, list (its file) and line.
    Class indices are checked against classInd.txt when the folder has one."""
    class_file = folder / "classInd.txt"
    classes = read_class_index(class_file) if class_file.is_file() else None
    rows, seen = [], {}
    for which in ("train", "test"):
        path = folder / f"{which}list{split:02d}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"UCF101 list {str(path)!r} does not exist (ingestion.ucf101_split is {split})")
        for number, fields in _list_lines(path):
            where = f"UCF101 list {str(path)!r} line {number}"
            if len(fields) > 2:
                raise ValueError(f"{where}: expected '<class>/<file> [class index]', got {' '.join(fields)!r}")
            relpath = clean_path(fields[0])
            parts = PurePosixPath(relpath).parts
            if len(parts) < 2 or _escapes(relpath):
                raise ValueError(f"{where}: {fields[0]!r} is not a path '<class>/<file>' inside the folder")
            label = parts[-2]
            if len(fields) == 2:
                if not fields[1].isdigit():
                    raise ValueError(f"{where}: the class index {fields[1]!r} is not a whole number")
                index = int(fields[1])
                if classes is not None and index not in classes:
                    raise ValueError(f"{where}: class index {index} is not in {str(class_file)!r} "
                                     f"({min(classes)}..{max(classes)})")
                if classes is not None and classes[index].casefold() != label.casefold():
                    raise ValueError(f"{where}: class index {index} is {classes[index]!r} in "
                                     f"{str(class_file)!r}, but the file's folder is {label!r}")
            if relpath in seen:
                raise ValueError(f"{where}: {relpath!r} is listed twice (first at {seen[relpath]})")
            seen[relpath] = f"{path.name} line {number}"
            rows.append((relpath, label, which, path.name, number))
    return pd.DataFrame(rows, columns=["path", "label", "split", "list", "line"])


def ucf101_labels(folder: Path, split: int, files: list[str]) -> pd.DataFrame:
    """The UCF101 lists matched to `files` (relative paths): columns path, label, split. A listed
    path is matched as written, else by its last two parts; unmatched listed paths stay as written
    (rejected as ``missing_file``). Files in neither list are left out (logged)."""
    table = read_ucf101_lists(folder, split)
    present = set(files)
    by_tail: dict[str, list[str]] = {}
    for relpath in files:
        by_tail.setdefault("/".join(PurePosixPath(relpath).parts[-2:]), []).append(relpath)
    paths = []
    for row in table.itertuples():
        found = [row.path] if row.path in present else by_tail.get("/".join(PurePosixPath(row.path).parts[-2:]), [])
        if len(found) > 1:
            raise ValueError(f"UCF101 list {str(folder / row.list)!r} line {row.line}: {row.path!r} matches "
                             f"{len(found)} files ({', '.join(found[:3])}): keep one")
        paths.append(found[0] if found else row.path)
    unlisted = sorted(present - set(paths))
    if unlisted:
        logger.warning("%d file(s) of the video folder are in neither UCF101 list of split %d and are not "
                       "ingested, first: %s", len(unlisted), split, ", ".join(unlisted[:5]))
    return pd.DataFrame({"path": paths, "label": table["label"].to_numpy(), "split": table["split"].to_numpy()})


# --- layouts ---------------------------------------------------------------------------------------

def _csv_columns(csv_path: Path) -> list[str]:
    """The header of a CSV (empty when it cannot be read: its reader reports why)."""
    try:
        return list(pd.read_csv(csv_path, nrows=0).columns)
    except (OSError, ValueError, UnicodeDecodeError):
        return []


def resolve_layout(source: VideoSource, layout: LabelLayout, files: list[str]) -> tuple[str, Path | None]:
    """The layout that applies (``auto`` resolved, see the module docstring) and the labels CSV or
    split list folder it reads (None for class_folders and none). ValueError when an explicit
    layout lacks its file."""
    remote = storage.is_url(source.root)
    root = str(source.root).rstrip("/") if remote else Path(source.root)
    csv_path = source.labels_csv
    if csv_path is None and _is_file(storage.join(root, "labels.csv")):
        csv_path = storage.join(root, "labels.csv")
    name = layout.layout
    if name == "auto":
        if csv_path is not None:
            columns = _csv_columns(csv_path)
            kinetics = "youtube_id" in columns and not set(LABEL_PATH_COLUMNS) & set(columns)
            return ("kinetics" if kinetics else "labels_csv"), csv_path
        lists = _split_lists(root, layout)
        if lists is not None:
            return "ucf101", lists
        one_deep = bool(files) and all(len(Path(p).parts) == 2 for p in files)
        return ("class_folders" if one_deep else "none"), None
    if name in ("labels_csv", "kinetics"):
        if csv_path is None:
            raise ValueError(f"ingestion.layout is {name} but there is no labels CSV: set ingestion.labels_csv "
                             f"or put labels.csv in the video folder {str(root)!r}")
        return name, csv_path
    if name == "ucf101":
        lists = _split_lists(root, layout)
        if lists is None:
            if remote and layout.split_lists_dir is None:
                raise ValueError(f"ingestion.layout is ucf101 and the video folder {storage.redact(root)!r} is remote: "
                                 "set ingestion.split_lists_dir to a local folder of the split lists")
            looked = ([layout.split_lists_dir] if layout.split_lists_dir is not None else
                      [str(root), str(root / UCF101_LIST_FOLDER), str(root.parent / UCF101_LIST_FOLDER)])
            raise FileNotFoundError(f"ingestion.layout is ucf101 but trainlist{layout.ucf101_split:02d}.txt is "
                                    f"in none of {looked} (set ingestion.split_lists_dir)")
        return name, lists
    return name, None


def _split_lists(root: Path | str, layout: LabelLayout) -> Path | None:
    """`find_split_lists`; for a remote folder only `split_lists_dir` (local) is looked at."""
    if not isinstance(root, str):
        return find_split_lists(root.resolve(), layout)
    return find_split_lists(Path("."), layout) if layout.split_lists_dir is not None else None


def layout_labels(source: VideoSource, layout: LabelLayout, files: list[str]) -> tuple[str, list[str], list, list]:
    """(the layout applied, relative paths of the index, their labels, their splits; None: none)."""
    name, where = resolve_layout(source, layout, files)
    if name == "labels_csv":
        labels = read_labels(where, None if storage.is_url(source.root) else source.root).set_index("path")
    elif name == "kinetics":
        labels = kinetics_labels(where, files).set_index("path")
    elif name == "ucf101":
        labels = ucf101_labels(where, layout.ucf101_split, files).set_index("path")
        files = []  # files in neither list are not ingested
    else:
        by_folder = name == "class_folders"
        label = [Path(p).parts[0] if by_folder and len(Path(p).parts) == 2 else None for p in files]
        return name, files, label, [None] * len(files)
    relpaths = sorted(set(files) | set(labels.index))
    return name, relpaths, [labels["label"].get(p) for p in relpaths], [labels["split"].get(p) for p in relpaths]


# --- the index -------------------------------------------------------------------------------------

def _no_media_error(source: VideoSource, extensions: tuple[str, ...] | None) -> ValueError:
    what = "any file" if extensions is None else f"a file with one of the extensions {list(extensions)}"
    return ValueError(f"no media files to ingest: the video folder {storage.redact(source.root)!r} has none (searched "
                      f"recursively for {what}, hidden names skipped; check ingestion.source_dir and "
                      "ingestion.extensions)")


def build_index(
    source: VideoSource,
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    *,
    follow_symlinks: bool = False,
    layout: LabelLayout = LabelLayout(),
) -> pd.DataFrame:
    """One row per candidate video, with the columns `INDEX_COLUMNS` (see the module docstring);
    labels and splits from `layout`.

    Raises FileNotFoundError when the folder (or an explicit layout's list) is missing, ValueError
    when it holds no media file and no labels list names any, or when the labels are invalid."""
    remote = storage.is_url(source.root)
    if remote:
        storage.refuse_userinfo(source.root, "ingestion.source_dir")
        root = str(source.root).rstrip("/")
        files = find_remote_media(root, extensions)
    else:
        root = Path(source.root).resolve()
        files = find_media(root, extensions, follow_symlinks=follow_symlinks)
    applied, relpaths, label, split = layout_labels(source, layout, files)
    logger.info("labels of %s: layout %s, %d of %d video(s) labelled", storage.redact(source.root), applied,
                sum(isinstance(v, str) for v in label), len(relpaths))
    if not relpaths:
        raise _no_media_error(source, extensions)
    split = [s if isinstance(s, str) else hash_split(p, test_fraction, split_seed) for p, s in zip(relpaths, split)]
    detail = [(ESCAPES_DETAIL if _escapes(p) else None) if remote else outside_detail(root, p, follow_symlinks)
              for p in relpaths]
    path = [None if d else str(storage.join(root, p)) for p, d in zip(relpaths, detail)]
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
