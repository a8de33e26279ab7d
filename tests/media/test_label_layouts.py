"""Labelled dataset layouts of a video folder (`media.folder`): UCF101 split lists, a Kinetics-style CSV,
class folders, none, and `auto` choosing among them. The index never opens a file, so the media files
here are empty stand-ins, except for the one ingestion run through the pipeline's node."""

import logging
from pathlib import Path

import pandas as pd
import pytest

from pemt_pipeline.media.folder import LabelLayout, VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.pipelines.ingestion.nodes import index_videos, ingest_videos
from tests.conftest import env_params
from tests.media.makers import make_video

UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "Basketball")


def touch(root: Path, *relpaths: str) -> None:
    for relpath in relpaths:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).touch()


def ucf101_archive(tmp_path: Path) -> tuple[Path, Path]:
    """The UCF101 archives as extracted: UCF-101/<Class>/v_<Class>_gGG_cCC.avi and, beside it,
    ucfTrainTestlist/ with classInd.txt and split 1 and 2 lists (groups 1-2 test, 3-4 train in split
    1; the other way round in split 2), plus a video in no list."""
    videos, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(UCF_CLASSES, 1)))
    split_lists = {1: ([], []), 2: ([], [])}
    for i, cls in enumerate(UCF_CLASSES, 1):
        for group in range(1, 5):
            name = f"{cls}/v_{cls}_g{group:02d}_c01.avi"
            touch(videos, name)
            for split, test_groups in ((1, (1, 2)), (2, (3, 4))):
                train, test = split_lists[split]
                (test if group in test_groups else train).append((name, i))
    for split, (train, test) in split_lists.items():
        (lists / f"trainlist{split:02d}.txt").write_text("".join(f"{n} {i}\r\n" for n, i in train))  # CRLF, as shipped
        (lists / f"testlist{split:02d}.txt").write_text("".join(f"{n}\r\n" for n, _ in test) + "\n")
    touch(videos, "Extra/v_Extra_g01_c01.avi")
    return videos, lists


def labels_by_path(index: pd.DataFrame) -> dict[str, tuple]:
    return {r.source_path: (r.label, r.split) for r in index.itertuples()}


def test_ucf101_lists_give_labels_and_splits(tmp_path, caplog):
    videos, lists = ucf101_archive(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pemt_pipeline.media.folder"):
        index = build_index(VideoSource(videos), layout=LabelLayout("ucf101"))  # lists found beside the folder
    assert len(index) == 12 and index["video_id"].is_unique
    assert "Extra/v_Extra_g01_c01.avi" not in set(index["source_path"])  # in neither list: not ingested
    assert "1 file(s)" in caplog.text and "Extra/v_Extra_g01_c01.avi" in caplog.text
    got = labels_by_path(index)
    assert got["Archery/v_Archery_g01_c01.avi"] == ("Archery", "test")
    assert got["Archery/v_Archery_g03_c01.avi"] == ("Archery", "train")
    assert index["reject_reason"].isna().all()
    split2 = labels_by_path(build_index(VideoSource(videos), layout=LabelLayout("ucf101", ucf101_split=2)))
    assert split2["Archery/v_Archery_g01_c01.avi"] == ("Archery", "train")
    # auto finds the lists too; the archive's parent folder works (paths matched by their last two parts)
    assert labels_by_path(build_index(VideoSource(videos))) == got
    parent = build_index(VideoSource(tmp_path), layout=LabelLayout(split_lists_dir=str(lists)))
    assert {r.source_path: (r.label, r.split) for r in parent.itertuples()} == {
        f"UCF-101/{p}": v for p, v in got.items()}


def test_ucf101_missing_listed_file_is_a_reject_row(tmp_path):
    videos, _ = ucf101_archive(tmp_path)
    (videos / "Basketball/v_Basketball_g04_c01.avi").unlink()
    index = build_index(VideoSource(videos), layout=LabelLayout("ucf101")).set_index("source_path")
    row = index.loc["Basketball/v_Basketball_g04_c01.avi"]
    assert row["label"] == "Basketball" and not Path(row["path"]).exists()  # ingestion: missing_file


@pytest.mark.parametrize("lists, message", [
    ({"trainlist01.txt": "Archery/v_Archery_g03_c01.avi 2 \nArchery/v_Archery_g04_c01.avi 1\n"},
     r"trainlist01.txt' line 2: class index 1 is 'ApplyEyeMakeup' in .*classInd.txt', but the file's folder is "
     r"'Archery'"),
    ({"trainlist01.txt": "Archery/v_Archery_g03_c01.avi 2\n\nArchery/v_Archery_g04_c01.avi two\n"},
     r"trainlist01.txt' line 3: the class index 'two' is not a whole number"),
    ({"trainlist01.txt": "Archery/v_Archery_g03_c01.avi 9\n"}, r"line 1: class index 9 is not in .*\(1\.\.3\)"),
    ({"trainlist01.txt": "v_Archery_g03_c01.avi 2\n"},
     r"line 1: 'v_Archery_g03_c01.avi' is not a path '<class>/<file>'"),
    ({"trainlist01.txt": "../Archery/a.avi 2\n"}, r"line 1: '../Archery/a.avi' is not a path '<class>/<file>' inside"),
    ({"trainlist01.txt": "Archery/a.avi 2 extra\n"}, r"line 1: expected '<class>/<file> \[class index\]'"),
    ({"trainlist01.txt": "Archery/v_Archery_g03_c01.avi 2\n",
      "testlist01.txt": "Archery/v_Archery_g01_c01.avi\nArchery/v_Archery_g03_c01.avi\n"},
     r"testlist01.txt' line 2: 'Archery/v_Archery_g03_c01.avi' is listed twice \(first at trainlist01.txt line 1\)"),
    ({"classInd.txt": "1 ApplyEyeMakeup\nArchery 2\n"}, r"classInd.txt' line 2: expected '<class index> <class name>'"),
    ({"classInd.txt": "1 ApplyEyeMakeup\n2 ApplyEyeMakeup\n"}, r"classInd.txt' line 2: class 2 'ApplyEyeMakeup' is "
     r"listed twice"),
    ({"testlist01.txt": "\n \n"}, r"testlist01.txt' is empty"),
])
def test_malformed_ucf101_lists_name_the_file_and_line(tmp_path, lists, message):
    videos, folder = ucf101_archive(tmp_path)
    for name, text in lists.items():
        (folder / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        build_index(VideoSource(videos), layout=LabelLayout("ucf101"))


def test_ucf101_lists_not_found_name_where_they_were_looked_for(tmp_path):
    touch(tmp_path / "videos", "A/v_A_g01_c01.avi")
    with pytest.raises(FileNotFoundError, match=r"trainlist03.txt is in none of .*ucfTrainTestlist"):
        build_index(VideoSource(tmp_path / "videos"), layout=LabelLayout("ucf101", ucf101_split=3))
    videos, lists = ucf101_archive(tmp_path / "archive")
    (lists / "testlist01.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"testlist01.txt' does not exist"):
        build_index(VideoSource(videos), layout=LabelLayout("ucf101"))


def kinetics_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A Kinetics download: train/<label>/<id>_<start>_<end>.mp4 (the downloaders' naming), a
    validation video named by its id alone, a row whose video is missing, a video no row names."""
    root = tmp_path / "kinetics"
    touch(root, "train/abseiling/--07WQ2iBlw_000001_000011.mp4", "train/air drumming/-_abc_DEF12_000030_000040.mkv",
          "val/abseiling/0wR5jVB-WPk.webm", "stray.mp4")
    csv = tmp_path / "kinetics400_train_val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "abseiling,--07WQ2iBlw,1,11,train\n"
                   "air drumming,-_abc_DEF12,30,40,train\n"
                   "abseiling,0wR5jVB-WPk,417,427,validate\n"
                   "\n"
                   "air drumming,gone1234567,0,10,val\n")
    return root, csv


def test_kinetics_csv_finds_files_by_id(tmp_path, caplog):
    root, csv = kinetics_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pemt_pipeline.media.folder"):
        index = build_index(VideoSource(root, csv), layout=LabelLayout("kinetics"))
    got = labels_by_path(index)
    assert got["train/abseiling/--07WQ2iBlw_000001_000011.mp4"] == ("abseiling", "train")
    assert got["train/air drumming/-_abc_DEF12_000030_000040.mkv"] == ("air drumming", "train")
    assert got["val/abseiling/0wR5jVB-WPk.webm"] == ("abseiling", "test")  # validate -> test
    assert pd.isna(got["stray.mp4"][0])  # no row names it: kept without a label
    missing = index.set_index("source_path").loc["gone1234567_000000_000010"]  # rejected as missing_file
    assert missing["label"] == "air drumming" and not Path(missing["path"]).exists()
    assert "1 of 4 row(s) have no file" in caplog.text and "gone1234567_000000_000010 (line 6)" in caplog.text
    assert index["video_id"].is_unique
    # auto: a labels CSV with youtube_id and no path column is read as Kinetics
    assert labels_by_path(build_index(VideoSource(root, csv))) == got


@pytest.mark.parametrize("rows, message", [
    ("abseiling,,1,11,train\n", r"line 2 \(line 1 is the header\): the 'youtube_id' cell is empty"),
    ("abseiling,--07WQ2iBlw,1,11,train\nabseiling,x,1.5,11,train\n",
     r"line 3 \(line 1 is the header\): time_start '1.5' is not a whole"),
    ("abseiling,--07WQ2iBlw,1,11,holdout\n", r"line 2 \(line 1 is the header\): split 'holdout' is not one of"),
    ("abseiling,--07WQ2iBlw,1,11,train\nabseiling,--07WQ2iBlw,1,11,val\n", r"lists '--07WQ2iBlw_000001_000011' more "
     r"than once \(lines 2, 3"),
    ("abseiling,0wR5jVB-WPk,1,11,train\nabseiling,0wR5jVB-WPk,20,30,val\n", r"lines 2 and 3 both name the file "
     r"'val/abseiling/0wR5jVB-WPk.webm'"),
])
def test_malformed_kinetics_csv_names_the_line(tmp_path, rows, message):
    root, csv = kinetics_folder(tmp_path)
    csv.write_text("label,youtube_id,time_start,time_end,split\n" + rows)
    with pytest.raises(ValueError, match=message):
        build_index(VideoSource(root, csv), layout=LabelLayout("kinetics"))
    csv.write_text("youtube_id,split\nx,train\n")
    with pytest.raises(ValueError, match=r"needs the columns 'youtube_id' and 'label'"):
        build_index(VideoSource(root, csv), layout=LabelLayout("kinetics"))


def test_class_folders_none_and_labels_csv_layouts(tmp_path):
    root = tmp_path / "videos"
    touch(root, "dog/a.mp4", "cat/b.mp4")
    assert labels_by_path(build_index(VideoSource(root)))["dog/a.mp4"][0] == "dog"  # auto: class folders
    (root / "labels.csv").write_text("path,label,split\ndog/a.mp4,puppy,test\n")
    auto = labels_by_path(build_index(VideoSource(root)))
    assert auto["dog/a.mp4"] == ("puppy", "test") and pd.isna(auto["cat/b.mp4"][0])  # auto: the labels CSV
    assert labels_by_path(build_index(VideoSource(root), layout=LabelLayout("labels_csv"))) == auto
    assert labels_by_path(build_index(VideoSource(root), layout=LabelLayout("class_folders")))["dog/a.mp4"][0] == "dog"
    unlabelled = build_index(VideoSource(root), layout=LabelLayout("none"))
    assert unlabelled["label"].isna().all() and set(unlabelled["split"]) <= {"train", "test"}
    touch(root, "loose.mp4")
    (root / "labels.csv").unlink()
    folders = labels_by_path(build_index(VideoSource(root), layout=LabelLayout("class_folders")))
    assert folders["dog/a.mp4"][0] == "dog" and pd.isna(folders["loose.mp4"][0])  # not one folder deep
    assert build_index(VideoSource(root))["label"].isna().all()  # auto: not every file one deep -> none
    with pytest.raises(ValueError, match="ingestion.layout is kinetics but there is no labels CSV"):
        build_index(VideoSource(root), layout=LabelLayout("kinetics"))


def test_layout_parameters_are_checked():
    with pytest.raises(ValueError, match=r"ingestion.layout must be one of .*got 'ucf'"):
        IngestConfig.from_dict({"layout": "ucf"})
    with pytest.raises(ValueError, match=r"ingestion.ucf101_split must be >= 1"):
        IngestConfig.from_dict({"ucf101_split": 0})
    with pytest.raises(ValueError, match=r"parameter ingestion.ucf101_split must be an integer"):
        IngestConfig.from_dict({"ucf101_split": "1"})
    assert IngestConfig.from_dict({"layout": "none"}).params_hash == IngestConfig.from_dict({}).params_hash


def test_ingestion_nodes_follow_the_layout(tmp_path):
    """Two real videos in a UCF101 layout, through the ingestion pipeline's nodes (test sizes)."""
    root, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    for cls in ("Archery", "Basketball"):
        (root / cls).mkdir(parents=True)
        make_video(root / cls / f"v_{cls}_g01_c01.avi", codec="mpeg4", seconds=2.5)
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Basketball/v_Basketball_g01_c01.avi\n")
    params = {**env_params("ingestion"), "shard_dir": str(tmp_path / "shards"), "workers": 1, "layout": "ucf101"}
    index = index_videos(VideoSource(root), params)
    _, manifest, rejects, summary = ingest_videos(index, params)
    assert rejects.empty, rejects.to_dict("records")
    assert dict(zip(manifest["label"], manifest["split"])) == {"Archery": "train", "Basketball": "test"}
    unlabelled = index_videos(VideoSource(root), {**params, "layout": "none"})
    assert unlabelled["label"].isna().all()
