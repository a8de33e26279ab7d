"""Embedding in several processes (torch's elastic launcher, gloo on the CPU): each rank embeds a
slice of the videos and rank 0 assembles the store one process writes (same files, same bytes).

The launches run in a subprocess: torch's elastic launcher leaves its signal handlers and
multiprocessing's resource tracker in the process that launches (see tests/finetuning)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pemt_pipeline.atomic import TEMPORARY
from pemt_pipeline.features import ClipEmbeddings, EmbedConfig, embed_clips
from pemt_pipeline.features.embed import clip_slices
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.models import ModelConfig, random_model
from tests.conftest import env_params, shared_data
from tests.media.makers import make_video

TINY_MODEL = env_params("model", {"rank": 4, "transformer": {"hidden": 16, "ffn": 32}})
REAL = ("mmaction2_test.avi", "tiny-ucf101_v_Basketball_g01_c01.avi", "moviepy_doc_medias_example3.mp4",
        "moviepy_big_buck_bunny_432_433.webm")  # 6.6 s, 4.7 s (no audio), 2 s, 1 s (padded)
# Batches of 3 (odd sizes round differently from even ones on the CPU): the two ranks get clips 0-8 and
# 9-19, the second video's clips (5-9) on both.
PARAMS = {"crop": 28, "batch_size": 3, "progress": False}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Four real clips and a synthetic video, ingested small: 5, 5, 5, 2 and 3 real clips."""
    root = tmp_path_factory.mktemp("emb_dist")
    (root / "videos").mkdir()
    for name in REAL:
        shutil.copy(shared_data("real_clips") / name, root / "videos" / name)
    make_video(root / "videos" / "synthetic.mp4", seconds=1.5, fps=10)
    cfg = IngestConfig(fps=10, frames_per_clip=4, frame_stride=1, clips_per_video=5, short_side=32, n_mels=16,
                       mel_frames=8, short_video_policy="pad", missing_audio="silence",
                       shard_dir=str(root / "shards"), workers=1, progress=False)
    manifest, rejects, _ = ingest_all(build_index(VideoSource(root / "videos")), cfg)
    assert rejects.empty and len(manifest) == 5
    return manifest


def _one_process(manifest: pd.DataFrame, out: Path) -> ClipEmbeddings:
    return embed_clips(manifest, ModelConfig.from_dict(TINY_MODEL), EmbedConfig(output_dir=str(out), **PARAMS))


def _launch(tmp_path: Path, manifest: pd.DataFrame, params: dict) -> subprocess.CompletedProcess:
    """The embedding node (`embed_all_clips`) in a fresh interpreter, which launches the workers."""
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps((manifest, params, TINY_MODEL)))
    code = ("import json, pickle, sys; from pemt_pipeline.pipelines.embedding.nodes import embed_all_clips\n"
            "manifest, params, model = pickle.loads(open(sys.argv[1], 'rb').read())\n"
            "store, summary = embed_all_clips(manifest, None, params, model)\n"
            "print(json.dumps(summary))")
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "inputs.pkl")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMPORARY.match(p.name))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_clip_slices_are_whole_batches_shared_out_evenly():
    assert clip_slices(20, 3, 1) == [(0, 20)]
    assert clip_slices(20, 3, 2) == [(0, 9), (9, 20)]  # 7 batches: 3 and 4 (the last one of 2 clips)
    assert clip_slices(16, 4, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert clip_slices(5, 4, 3) == [(0, 0), (0, 4), (4, 5)]  # more ranks than batches: empty slices
    for n, batch, parts in ((1, 1, 1), (1000, 64, 8), (999, 7, 5), (3, 64, 2), (64, 64, 3)):
        slices = clip_slices(n, batch, parts)
        assert slices[0][0] == 0 and slices[-1][1] == n and len(slices) == parts
        assert all(a[1] == b[0] and a[0] <= a[1] and a[0] % batch == 0 for a, b in zip(slices, slices[1:]))
        sizes = [-(-(b - a) // batch) for a, b in slices]  # batches per rank: at most one apart
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == -(-n // batch)


@pytest.mark.parametrize("key, value, message", [
    ("nproc_per_node", 0, "embedding.nproc_per_node must be >= 1, got 0"),
    ("nnodes", 0, "embedding.nnodes must be >= 1, got 0"),
    ("nproc_per_node", 2.0, "parameter embedding.nproc_per_node must be an integer, got 2.0 (float)"),
    ("backend", "mpi", "embedding.backend must be one of ['auto', 'nccl', 'gloo'], got 'mpi'"),
    ("rdzv_endpoint", "node0", "embedding.rdzv_endpoint must be host:port, got 'node0'"),
])
def test_bad_launch_parameters_name_the_key(key, value, message):
    with pytest.raises(ValueError) as info:
        EmbedConfig.from_dict({key: value})
    assert str(info.value) == message
    cfg = EmbedConfig.from_dict({"nproc_per_node": 4, "nnodes": 2, "rdzv_endpoint": "node0:29500", "backend": "gloo"})
    assert cfg.world_size == 8


def test_a_given_model_embeds_in_this_process_whatever_the_launch_settings(manifest, tmp_path):
    """Training's negative refresh passes its model: embedded here (with that model, not cfg.seed's)."""
    model_cfg = ModelConfig.from_dict(TINY_MODEL)
    model = random_model(model_cfg, seed=123)
    cfg = EmbedConfig(output_dir=str(tmp_path / "given"), nproc_per_node=2, nnodes=2, **PARAMS)
    given = embed_clips(manifest, model_cfg, cfg, model=model)
    seeded = embed_clips(manifest, model_cfg, EmbedConfig(output_dir=str(tmp_path / "seeded"), seed=123, **PARAMS))
    assert given.visual.tobytes() == seeded.visual.tobytes() and given.audio.tobytes() == seeded.audio.tobytes()


def test_two_gloo_processes_through_the_node_write_the_one_process_store(manifest, tmp_path):
    reference = _one_process(manifest, tmp_path / "one" / "clip_embeddings")
    out = tmp_path / "two" / "clip_embeddings"
    previous = embed_clips(manifest, ModelConfig.from_dict(TINY_MODEL),
                           EmbedConfig(output_dir=str(out), seed=7, **PARAMS))  # replaced below
    previous_visual = np.array(previous.visual)
    proc = _launch(tmp_path, manifest, {**PARAMS, "output_dir": str(out), "nproc_per_node": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["clips"] == len(reference.clips) == 20
    two = ClipEmbeddings(out)
    assert _files(out) == _files(reference.root) == ["audio.npy", "clips.parquet", "meta.json", "visual.npy"]
    pd.testing.assert_frame_equal(two.clips, reference.clips)
    assert two.meta == reference.meta
    for name in ("visual", "audio"):  # eval-mode CNNs, clip by clip: bit-identical whatever the batches
        a, b = two.array(name), reference.array(name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert not np.array_equal(two.visual, previous_visual)
    assert _temporaries(out.parent) == []  # the parts folder is gone


def _zero_frames(shard: Path) -> None:
    """Overwrite a shard's encoded frames with zeros (its clip table still reads): decoding fails."""
    data = bytearray(shard.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    start, stop = json.loads(data[8:8 + size])["frame_data"]["data_offsets"]
    data[8 + size + start:8 + size + stop] = bytes(stop - start)
    shard.write_bytes(bytes(data))


def test_a_failing_rank_leaves_the_previous_store(manifest, tmp_path):
    """Rank 1's last video cannot be decoded: the run fails, the previous store is untouched, and the
    next run clears what the killed ranks left (rank 0's store being built, the parts folder)."""
    shards = tmp_path / "shards"
    shutil.copytree(Path(manifest["shard_path"].iloc[0]).parent, shards)
    broken = manifest.assign(shard_path=[str(shards / Path(p).name) for p in manifest["shard_path"]])
    _zero_frames(Path(broken["shard_path"].iloc[-1]))
    out = tmp_path / "clip_embeddings"
    good = _one_process(manifest, out)
    before = {name: good.array(name).tobytes() for name in ("visual", "audio")}
    proc = _launch(tmp_path, broken, {**PARAMS, "output_dir": str(out), "nproc_per_node": 2})
    assert proc.returncode != 0
    assert Path(broken["shard_path"].iloc[-1]).name in proc.stderr
    kept = ClipEmbeddings(out)
    assert {name: kept.array(name).tobytes() for name in ("visual", "audio")} == before
    assert _files(out) == ["audio.npy", "clips.parquet", "meta.json", "visual.npy"]
    _one_process(manifest, out)
    assert _temporaries(tmp_path) == []
