"""Paths in the video index: nothing outside the folder, clean CSV paths, known splits, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from pemt_pipeline.media.folder import (
    ESCAPES_DETAIL,
    INDEX_COLUMNS,
    OUTSIDE_SOURCE,
    SYMLINK_DETAIL,
    VideoSource,
    build_index,
    clean_path,
    find_media,
)


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path):
    """tmp/videos (the folder, with a.mp4 and sub/b.mp4) and tmp/outside/x.mp4 beside it."""
    root = tmp_path / "videos"
    touch(root / "a.mp4")
    touch(root / "sub" / "b.mp4")
    touch(tmp_path / "outside" / "x.mp4")
    return root


def index_of(root: Path, csv: str | None = None, **kwargs) -> pd.DataFrame:
    labels = write_csv(root.parent / "labels.csv", csv) if csv is not None else None
    return build_index(VideoSource(root, labels), **kwargs).set_index("source_path")


def rejected(index: pd.DataFrame) -> dict[str, str]:
    rows = index[index["reject_reason"].notna()]
    return dict(zip(rows.index, rows["reject_reason"]))


# --- 1. labelled paths stay inside the folder ------------------------------------------------------

@pytest.mark.parametrize("path", ["sub/../../outside/x.mp4", "../outside/x.mp4", "..\\outside\\x.mp4",
                                  "../outside/absent.mp4", "./../outside/x.mp4"])
def test_a_labelled_path_that_climbs_out_is_an_outside_source_row(tree, path):
    index = index_of(tree, f"path,label\n{path},cat\n")
    row = index[index["reject_reason"].notna()]
    assert len(row) == 1 and row["reject_reason"].iloc[0] == OUTSIDE_SOURCE
    assert row["reject_detail"].iloc[0] == ESCAPES_DETAIL  # same text whether the file exists or not
    assert pd.isna(row["path"].iloc[0])  # nothing points outside
    assert row.index[0].startswith("../")
    assert index.loc["a.mp4", "path"] == str(tree.resolve() / "a.mp4")
    assert pd.isna(index.loc["a.mp4", "reject_reason"]) and pd.isna(index.loc["a.mp4", "reject_detail"])


def test_the_detail_does_not_tell_whether_the_outside_file_exists(tree):
    index = index_of(tree, "path,label\n../outside/x.mp4,a\n../outside/nothing.mp4,b\n"
                           f"{tree.parent / 'outside' / 'x.mp4'},c\n{tree.parent / 'outside' / 'nothing.mp4'},d\n")
    outside = index[index["reject_reason"].notna()]
    assert len(outside) == 4 and outside["reject_detail"].nunique() == 1
    assert outside["path"].isna().all()


def test_a_path_climbing_out_and_back_in_is_fine(tree):
    index = index_of(tree, "path,label\nsub/../a.mp4,cat\n../videos/sub/b.mp4,dog\n")
    assert index.loc["a.mp4", "label"] == "cat"
    assert rejected(index) == {"../videos/sub/b.mp4": OUTSIDE_SOURCE}  # lexically outside: rejected


def test_absolute_paths_inside_are_relative_and_outside_are_rejected(tree):
    inside = tree.resolve() / "sub" / "b.mp4"
    given = tree.parent / "alias"
    os.symlink(tree, given)  # the folder as given may be a link: absolute paths may use either spelling
    csv = f"path,label\n{inside},dog\n{given / 'a.mp4'},cat\n{tree.parent / 'outside' / 'x.mp4'},bird\n"
    index = index_of(given, csv)
    assert index.loc["sub/b.mp4", "label"] == "dog" and index.loc["a.mp4", "label"] == "cat"
    assert rejected(index) == {str(tree.parent / "outside" / "x.mp4"): OUTSIDE_SOURCE}


def test_index_columns_and_dtypes(tree):
    index = build_index(VideoSource(tree))
    assert tuple(index.columns) == INDEX_COLUMNS
    assert str(index["reject_reason"].dtype) == "string" and index["reject_reason"].isna().all()


def test_index_round_trips_through_parquet(tree, tmp_path):
    index = build_index(VideoSource(tree, write_csv(tmp_path / "l.csv", "path,label\n../outside/x.mp4,a\n")))
    index.to_parquet(tmp_path / "i.parquet")
    back = pd.read_parquet(tmp_path / "i.parquet").set_index("source_path")
    assert back.loc["../outside/x.mp4", "reject_reason"] == OUTSIDE_SOURCE
    assert pd.isna(back.loc["../outside/x.mp4", "path"]) and back["reject_reason"].isna().sum() == 2


# --- 2. symbolic links -----------------------------------------------------------------------------

@pytest.fixture
def linked(tree):
    """Links in the folder: to a file outside, to a folder outside, a broken one outside, one inside."""
    os.symlink(tree.parent / "outside" / "x.mp4", tree / "out_file.mp4")
    os.symlink(tree.parent / "outside", tree / "out_dir")
    os.symlink(tree.parent / "outside" / "gone.mp4", tree / "out_broken.mp4")
    os.symlink(tree / "a.mp4", tree / "in_file.mp4")
    os.symlink(tree / "sub", tree / "in_dir")
    return tree


def test_links_outside_are_rejected_by_default(linked):
    index = index_of(linked)
    assert rejected(index) == {"out_file.mp4": OUTSIDE_SOURCE, "out_dir": OUTSIDE_SOURCE,
                               "out_broken.mp4": OUTSIDE_SOURCE}
    assert set(index.loc[list(rejected(index)), "reject_detail"]) == {SYMLINK_DETAIL}  # broken or not: same
    assert index.loc[list(rejected(index)), "path"].isna().all()
    assert "out_dir/x.mp4" not in index.index  # the linked folder outside is not searched
    assert "in_dir/b.mp4" not in index.index  # the linked folder inside is searched where it is (sub/)
    assert {"a.mp4", "sub/b.mp4", "in_file.mp4"} <= set(index[index["reject_reason"].isna()].index)


def test_links_outside_are_followed_with_follow_symlinks(linked):
    index = index_of(linked, follow_symlinks=True)
    assert rejected(index) == {}
    assert index.loc["out_dir/x.mp4", "path"] == str(linked.resolve() / "out_dir" / "x.mp4")
    assert {"out_file.mp4", "out_broken.mp4", "a.mp4", "sub/b.mp4", "in_file.mp4"} <= set(index.index)
    assert "out_dir" not in index.index


def test_a_labelled_path_through_a_link_outside(linked):
    csv = "path,label\nout_dir/x.mp4,cat\n"
    assert rejected(index_of(linked, csv)) == {"out_dir/x.mp4": OUTSIDE_SOURCE, "out_dir": OUTSIDE_SOURCE,
                                               "out_file.mp4": OUTSIDE_SOURCE, "out_broken.mp4": OUTSIDE_SOURCE}
    followed = index_of(linked, csv, follow_symlinks=True)
    assert followed.loc["out_dir/x.mp4", "label"] == "cat" and rejected(followed) == {}


def test_symlink_loops_end(tree):
    outside = tree.parent / "outside"
    os.symlink(outside, outside / "again")  # outside/again -> outside
    os.symlink(tree, tree / "sub" / "up")  # a link to a parent folder (inside)
    os.symlink(tree / "loop1.mp4", tree / "loop2.mp4")
    os.symlink(tree / "loop2.mp4", tree / "loop1.mp4")
    os.symlink(outside, tree / "out_dir")
    found = find_media(tree, follow_symlinks=True)
    assert found == ["a.mp4", "loop1.mp4", "loop2.mp4", "out_dir/x.mp4", "sub/b.mp4"]
    index = index_of(tree)
    assert rejected(index) == {"out_dir": OUTSIDE_SOURCE}  # loops stay (ingestion: missing_file)


def test_hidden_entries_are_skipped(tree):
    touch(tree / ".cache" / "c.mp4")
    touch(tree / ".d.mp4")
    assert find_media(tree) == ["a.mp4", "sub/b.mp4"]


# --- 3. ./ prefixes and backslashes ----------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [("./a.mp4", "a.mp4"), ("././a.mp4", "a.mp4"), (".\\sub\\b.mp4", "sub/b.mp4"),
                                        ("../x.mp4", "../x.mp4"), (".hidden/a.mp4", ".hidden/a.mp4"),
                                        ("..x.mp4", "..x.mp4"), ("sub//b.mp4", "sub/b.mp4")])
def test_clean_path_strips_a_prefix_not_characters(raw, clean):
    assert clean_path(raw) == clean


def test_dot_prefixed_csv_paths_match_the_files(tree):
    index = index_of(tree, "path,label\n././a.mp4,cat\n.\\sub\\b.mp4,dog\n")
    assert index.loc["a.mp4", "label"] == "cat" and index.loc["sub/b.mp4", "label"] == "dog"
    assert len(index) == 2


def test_two_spellings_of_one_path_are_a_duplicate(tree):
    with pytest.raises(ValueError, match=r"'a.mp4' more than once \(lines 2, 3"):
        index_of(tree, "path,label\na.mp4,cat\n./a.mp4,dog\n")


# --- 4. split values -------------------------------------------------------------------------------

def test_split_values_are_normalised(tree):
    touch(tree / "c.mp4")
    index = index_of(tree, "path,label,split\na.mp4,cat,TRAIN\nsub/b.mp4,dog, Test \nc.mp4,cow,\n")
    assert index.loc["a.mp4", "split"] == "train" and index.loc["sub/b.mp4", "split"] == "test"
    assert index.loc["c.mp4", "split"] in ("train", "test")  # empty cell: hash split


def test_empty_split_cell_keeps_the_hash_split(tree):
    with_cell = index_of(tree, "path,label,split\na.mp4,cat,\nsub/b.mp4,dog,  \n", test_fraction=1.0)
    assert set(with_cell["split"]) == {"test"}


@pytest.mark.parametrize("bad", ["tset", "val", "training"])
def test_an_unknown_split_names_csv_line_and_value(tree, bad):
    with pytest.raises(ValueError) as err:
        index_of(tree, f"path,label,split\na.mp4,cat,train\n\nsub/b.mp4,dog,{bad}\n")
    message = str(err.value)
    assert "labels.csv" in message and "line 4 (line 1 is the header)" in message  # the blank line counts
    assert repr(bad) in message and "['train', 'test']" in message


# --- 5. empty CSVs and cells -----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "path,label\n", "path,label\n\n\n"])
def test_an_empty_csv_is_a_clear_error(tree, text):
    with pytest.raises(ValueError, match=r"labels CSV '.*labels\.csv' (is empty|has no rows)"):
        index_of(tree, text)


@pytest.mark.parametrize("cell", ["", "   "])
def test_an_empty_path_cell_names_the_line(tree, cell):
    with pytest.raises(ValueError, match=r"labels\.csv' line 3 \(line 1 is the header\): the 'path' cell is empty"):
        index_of(tree, f"path,label\na.mp4,cat\n{cell},dog\n")


def test_no_media_files_names_the_folder(tmp_path):
    folder = tmp_path / "nothing here"
    touch(folder / "notes.txt")
    with pytest.raises(ValueError, match=r"no media files to ingest: the video folder '.*nothing here' has none"):
        build_index(VideoSource(folder))
    assert build_index(VideoSource(folder), None)["source_path"].tolist() == ["notes.txt"]


def test_positional_parameters_still_work(tree):
    index = build_index(VideoSource(tree), ("mp4",), 1.0, 3)
    assert set(index["split"]) == {"test"} and len(index) == 2
