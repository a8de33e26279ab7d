"""The negative table past `partition_rows`: built in part files, written as a folder of Parquet
parts, read back (dataset, training inputs, sampler) equal to the single-file table; crash-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from kedro.io import DatasetError

from pemt_pipeline.datasets import NegativeTableDataset
from pemt_pipeline.models import ModelConfig
from pemt_pipeline.sampling import (NegativeConfig, NegativeSampler, build_negative_table, negative_table,
                                    read_table, write_frame)
from pemt_pipeline.sampling.approximate import import_faiss, make_index
from pemt_pipeline.sampling.tablefile import PART_GLOB
from pemt_pipeline.training.data import VideoBatchSampler
from pemt_pipeline.training.loop import TrainConfig, prepare_inputs
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.training.losses import LossConfig

N, D, CLIPS, K = 900, 8, 6, 8


def clustered(seed=0, shuffle=False):
    rng = np.random.default_rng(seed)
    vid = np.repeat(np.arange(N // CLIPS), CLIPS)
    emb = (rng.normal(size=(N // CLIPS, D)) * 3)[vid] + rng.normal(size=(N, D))
    if shuffle:  # clips not stored video after video: blocks reach the parts out of anchor order
        order = rng.permutation(N)
        emb, vid = emb[order], vid[order]
    return emb.astype(np.float32), vid


def cfg(**kw):
    return NegativeConfig(k=K, device="cpu", max_block_mb=1.0, pilot_size=256, partition_rows=1000, **kw)


def parts(path):
    return sorted(path.glob(PART_GLOB))


@pytest.mark.parametrize("shuffle, mode", [(False, "exact"), (True, "exact"), (False, "approximate")])
def test_partitioned_table_equals_the_single_file(tmp_path, shuffle, mode):
    emb, vid = clustered(shuffle=shuffle)
    c = cfg(mode=mode, trim="range" if mode == "approximate" else "quantile")
    whole = build_negative_table(emb, vid, c, progress=False)
    built = negative_table(emb, vid, c, progress=False)
    assert built.partitioned and built.rows == len(whole) > c.partition_rows
    assert built.anchors == whole["anchor"].nunique()
    assert built.per_anchor == (whole.groupby("anchor").size().min(), whole.groupby("anchor").size().max())
    target = built.write(tmp_path / "negatives.parquet")
    files = parts(target)
    assert len(files) == -(-N // (c.partition_rows // K))  # part i: anchors [i*w, (i+1)*w), w = 125
    ranges = [read_table(f)["anchor"] for f in files]
    assert all(len(r) <= c.partition_rows for r in ranges)
    assert all(a.max() < b.min() for a, b in zip(ranges, ranges[1:]))
    pd.testing.assert_frame_equal(read_table(target), whole)
    pd.testing.assert_frame_equal(built.frame(), whole)  # the handle now reads the written parts
    pd.testing.assert_frame_equal(NegativeTableDataset(str(target)).load(), whole)
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_small_tables_stay_one_file_and_frames_partition_on_request(tmp_path):
    emb, vid = clustered()
    table = negative_table(emb, vid, NegativeConfig(k=K, device="cpu"), progress=False)  # 50M rows default
    assert not table.partitioned
    ds = NegativeTableDataset(str(tmp_path / "negatives.parquet"))
    ds.save(table)
    assert (tmp_path / "negatives.parquet").is_file()
    frame = table.frame()
    pd.testing.assert_frame_equal(ds.load(), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "negatives.parquet"), frame)  # plain Parquet
    # a DataFrame: one file by default, parts past save_args.partition_rows; file <-> folder both ways
    big = NegativeTableDataset(str(tmp_path / "negatives.parquet"), save_args={"partition_rows": 500})
    big.save(frame)
    assert (tmp_path / "negatives.parquet").is_dir() and len(parts(tmp_path / "negatives.parquet")) > 1
    pd.testing.assert_frame_equal(big.load(), frame)
    ds.save(frame.iloc[:100])
    assert (tmp_path / "negatives.parquet").is_file()
    pd.testing.assert_frame_equal(ds.load(), frame.iloc[:100])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["negatives.parquet"]
    with pytest.raises(DatasetError, match="does not exist"):
        NegativeTableDataset(str(tmp_path / "missing.parquet")).load()


def test_parts_out_of_anchor_order_are_refused(tmp_path):
    frame = pd.DataFrame({"anchor": np.arange(40) // 4, "candidate": np.arange(40) % 7 + 20,
                          "probability": np.full(40, 0.25, np.float32), "distance": np.ones(40, np.float32)})
    path = write_frame(frame, tmp_path / "t.parquet", partition_rows=10)
    first, second = parts(path)[:2]
    tmp = first.with_name("x")
    first.rename(tmp), second.rename(first), tmp.rename(second)
    with pytest.raises(ValueError, match="not in anchor order"):
        read_table(path)


def test_a_failed_write_keeps_the_previous_table(tmp_path):
    emb, vid = clustered()
    target = tmp_path / "negatives.parquet"
    ds = NegativeTableDataset(str(target))
    old = negative_table(emb, vid, cfg(), progress=False)
    ds.save(old)  # the previous good version: a folder of parts
    before = ds.load()
    new = negative_table(emb, vid, cfg(variant="dissimilar"), progress=False)
    new.parts[3].unlink()  # the write meets a missing part half way
    with pytest.raises(DatasetError):
        ds.save(new)
    pd.testing.assert_frame_equal(ds.load(), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["negatives.parquet"]


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from pemt_pipeline.datasets import NegativeTableDataset
    from pemt_pipeline.sampling import NegativeConfig, negative_table
    emb, vid = np.load(sys.argv[2]), np.load(sys.argv[3])
    cfg = NegativeConfig(k=8, device="cpu", max_block_mb=1.0, pilot_size=256, partition_rows=1000,
                         variant="dissimilar")
    NegativeTableDataset(sys.argv[1]).save(negative_table(emb, vid, cfg, progress=False))
""")


def test_a_kill_mid_write_keeps_the_previous_table(tmp_path):
    emb, vid = clustered()
    np.save(tmp_path / "emb.npy", emb), np.save(tmp_path / "vid.npy", vid)
    out = tmp_path / "out"
    target = out / "negatives.parquet"
    ds = NegativeTableDataset(str(target))
    ds.save(build_negative_table(emb, vid, cfg(), progress=False))  # previous version: one file
    before = ds.load()
    scratch = tmp_path / "scratch"  # a killed build leaves its scratch folder there
    scratch.mkdir()
    env = {**os.environ, "PEMT_KILL_AFTER_TABLE_PARTS": "3", "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(target), str(tmp_path / "emb.npy"),
                           str(tmp_path / "vid.npy")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert target.is_file() and [p for p in out.iterdir() if p.name.endswith(".tmp")]  # killed half way
    pd.testing.assert_frame_equal(ds.load(), before)
    env.pop("PEMT_KILL_AFTER_TABLE_PARTS")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(target), str(tmp_path / "emb.npy"),
                           str(tmp_path / "vid.npy")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert target.is_dir() and sorted(p.name for p in out.iterdir()) == ["negatives.parquet"]
    pd.testing.assert_frame_equal(ds.load(), build_negative_table(emb, vid, cfg(variant="dissimilar"),
                                                                  progress=False))


def test_training_reads_the_partitioned_table_into_the_same_batches(tmp_path):
    emb, vid = clustered()
    videos = [f"v{i:03d}" for i in range(N // CLIPS)]
    manifest = pd.DataFrame({"video_id": videos, "n_clips": CLIPS,
                             "split": ["test" if i % 5 == 0 else "train" for i in range(len(videos))]})
    clips = pd.DataFrame({"video_id": np.array(videos)[vid], "clip_id": np.arange(N)})
    built = negative_table(emb, vid, cfg(), progress=False)
    NegativeTableDataset(str(tmp_path / "one.parquet")).save(built.frame())
    NegativeTableDataset(str(tmp_path / "parts.parquet")).save(built)
    assert (tmp_path / "one.parquet").is_file() and (tmp_path / "parts.parquet").is_dir()
    batches, draws = [], []
    for name in ("one.parquet", "parts.parquet"):
        table = NegativeTableDataset(str(tmp_path / name)).load()
        train = TrainConfig(batch_size=8)
        inputs = prepare_inputs(manifest, clips, table, ModelConfig(), LossConfig(), AugmentConfig(), train)
        sampler = NegativeSampler(inputs.negatives, inputs.clip_video_index, seed=train.seed)
        draws.append(sampler.draw(np.arange(len(inputs.clip_video_index)), 5))
        batch_sampler = VideoBatchSampler(len(inputs.manifest), 8, "content", sampler, batches_per_epoch=12,
                                          seed=train.seed)
        batches.append((inputs.fingerprint, list(batch_sampler)))
        pd.testing.assert_frame_equal(inputs.negatives, prepare_inputs(
            manifest, clips, built.frame(), ModelConfig(), LossConfig(), AugmentConfig(), train).negatives)
    assert batches[0] == batches[1] and np.array_equal(*draws)


def test_fp16_index_halves_the_memory_and_finds_the_same_negatives():
    emb, vid = clustered()
    c = dict(k=K, device="cpu", mode="approximate", trim="range", nlist=16)
    faiss = import_faiss()
    sizes = [make_index(faiss, N, D, False, NegativeConfig(index=i, **c)).code_size for i in ("ivf", "ivf_fp16")]
    assert sizes == [4 * D, 2 * D]  # bytes a vector (besides its 8-byte id)
    flat32 = build_negative_table(emb, vid, NegativeConfig(index="ivf", **c), progress=False)
    fp16 = build_negative_table(emb, vid, NegativeConfig(index="ivf_fp16", **c), progress=False)
    pairs = set(zip(flat32["anchor"], flat32["candidate"]))
    assert len(pairs & set(zip(fp16["anchor"], fp16["candidate"]))) >= 0.97 * len(pairs)
    both = fp16.merge(flat32, on=["anchor", "candidate"], suffixes=("", "_32"))
    np.testing.assert_allclose(both["distance"], both["distance_32"], rtol=1e-3)
