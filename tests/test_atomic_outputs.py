"""Crash-safe outputs (pemt_pipeline.atomic and every writer on it): a write that fails part-way
or a full disk leaves the previous file byte-identical and no temporary; a kill at any step of the
embedding store's swap leaves a complete store; outputs honour the umask; leftovers of killed runs
are removed at start. Failures are simulated by monkeypatching (no special filesystem needed)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from pemt_pipeline import atomic
from pemt_pipeline.atomic import WriteError, atomic_open, atomic_path, remove_stale_temporaries
from pemt_pipeline.datasets import (AtomicCSVDataset, AtomicJSONDataset, AtomicParquetDataset,
                                    AtomicPartitionedDataset, ClipEmbeddingsDataset, OptionalJSONDataset)
from pemt_pipeline.features.store import ClipEmbeddings, EmbeddingWriter
from pemt_pipeline.media import shards
from pemt_pipeline.media.shards import load_shard, write_shard
from pemt_pipeline.reporting import Report, save_report
from pemt_pipeline.training import checkpoint
from pemt_pipeline.training.checkpoint import load_checkpoint, save_checkpoint

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NO_SPACE = "no space left on device while writing"


def _no_space(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(folder: Path) -> list[str]:
    """Temporaries (hidden files and folders) anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def _half_write_then_fail(f, *_, **__):
    f.write(b"half a file" if "b" in getattr(f, "mode", "b") else "half a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def umask():
    """Set the process umask for a test; restores it after."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


# ----------------------------------------------------------------------------- the helper

def test_a_write_failing_part_way_leaves_the_previous_file(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_open(target) as f:
        f.write(b"good")
    with pytest.raises(ValueError, match="boom"), atomic_open(target) as f:
        f.write(b"partial new content")
        raise ValueError("boom")  # not an OSError: re-raised as it is
    assert target.read_bytes() == b"good" and _leftovers(tmp_path) == []
    with atomic_open(tmp_path / "text.txt", "w", encoding="utf-8") as f:
        f.write("é")
    assert (tmp_path / "text.txt").read_text(encoding="utf-8") == "é"


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_full_disk_names_the_output_and_keeps_the_previous_file(tmp_path, monkeypatch, step):
    target = tmp_path / "sub" / "out.bin"
    with atomic_open(target) as f:
        f.write(b"good")
    if step == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", _no_space)
    if step == "replace":
        monkeypatch.setattr(atomic.os, "replace", _no_space)
    with pytest.raises(WriteError, match=f"{NO_SPACE} {target}") as info, atomic_open(target) as f:
        f.write(b"new")
        if step == "write":
            _no_space()
    assert info.value.errno == errno.ENOSPC and info.value.output == str(target)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # it may cross processes
    monkeypatch.undo()
    assert target.read_bytes() == b"good" and _leftovers(tmp_path) == []


def test_other_errors_name_the_output_and_library_full_disk_errors_are_recognised(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    with pytest.raises(WriteError, match=f"could not write {target}: Permission denied"), atomic_path(target):
        raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(WriteError, match=f"{NO_SPACE} {target}"), atomic_path(target):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(WriteError, match=f"disk quota exceeded while writing {target}"), atomic_path(target):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    class Full:  # what statvfs says of a full disk
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(atomic.os, "statvfs", lambda _: Full)
    with pytest.raises(WriteError, match=f"{NO_SPACE} {target}"), atomic_path(target):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # torch's
    assert _leftovers(tmp_path) == [] and not target.exists()


def test_outputs_honour_the_umask(tmp_path, umask):
    for mask, file_mode, folder_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)):
        umask(mask)
        out = tmp_path / f"m{mask:o}"
        with atomic_open(out / "file.bin") as f:
            f.write(b"x")
        with atomic_path(out / "folder", folder=True) as tmp:
            (tmp / "inner.bin").write_bytes(b"x")
        write_shard(out / "v.safetensors", {"x": np.zeros(2)}, {})
        save_checkpoint(out / "last.pt", {"model": {}, "step": 0})
        AtomicParquetDataset(filepath=str(out / "table.parquet")).save(pd.DataFrame({"a": [1]}))
        AtomicJSONDataset(filepath=str(out / "summary.json")).save({"a": 1})
        save_report(Report("<html/>", "# md", {"f.png": b"png"}), out / "report")
        store = _store(out / "emb", 1.0)
        for path in (out / "file.bin", out / "folder" / "inner.bin", out / "v.safetensors", out / "last.pt",
                     out / "table.parquet", out / "summary.json", out / "report" / "report.html",
                     out / "report" / "figures" / "f.png", store.root / "visual.npy", store.root / "meta.json"):
            assert path.stat().st_mode & 0o777 == file_mode, (oct(mask), path)
        for path in (out / "folder", store.root):
            assert path.stat().st_mode & 0o777 == folder_mode, (oct(mask), path)


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    keep = ["result.json", ".gitkeep", "notes.tmp", ".hidden"]
    stale = [".result.json.ab12cd34.tmp", ".v.abc.tmp"]  # the latter: the old shard writer's names
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".emb.ab12cd34.tmp").mkdir()
    (tmp_path / ".emb.ab12cd34.tmp" / "visual.npy").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path, "other.json") == 0  # scoped to other targets: nothing
    assert remove_stale_temporaries(tmp_path, ["result.json"]) == 1
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temporaries(tmp_path / "missing") == 0


# ----------------------------------------------------------------------------- Kedro datasets

def _frame() -> pd.DataFrame:
    return pd.DataFrame({"video_id": ["a", "b"], "n": [1, 2]})


@pytest.mark.parametrize("kind", ["parquet", "csv", "json"])
def test_atomic_kedro_datasets_keep_the_previous_file_when_a_save_fails(tmp_path, monkeypatch, kind):
    target = tmp_path / "out" / f"table.{kind}"
    if kind == "parquet":
        dataset = AtomicParquetDataset(filepath=str(target), load_args={"columns": ["n"]})
        good, new, writer = _frame(), _frame().assign(n=[3, 4]), (pd.DataFrame, "to_parquet")
    elif kind == "csv":
        dataset = AtomicCSVDataset(filepath=str(target), save_args={"index": False, "sep": ";"},
                                   load_args={"sep": ";"})
        good, new, writer = _frame(), _frame().assign(n=[3, 4]), (pd.DataFrame, "to_csv")
    else:
        dataset = AtomicJSONDataset(filepath=str(target), save_args={"indent": 4})
        good, new, writer = {"a": [1, 2]}, {"a": [3]}, (json, "dump")
    dataset.save(good)
    before = target.read_bytes()
    if kind == "json":
        assert before.decode().startswith('{\n    "a"')  # save_args reach json.dump
    (target.parent / f".{target.name}.killed01.tmp").write_bytes(b"left by a killed save")
    (target.parent / ".other.json.killed01.tmp").write_bytes(b"another file's: not ours to remove")

    def fail(*args, **kwargs):  # (frame, file) / (data, file) / path_or_buf=file: some bytes, then a full disk
        _half_write_then_fail(kwargs.get("path_or_buf") or args[1])

    with monkeypatch.context() as m:
        m.setattr(*writer, fail)
        with pytest.raises(DatasetError, match=f"{NO_SPACE} {target}"):
            dataset.save(new)
    assert target.read_bytes() == before
    assert _leftovers(target.parent) == [".other.json.killed01.tmp"]
    dataset.save(new)
    loaded = dataset.load()
    if kind == "json":
        assert loaded == new
    else:
        pd.testing.assert_frame_equal(loaded, new[["n"]] if kind == "parquet" else new)


def test_remote_protocols_keep_fsspec_behaviour():
    dataset = AtomicJSONDataset(filepath="memory://pemt-test/summary.json")
    dataset.save({"a": 1})
    assert dataset.load() == {"a": 1}
    table = AtomicParquetDataset(filepath="memory://pemt-test/table.parquet")
    table.save(_frame())
    pd.testing.assert_frame_equal(table.load(), _frame())


def test_optional_json_is_atomic(tmp_path, monkeypatch):
    dataset = OptionalJSONDataset(filepath=str(tmp_path / "results.json"))
    assert dataset.load() is None
    dataset.save({"a": 1})
    monkeypatch.setattr(atomic.os, "replace", _no_space)
    with pytest.raises(DatasetError, match=NO_SPACE):
        dataset.save({"a": 2})
    monkeypatch.undo()
    assert dataset.load() == {"a": 1} and _leftovers(tmp_path) == []


def test_partitioned_overwrite_swaps_the_whole_set(tmp_path, monkeypatch):
    root = tmp_path / "pruned"
    dataset = AtomicPartitionedDataset(path=str(root), dataset="pemt_pipeline.datasets.AtomicJSONDataset",
                                       filename_suffix=".json", overwrite=True)
    dataset.save({"target_0.5": {"t": 0.5}, "target_0.3": {"t": 0.3}})
    before = {p.name: p.read_bytes() for p in root.iterdir()}

    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            _no_space()
        return json.dump(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(json, "dump", fail_second)
        with pytest.raises(DatasetError, match=f"{NO_SPACE} {root}"):
            dataset.save({"target_0.1": {"t": 0.1}, "target_0.2": {"t": 0.2}})
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before and _leftovers(tmp_path) == []

    # a kill between the swap's two renames: the previous set is put back on load
    root.rename(tmp_path / ".pruned.killed01.old")
    (tmp_path / ".pruned.killed02.tmp").mkdir()
    assert sorted(dataset.load()) == ["target_0.3", "target_0.5"]
    dataset.save({"target_0.1": {"t": 0.1}})
    assert sorted(p.name for p in root.iterdir()) == ["target_0.1.json"] and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- the writers

def test_write_shard_keeps_the_previous_shard(tmp_path, monkeypatch):
    path = tmp_path / "shards" / "v1.safetensors"
    write_shard(path, {"x": np.arange(4.0)}, {"video_id": "v1"})
    before = path.read_bytes()

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a shard")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(shards, "save_file", fail)
    with pytest.raises(WriteError, match=f"{NO_SPACE} {path}"):
        write_shard(path, {"x": np.zeros(4)}, {"video_id": "v1"})
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    np.testing.assert_array_equal(load_shard(path, ("x",))["x"], np.arange(4.0))


def test_save_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1})
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, f: _half_write_then_fail(f))
    with pytest.raises(WriteError, match=f"{NO_SPACE} {path}"):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    assert load_checkpoint(path)["step"] == 1


def test_save_report_keeps_the_previous_files_and_removes_leftovers(tmp_path, monkeypatch):
    folder = tmp_path / "reporting"
    save_report(Report("<p>old</p>", "# old", {"a.png": b"old png"}), folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    (folder / ".report.html.killed01.tmp").write_bytes(b"x")
    (folder / "figures" / ".a.png.killed01.tmp").write_bytes(b"x")
    real_replace = os.replace

    def full_on_html(src, dst):
        if str(dst).endswith(".html"):
            _no_space()
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_on_html)
    with pytest.raises(WriteError, match=f"{NO_SPACE} {folder / 'report.html'}"):
        save_report(Report("<p>new</p>", "# new", {"a.png": b"new png"}), folder)
    assert (folder / "report.html").read_bytes() == before[folder / "report.html"]
    assert _leftovers(folder) == []


# ----------------------------------------------------------------------------- the embedding store

def _store(root: Path, value: float, n: int = 3) -> ClipEmbeddings:
    writer = EmbeddingWriter(root, n, {"visual": 2, "audio": 1})
    writer.write({"visual": np.full((n, 2), value), "audio": np.full((n, 1), value)})
    return writer.close(pd.DataFrame({"clip_id": range(n), "value": value}), {"value": value})


def _assert_complete(root: Path, value: float, n: int = 3) -> None:
    store = ClipEmbeddings(root)
    assert store.meta == {"value": value}
    assert (store.clips["value"] == value).all() and len(store.clips) == n
    np.testing.assert_array_equal(store.visual, np.full((n, 2), value, np.float32))
    np.testing.assert_array_equal(store.audio, np.full((n, 1), value, np.float32))


def test_embedding_store_failure_keeps_the_previous_store(tmp_path, monkeypatch):
    root = tmp_path / "emb"
    _store(root, 1.0)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda *a, **k: _no_space())
    with pytest.raises(WriteError, match=f"{NO_SPACE} {root}"):
        _store(root, 2.0)
    monkeypatch.undo()
    _assert_complete(root, 1.0)
    assert _leftovers(tmp_path) == []


def test_embedding_store_full_disk_fails_at_creation_not_sigbus(tmp_path, monkeypatch):
    root = tmp_path / "emb"
    _store(root, 1.0)
    sizes = []
    monkeypatch.setattr(atomic.os, "posix_fallocate", lambda fd, offset, size: (sizes.append(size), _no_space()))
    with pytest.raises(WriteError, match=f"{NO_SPACE} {root}"):
        EmbeddingWriter(root, 10_000, {"visual": 512, "audio": 512})
    assert sizes and sizes[0] >= 10_000 * 512 * 4  # the whole array is reserved
    monkeypatch.undo()
    _assert_complete(root, 1.0)
    assert _leftovers(tmp_path) == []


KILL = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    import numpy as np, pandas as pd
    from pemt_pipeline import atomic
    from pemt_pipeline.features.store import EmbeddingWriter

    def killed_swap(root, step):
        renames = []
        real_rename, real_rmtree = os.rename, shutil.rmtree

        def rename(src, dst):
            if step == "before the first rename" or (step == "between the renames" and renames):
                os._exit(9)
            real_rename(src, dst)
            renames.append(dst)
            if step == "after the second rename" and len(renames) == 2:
                os._exit(9)

        def rmtree(path, ignore_errors=False):
            if step == "while deleting the old store":
                (Path(path) / "visual.npy").unlink()
                os._exit(9)
            real_rmtree(path, ignore_errors=ignore_errors)

        atomic.os.rename, atomic.shutil.rmtree = rename, rmtree
        writer = EmbeddingWriter(root, 3, {"visual": 2, "audio": 1})
        writer.write({"visual": np.full((3, 2), 2.0), "audio": np.full((3, 1), 2.0)})
        writer.close(pd.DataFrame({"clip_id": range(3), "value": 2.0}), {"value": 2.0})
        os._exit(0)

    for root, step in zip(sys.argv[1::2], sys.argv[2::2]):  # one fork per kill: imports once
        pid = os.fork()
        if pid == 0:
            killed_swap(Path(root), step)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")
KILL_STEPS = {"before the first rename": 1.0, "between the renames": 1.0, "after the second rename": 2.0,
              "while deleting the old store": 2.0}


def test_a_kill_at_any_step_of_the_store_swap_leaves_a_complete_store(tmp_path):
    """Store 1.0 is being replaced by 2.0 in a process that dies (os._exit: no cleanup runs) at each
    step of the swap: the store loads complete, the old one before the second rename, else the new."""
    roots = {step: tmp_path / f"case{i}" / "emb" for i, step in enumerate(KILL_STEPS)}
    for root in roots.values():
        _store(root, 1.0)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    args = [a for step, root in roots.items() for a in (str(root), step)]
    codes = subprocess.run([sys.executable, "-c", KILL, *args], env=env, capture_output=True, text=True, check=True)
    assert codes.stdout.split() == ["9"] * len(KILL_STEPS), codes.stderr
    for step, root in roots.items():
        assert root.is_dir() == (step != "between the renames"), step  # there, only the .old name holds it
        _assert_complete(root, KILL_STEPS[step])  # the reader puts the previous store back when it must
        assert ClipEmbeddingsDataset(path=str(root)).load().root == root
        _store(root, 3.0)  # the next writer removes what the killed one left
        _assert_complete(root, 3.0)
        assert _leftovers(root.parent) == [], step


def test_a_missing_store_is_recovered_by_the_dataset_and_the_writer(tmp_path):
    root = tmp_path / "emb"
    _store(root, 1.0)
    root.rename(tmp_path / ".emb.killed01.old")  # a kill between the renames
    assert ClipEmbeddingsDataset(path=str(root)).exists()
    _assert_complete(root, 1.0)
    root.rename(tmp_path / ".emb.killed01.old")
    _store(root, 2.0)
    _assert_complete(root, 2.0)
    assert _leftovers(tmp_path) == []
