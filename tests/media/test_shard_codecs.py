"""Compressed clip shards (`clip_codecs`, `shards`): every codec's round trip, reading one clip
alone, old `pemt-shard/1` shards, the codec in the parameter hash and the manifest, training items
over compressed shards (any number of DataLoader workers) and the batched JPEG decode path.

Natural frames come from the synthetic demo (4 short 160x120 videos) ingested once per module at
short side 64 (frames 64 x 85): random noise would not compress, and PSNR bounds need real images.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch.utils.data import DataLoader

from pemt_pipeline.features.embed import EmbedConfig
from pemt_pipeline.media.clip_codecs import ClipCodec
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import (SHARD_FORMAT, TENSOR_NAMES, ShardError, ShardReader, encode_frames,
                                        read_metadata, read_record, write_shard)
from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset
from pemt_pipeline.features import AugmentConfig, ShardClipDataset, collate

CODECS = ("raw", "h264", "jpeg")
COMPRESSED = ("h264", "jpeg")
MIN_PSNR_DB = 35.0
N_VIDEOS = 4
# A guard, not a measure: a video takes well under a second here, and a worker that hangs (e.g. on
# swscale threads inherited through fork) becomes a `timeout` reject that the tests report.
HANG_GUARD_S = 10
INGEST = {"fps": 8, "frames_per_clip": 4, "frame_stride": 1, "clips_per_video": 4, "short_side": 64, "n_mels": 16,
          "mel_frames": 8, "workers": 1, "progress": False, "file_timeout_s": HANG_GUARD_S}
AUG = AugmentConfig(crop=48, short_side_range=(48, 64), flip=0.5, frame_jitter=1, freq_mask=0.1, time_mask=0.1)
NON_FRAME_TENSORS = ("log_mel", "clip_start", "frame_time", "clip_mask")


def ingest_config(shard_dir: Path, codec: str = "raw", **changes) -> IngestConfig:
    return IngestConfig(**{**INGEST, "frame_codec": codec, "shard_dir": str(shard_dir), **changes})


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def tensor_span(path: Path, name: str) -> tuple[int, int]:
    """[start, end) in bytes of tensor `name` inside a safetensors file (8-byte little-endian
    header length, the JSON header, then the data whose `data_offsets` the header gives)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    start, end = header[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def read_fails_or_differs(reader: ShardReader, clips: slice, expected: np.ndarray) -> bool:
    try:
        got = reader.read(("frames",), clips=clips)["frames"]
    except Exception:  # noqa: BLE001 - a decoder error (av, torchvision) or the reader's ValueError
        return True
    return not np.array_equal(got, expected)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory) -> pd.DataFrame:
    """The video index of 4 demo videos (2-3 s, 160x120, one per class)."""
    root = tmp_path_factory.mktemp("codec_demo")
    files, _ = generate_demo_dataset(DemoConfig(n_videos=N_VIDEOS, min_duration_s=2, max_duration_s=3,
                                                test_fraction=0.0))
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return build_index(VideoSource(root))


@pytest.fixture(scope="module")
def ingested(demo_index, tmp_path_factory) -> dict[str, tuple[pd.DataFrame, dict[str, int]]]:
    """codec -> (manifest, counts) of the demo ingested with that codec, each into its own folder."""
    root = tmp_path_factory.mktemp("codec_shards")
    out = {}
    for codec in CODECS:
        manifest, rejects, counts = ingest_all(demo_index, ingest_config(root / codec, codec))
        assert rejects.empty, rejects.to_dict("records")
        assert len(manifest) == N_VIDEOS
        out[codec] = (manifest, counts)
    return out


@pytest.fixture(scope="module")
def natural(ingested) -> dict[str, np.ndarray]:
    """The tensors of one raw demo shard (frames uint8 [4, 4, 64, 85, 3]), its last clip made a
    padding clip (black frames, mask False) as ingestion writes one."""
    tensors = ShardReader(ingested["raw"][0].shard_path[0]).read()
    tensors["frames"] = tensors["frames"].copy()
    tensors["frames"][-1] = 0
    tensors["clip_mask"] = tensors["clip_mask"].copy()
    tensors["clip_mask"][-1] = False
    return tensors


def shard_of(folder: Path, tensors: dict[str, np.ndarray], codec: str, name: str = "clip") -> Path:
    path = folder / f"{name}_{codec}.safetensors"
    write_shard(path, tensors, {"video_id": name}, codec=ClipCodec(codec))
    return path


# --------------------------------------------------------------------------- 1. round trip


@pytest.mark.parametrize("size", ["even_64x85", "odd_63x85"])
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_keeps_shape_quality_and_every_other_tensor(codec, size, natural, tmp_path):
    tensors = dict(natural)
    if size.startswith("odd"):  # 63 rows x 85 columns: h264 pads to even and crops back
        tensors["frames"] = np.ascontiguousarray(natural["frames"][:, :, :63])
    frames = tensors["frames"]
    reader = ShardReader(shard_of(tmp_path, tensors, codec))
    assert reader.codec == codec and reader.metadata["format"] == SHARD_FORMAT
    assert reader.frame_shape == frames.shape[:4] and reader.n_clips == 4
    back = reader.read()
    assert set(back) == set(TENSOR_NAMES)
    assert back["frames"].shape == frames.shape and back["frames"].dtype == np.uint8
    if codec == "raw":
        np.testing.assert_array_equal(back["frames"], frames)
    else:
        real = tensors["clip_mask"]
        assert psnr(back["frames"][real], frames[real]) > MIN_PSNR_DB
        for t in np.flatnonzero(real):  # every clip, not only on average
            assert psnr(back["frames"][t], frames[t]) > MIN_PSNR_DB - 2
        # the padded edge of odd frames (last row and column) is as good as the rest
        assert psnr(back["frames"][real][:, :, -1], frames[real][:, :, -1]) > MIN_PSNR_DB - 5
        assert psnr(back["frames"][real][:, :, :, -1], frames[real][:, :, :, -1]) > MIN_PSNR_DB - 5
    for name in NON_FRAME_TENSORS:
        assert back[name].dtype == tensors[name].dtype, name
        np.testing.assert_array_equal(back[name], tensors[name], err_msg=name)


def test_compressed_shards_hold_packets_not_pixels(natural, tmp_path):
    for codec in COMPRESSED:
        path = shard_of(tmp_path, natural, codec)
        with safe_open(str(path), framework="numpy") as f:
            names = set(f.keys())
            offsets = f.get_tensor("frame_offsets")
        assert "frames" not in names and {"frame_data", "frame_offsets"} <= names
        assert offsets.dtype == np.int64 and len(offsets) == 4 * 4 + 1 and offsets[0] == 0
        assert np.all(np.diff(offsets) > 0)
        assert offsets[-1] < natural["frames"].nbytes / 4
        assert json.loads(read_metadata(path)["codec"]) == ClipCodec(codec).settings()


def test_encoded_tensors_without_frame_shape_are_refused(natural, tmp_path):
    stored = encode_frames(natural, ClipCodec("jpeg"))
    with pytest.raises(ValueError, match="frame_shape"):
        write_shard(tmp_path / "x.safetensors", stored, {"video_id": "x"}, codec=ClipCodec("jpeg"))
    write_shard(tmp_path / "x.safetensors", stored, {"video_id": "x"}, codec=ClipCodec("jpeg"),
                frame_shape=natural["frames"].shape[:4])
    expected = ShardReader(shard_of(tmp_path, natural, "jpeg")).read(("frames",))["frames"]
    np.testing.assert_array_equal(ShardReader(tmp_path / "x.safetensors").read(("frames",))["frames"], expected)


# --------------------------------------------------------------------------- 2. one clip alone


@pytest.mark.parametrize("codec", CODECS)
def test_one_clip_reads_as_in_the_full_read(codec, natural, tmp_path):
    reader = ShardReader(shard_of(tmp_path, natural, codec))
    full = reader.read()
    for k in range(reader.n_clips):
        one = reader.read(clips=slice(k, k + 1))
        for name in TENSOR_NAMES:
            np.testing.assert_array_equal(one[name], full[name][k:k + 1], err_msg=f"{name} of clip {k}")
    two = reader.read(("frames", "clip_start"), clips=slice(1, 3))
    np.testing.assert_array_equal(two["frames"], full["frames"][1:3])
    np.testing.assert_array_equal(two["clip_start"], full["clip_start"][1:3])


@pytest.mark.parametrize("codec", COMPRESSED)
@pytest.mark.parametrize("k", [0, 2])
def test_one_clip_needs_none_of_the_other_clips_bytes(codec, k, natural, tmp_path):
    path = shard_of(tmp_path, natural, codec)
    reader = ShardReader(path)
    T, F = reader.frame_shape[:2]
    full = reader.read(("frames",))["frames"]
    with safe_open(str(path), framework="numpy") as f:
        offsets = f.get_tensor("frame_offsets")
    start, end = tensor_span(path, "frame_data")
    assert end - start == offsets[-1]
    blob = bytearray(path.read_bytes())
    rng = np.random.default_rng(k)
    for t in range(T):
        if t != k:  # garbage over every other clip's packets
            lo, hi = start + int(offsets[t * F]), start + int(offsets[(t + 1) * F])
            blob[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(blob))

    corrupted = ShardReader(path)
    np.testing.assert_array_equal(corrupted.read(("frames",), clips=slice(k, k + 1))["frames"], full[k:k + 1])
    for t in range(T):
        if t != k:
            assert read_fails_or_differs(corrupted, slice(t, t + 1), full[t:t + 1]), f"clip {t} was corrupted"


def test_a_damaged_clip_is_an_error_naming_the_shard_and_clip(natural, tmp_path):
    path = shard_of(tmp_path, natural, "h264")
    T, F = ShardReader(path).frame_shape[:2]
    with safe_open(str(path), framework="numpy") as f:
        offsets = f.get_tensor("frame_offsets")
    start, _ = tensor_span(path, "frame_data")
    blob = bytearray(path.read_bytes())
    blob[start:start + int(offsets[F])] = bytes(int(offsets[F]))  # clip 0's packets zeroed: no NAL units
    path.write_bytes(bytes(blob))
    with pytest.raises(ShardError, match=rf"clip 0 of '.*{path.name}' cannot be decoded.*run the ingestion"):
        ShardReader(path).read(("frames",))


# --------------------------------------------------------------------------- 3. old and foreign shards


def write_old_shard(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str], params_hash: str) -> None:
    """A shard as the code before codecs wrote it: format pemt-shard/1, raw `frames`, no codec."""
    record = {k: v for k, v in json.loads(meta["record"]).items() if k not in ("frame_codec", "frame_bytes",
                                                                              "shard_bytes")}
    record["params_hash"] = params_hash
    old_meta = {"format": "pemt-shard/1", "video_id": meta["video_id"], "params_hash": params_hash,
                "content_hash": meta["content_hash"], "fingerprint": meta["fingerprint"], "record": json.dumps(record)}
    save_file({name: np.ascontiguousarray(tensors[name]) for name in TENSOR_NAMES}, str(path), metadata=old_meta)


def test_old_format_shard_loads_as_raw(natural, ingested, tmp_path):
    source = ingested["raw"][0].shard_path[0]
    path = tmp_path / "old.safetensors"
    write_old_shard(path, natural, read_metadata(source), params_hash="0123456789abcdef")
    reader = ShardReader(path)
    assert reader.codec == "raw" and reader.frame_shape == natural["frames"].shape[:4]
    back = reader.read()
    for name in TENSOR_NAMES:
        np.testing.assert_array_equal(back[name], natural[name], err_msg=name)
    np.testing.assert_array_equal(reader.read(("frames",), clips=slice(2, 3))["frames"], natural["frames"][2:3])
    assert read_record(path)["video_id"] == read_metadata(source)["video_id"]


def test_ingestion_rebuilds_an_old_format_shard(demo_index, ingested, tmp_path):
    """Same video, same content and fingerprint, but a shard of the old format (and its older
    parameter hash): ingestion writes it again in the current format instead of skipping it."""
    row = demo_index.iloc[:1]
    cfg = ingest_config(tmp_path / "shards", "raw")
    vid = row.video_id.iloc[0]
    source = Path(ingested["raw"][0].set_index("video_id").loc[vid, "shard_path"])
    assert source.name == cfg.shard_path(vid).name
    old = ShardReader(source).read()
    (tmp_path / "shards").mkdir()
    old_hash = cfg.params_hash[::-1]  # the hash of older code: any other value
    write_old_shard(cfg.shard_path(vid), old, read_metadata(source), params_hash=old_hash)
    assert ShardReader(cfg.shard_path(vid)).metadata["format"] == "pemt-shard/1"

    manifest, rejects, counts = ingest_all(row, cfg)
    assert rejects.empty, rejects.to_dict("records")
    assert counts == {"accepted": 1, "skipped": 0, "rejected": 0}
    meta = read_metadata(cfg.shard_path(vid))
    assert meta["format"] == SHARD_FORMAT and meta["params_hash"] == cfg.params_hash
    assert manifest.frame_codec.iloc[0] == "raw"
    np.testing.assert_array_equal(ShardReader(cfg.shard_path(vid)).read()["frames"], old["frames"])
    _, _, again = ingest_all(row, cfg)  # now current: skipped
    assert again == {"accepted": 0, "skipped": 1, "rejected": 0}


def test_unknown_format_or_codec_asks_to_ingest_again(natural, ingested, tmp_path):
    source = ingested["raw"][0].shard_path[0]
    meta = read_metadata(source)
    unknown = tmp_path / "future.safetensors"
    save_file({k: np.ascontiguousarray(natural[k]) for k in TENSOR_NAMES}, str(unknown),
              metadata={**meta, "format": "pemt-shard/99"})
    with pytest.raises(ShardError, match="run the ingestion pipeline again") as info:
        ShardReader(unknown)
    assert "pemt-shard/99" in str(info.value)
    assert read_metadata(unknown) is None  # so ingestion rewrites it

    no_format = tmp_path / "no_format.safetensors"
    save_file({k: np.ascontiguousarray(natural[k]) for k in TENSOR_NAMES}, str(no_format),
              metadata={k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(ShardError, match="run the ingestion pipeline again"):
        ShardReader(no_format)

    codec = shard_of(tmp_path, natural, "jpeg")
    with safe_open(str(codec), framework="numpy") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
        codec_meta = f.metadata()
    save_file(stored, str(tmp_path / "av1.safetensors"), metadata={**codec_meta, "codec": '{"name": "av1"}'})
    with pytest.raises(ShardError, match="av1.*run the ingestion pipeline again"):
        ShardReader(tmp_path / "av1.safetensors")

    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a json header")
    with pytest.raises(ShardError, match="run the ingestion pipeline again"):
        ShardReader(tmp_path / "garbage.safetensors")


# --------------------------------------------------------------------------- 4. parameter hash, manifest


def test_parameter_hash_holds_the_codec_and_only_its_settings():
    h = {c: IngestConfig(frame_codec=c).params_hash for c in CODECS}
    assert len(set(h.values())) == 3
    assert IngestConfig(frame_codec="h264", h264_crf=23).params_hash != h["h264"]
    assert IngestConfig(frame_codec="h264", h264_preset="medium").params_hash != h["h264"]
    assert IngestConfig(frame_codec="jpeg", jpeg_quality=75).params_hash != h["jpeg"]
    # the settings of a codec not chosen do not count
    assert IngestConfig(frame_codec="jpeg", h264_crf=23, h264_preset="medium").params_hash == h["jpeg"]
    assert IngestConfig(frame_codec="h264", jpeg_quality=75).params_hash == h["h264"]
    assert IngestConfig(frame_codec="raw", h264_crf=30, jpeg_quality=50).params_hash == h["raw"]


@pytest.mark.parametrize(("key", "value"), [("frame_codec", "png"), ("h264_crf", 60), ("h264_crf", -1),
                                            ("jpeg_quality", 0), ("jpeg_quality", 101), ("h264_preset", "turbo")])
def test_bad_codec_parameters_name_their_key(key, value):
    with pytest.raises(ValueError, match=rf"ingestion\.{key}\b"):
        IngestConfig.from_dict({key: value})
    with pytest.raises(ValueError, match=rf"ingestion\.{key}\b"):
        IngestConfig(**{key: value}).validate()


def test_good_codec_parameters_are_accepted():
    for params in ({"frame_codec": "raw"}, {"frame_codec": "jpeg", "jpeg_quality": 100},
                   {"h264_crf": 0, "h264_preset": "veryslow"}, {"h264_crf": 51, "jpeg_quality": 1}):
        IngestConfig.from_dict(params)


def test_manifest_records_codec_and_sizes(ingested):
    sizes = {}
    for codec in CODECS:
        manifest, counts = ingested[codec]
        assert counts == {"accepted": N_VIDEOS, "skipped": 0, "rejected": 0}
        assert (manifest.frame_codec == codec).all()
        for row in manifest.itertuples():
            reader = ShardReader(row.shard_path)
            assert reader.codec == codec
            T, F, H, W = reader.frame_shape
            if codec == "raw":
                assert row.frame_bytes == T * F * H * W * 3
            file_size = Path(row.shard_path).stat().st_size
            assert row.frame_bytes < row.shard_bytes <= file_size < row.shard_bytes + 16 * 1024  # + the header
            assert read_record(row.shard_path)["frame_bytes"] == row.frame_bytes
        sizes[codec] = manifest.set_index("video_id").frame_bytes
    assert (sizes["h264"] * 10 < sizes["raw"]).all()
    assert (sizes["jpeg"] * 4 < sizes["raw"]).all()


def test_changing_the_codec_rewrites_the_shards(demo_index, ingested, tmp_path):
    shard_dir = tmp_path / "shards"
    shutil.copytree(Path(ingested["raw"][0].shard_path[0]).parent, shard_dir)
    counts_by_codec = []
    for codec in ("h264", "h264", "jpeg", "jpeg"):
        cfg = ingest_config(shard_dir, codec)
        manifest, rejects, counts = ingest_all(demo_index, cfg)
        assert rejects.empty, rejects.to_dict("records")
        counts_by_codec.append((codec, counts["accepted"], counts["skipped"]))
        assert (manifest.frame_codec == codec).all() and (manifest.params_hash == cfg.params_hash).all()
        assert all(ShardReader(p).codec == codec for p in manifest.shard_path)
    n = N_VIDEOS
    assert counts_by_codec == [("h264", n, 0), ("h264", 0, n), ("jpeg", n, 0), ("jpeg", 0, n)]
    # a skipped video's manifest row is the one written (codec and sizes included)
    jpeg = ingested["jpeg"][0].set_index("video_id")
    assert (manifest.set_index("video_id").frame_bytes == jpeg.frame_bytes).all()


# --------------------------------------------------------------------------- fork safety


def test_ingestion_workers_after_h264_coding_in_the_parent(natural, demo_index, tmp_path):
    """Ingestion forks its workers: H.264 encoded and decoded in the parent before (a notebook, a
    test session, a pipeline that read shards) must not break the workers' own coding."""
    reader = ShardReader(shard_of(tmp_path, natural, "h264"))
    reader.read(("frames",))
    row = demo_index.iloc[:1]
    manifest, rejects, counts = ingest_all(row, ingest_config(tmp_path / "shards", "h264"))
    assert rejects.empty, rejects.to_dict("records")
    assert counts["accepted"] == 1 and ShardReader(manifest.shard_path[0]).codec == "h264"


# --------------------------------------------------------------------------- 5. training items


def items(dataset: ShardClipDataset, workers: int) -> list[dict[str, torch.Tensor]]:
    """Batches of 2; a worker that hangs raises (the DataLoader's timeout) instead of blocking."""
    loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate,
                        timeout=HANG_GUARD_S if workers else 0)
    return list(loader)


def test_training_items_do_not_depend_on_workers_over_h264_shards(ingested):
    manifest = ingested["h264"][0]

    def dataset():
        ds = ShardClipDataset(manifest, AUG, train=True, seed=5)
        ds.set_epoch(1)
        return ds

    # serial first: the workers then fork from a process that has already decoded H.264 (as after
    # an evaluation pass or a look at dataset[0])
    serial, parallel = items(dataset(), 0), items(dataset(), 2)
    assert len(serial) == len(parallel) == N_VIDEOS // 2
    for a, b in zip(serial, parallel, strict=True):
        for key in ("video", "audio", "clip_mask", "video_index", "clip_ids"):
            assert torch.equal(a[key], b[key]), key
    other = dataset()
    for i in range(N_VIDEOS):
        item = other[i]
        assert torch.equal(item["video"], serial[i // 2]["video"][i % 2])
        assert torch.equal(item["audio"], serial[i // 2]["audio"][i % 2])
    # the items are augmented (the seed matters)
    reseeded = ShardClipDataset(manifest, AUG, train=True, seed=6)
    reseeded.set_epoch(1)
    assert not torch.equal(reseeded[0]["video"], other[0]["video"])


def test_eval_items_of_h264_shards_are_close_to_raw(ingested):
    raw = ShardClipDataset(ingested["raw"][0], AUG, train=False)
    h264 = ShardClipDataset(ingested["h264"][0], AUG, train=False)
    assert list(ingested["raw"][0].video_id) == list(ingested["h264"][0].video_id)
    for i in range(N_VIDEOS):
        a, b = raw[i], h264[i]
        assert a["video"].shape == b["video"].shape == (4, 3, 4, AUG.crop, AUG.crop)
        for key in ("audio", "clip_mask", "clip_ids"):
            assert torch.equal(a[key], b[key]), key
        assert psnr(a["video"].numpy(), b["video"].numpy()) > MIN_PSNR_DB
        assert not torch.equal(a["video"], b["video"])  # lossy: really decoded from H.264


# --------------------------------------------------------------------------- 6. decode device


@pytest.mark.parametrize("codec", CODECS)
def test_frames_on_cpu_equal_the_cpu_read(codec, natural, tmp_path):
    reader = ShardReader(shard_of(tmp_path, natural, codec))
    expected = reader.read(("frames",))["frames"]
    got = reader.frames_on("cpu")
    assert got.device.type == "cpu" and got.dtype == torch.uint8
    assert torch.equal(got, torch.from_numpy(expected))
    part = reader.frames_on(torch.device("cpu"), clips=slice(1, 3))
    assert torch.equal(part, torch.from_numpy(expected[1:3]))
    assert torch.equal(reader.frames_on("cpu", clips=slice(3, 4)), torch.from_numpy(expected[3:4]))


def test_frames_on_cpu_of_ingested_jpeg_shards(ingested):
    for path in ingested["jpeg"][0].shard_path:
        reader = ShardReader(path)
        assert torch.equal(reader.frames_on("cpu"), torch.from_numpy(reader.read(("frames",))["frames"]))


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "auto"])
def test_embedding_accepts_decode_devices(device):
    assert EmbedConfig.from_dict({"decode_device": device}).decode_device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "", "CPU"])
def test_embedding_rejects_bad_decode_devices(device):
    with pytest.raises(ValueError, match=r"embedding\.decode_device"):
        EmbedConfig.from_dict({"decode_device": device})


def test_h264_encoding_is_the_same_bytes_whatever_ran_before():
    """With x264's mbtree on, some processes encoded their first clips to other bytes than the same
    clips later (rare and timing-dependent: the resume test across executors caught it in CI), so
    shards differed between runs. Two fresh processes, three calls each."""
    script = textwrap.dedent("""
        import hashlib, numpy as np
        from pemt_pipeline.media.clip_codecs import ClipCodec
        r = np.random.default_rng(1)
        blocks = r.integers(0, 255, (2, 8, 9, 11, 3), dtype=np.uint8)
        clips = np.ascontiguousarray(blocks.repeat(8, 2).repeat(8, 3)[:, :, :64, :80])
        print(*(hashlib.md5(ClipCodec().encode(clips)[0].tobytes()).hexdigest() for _ in range(3)))
    """)
    digests = [d for _ in range(2) for d in subprocess.run([sys.executable, "-c", script], capture_output=True,
                                                           text=True, check=True).stdout.split()]
    assert len(digests) == 6 and len(set(digests)) == 1, digests
