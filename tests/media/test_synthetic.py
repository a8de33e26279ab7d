"""Tests of the synthetic audio-visual demo dataset (decoded back with PyAV)."""

from __future__ import annotations

import colorsys
import io
import os
import struct
import subprocess
import sys
from dataclasses import dataclass

import av
import numpy as np
import pandas as pd
import pytest

from pemt_pipeline.media.synthetic import (
    CLASS_TEMPLATES,
    DemoConfig,
    bounce_times,
    generate_demo_dataset,
    reflect,
    render_video,
    split_labels,
)

SMALL = dict(
    n_videos=6, n_classes=3, min_duration_s=3.0, max_duration_s=4.0, width=64, height=48,
    fps=20, sample_rate=16000, test_fraction=0.5, seed=3,
)
WIN_S = 0.05  # RMS window around onsets


@dataclass
class Decoded:
    frames: np.ndarray  # (n, H, W, 3) uint8
    audio: np.ndarray  # (2, n_samples) float32
    video_codec: str
    audio_codec: str
    n_video_streams: int
    n_audio_streams: int
    fps: float
    sample_rate: int
    channels: int


def decode(data: bytes) -> Decoded:
    with av.open(io.BytesIO(data)) as c:
        vs, aus = c.streams.video, c.streams.audio
        info = (vs[0].codec_context.name, aus[0].codec_context.name, len(vs), len(aus),
                float(vs[0].average_rate), aus[0].rate, aus[0].channels)
        frames, audio = [], []
        for f in c.decode(video=0, audio=0):
            if isinstance(f, av.VideoFrame):
                frames.append(f.to_ndarray(format="rgb24"))
            else:
                audio.append(f.to_ndarray())
    return Decoded(np.stack(frames), np.concatenate(audio, axis=1), *info)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def target_mask(frames: np.ndarray, reach: float = 9.0) -> np.ndarray:
    """Pixels of the class object, the only saturated thing (background and distractors
    are grey): saturated pixels within ``reach`` px of the median saturated pixel, which
    drops the odd chroma artefact of the codec."""
    f = frames.astype(np.int16)
    mask = (f.max(-1) - f.min(-1)) > 45
    for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
        ys, xs = np.nonzero(mask[k])
        far = np.hypot(xs - np.median(xs), ys - np.median(ys)) > reach
        mask[k, ys[far], xs[far]] = False
    return mask


def isolated_bounces(info: dict, before: float = 0.25, after: float = 0.0) -> list[tuple]:
    """(time, wall) of bounces with no other sound event ``before`` s before them (nor a
    click ``after`` s after), and after the object has fully faded in."""
    events = list(info["bounce_times"]) + list(info["click_times"])
    if info["appear_time"] is not None:
        events.append(info["appear_time"])
    start = (info["appear_time"] or 0.0) + 0.3
    out = []
    for t, wall in zip(info["bounce_times"], info["bounce_walls"]):
        clash = any(t - before <= e < t for e in events)
        clash |= any(t <= c <= t + after for c in info["click_times"])
        if not clash and start <= t <= info["duration_s"] - 0.2:
            out.append((t, wall))
    return out


@pytest.fixture(scope="module")
def cfg() -> DemoConfig:
    return DemoConfig(**SMALL)


@pytest.fixture(scope="module")
def dataset(cfg):
    return generate_demo_dataset(cfg)


@pytest.fixture(scope="module")
def rendered(cfg):
    """[(info, Decoded)] for every video of the small dataset."""
    out = []
    for i in range(cfg.n_videos):
        data, info = render_video(cfg, i)
        out.append((info, decode(data)))
    return out


@pytest.fixture(scope="module")
def all_classes():
    """One 5 s video of each class template, decoded: [(template, info, Decoded)]."""
    cfg = DemoConfig(**{**SMALL, "n_videos": len(CLASS_TEMPLATES),
                        "n_classes": len(CLASS_TEMPLATES), "min_duration_s": 5.0,
                        "max_duration_s": 5.0, "click_rate": 0.0, "seed": 11})
    out = []
    for i, template in enumerate(CLASS_TEMPLATES):
        data, info = render_video(cfg, i)
        out.append((template, info, decode(data)))
    return cfg, out


# ------------------------------------------------------------------------- files


def test_files_decode_with_expected_streams(cfg, dataset):
    files, labels = dataset
    assert len(files) == cfg.n_videos
    for path, data in files.items():
        d = decode(data)
        assert (d.n_video_streams, d.n_audio_streams) == (1, 1)
        assert (d.video_codec, d.audio_codec) == ("h264", "aac")
        assert d.frames.shape[1:] == (cfg.height, cfg.width, 3)
        assert d.fps == cfg.fps
        assert (d.sample_rate, d.channels) == (cfg.sample_rate, 2)
        duration = float(labels.set_index("path").loc[path, "duration_s"])
        assert cfg.min_duration_s - 1 / cfg.fps <= duration <= cfg.max_duration_s + 1 / cfg.fps
        assert len(d.frames) == round(duration * cfg.fps)
        assert abs(d.audio.shape[1] - duration * cfg.sample_rate) <= 1024


def test_render_video_info_matches_dataset(cfg, dataset):
    files, labels = dataset
    data, info = render_video(cfg, 2)
    assert_same_media(files[info["path"]], data)
    row = labels.set_index("path").loc[info["path"]]
    assert (row["label"], row["n_bounces"]) == (info["label"], info["n_bounces"])
    assert info["positions"].shape == (info["n_frames"], 2)
    assert info["n_bounces"] == len(info["bounce_times"]) == len(info["bounce_walls"])
    moving_s = info["duration_s"] - info["appear_time"]
    assert 1.2 * moving_s - 2 <= info["n_bounces"] <= 2.6 * moving_s + 2  # 1.2-2.6 bounces/s
    with pytest.raises(ValueError, match="index"):
        render_video(cfg, cfg.n_videos)


# ------------------------------------------------------------------------- determinism

_MP4_CONTAINERS = {"moov", "trak", "mdia", "minf", "stbl", "udta", "edts", "dinf", "meta"}


def mp4_leaf_boxes(data: bytes, start: int = 0, end: int | None = None,
                   path: str = "") -> list[tuple[str, bytes]]:
    """(path, bytes) of every leaf box, e.g. ``("moov/trak1/mdia/minf/stbl/stco", ...)``;
    repeated siblings are numbered."""
    end = len(data) if end is None else end
    out, seen = [], {}
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        header, kind = 8, kind.decode("latin-1")
        if size == 1:
            size, header = struct.unpack(">Q", data[start + 8 : start + 16])[0], 16
        size = size or end - start
        n = seen[kind] = seen.get(kind, 0) + 1
        name = f"{path}{kind}{n if n > 1 else ''}"
        if kind in _MP4_CONTAINERS:
            inner = start + header + (4 if kind == "meta" else 0)  # meta is a full box
            out += mp4_leaf_boxes(data, inner, start + size, name + "/")
        else:
            out.append((name, data[start : start + size]))
        start += size
    return out


def encoded_streams(data: bytes) -> list[tuple]:
    """What the muxer was given, per stream: codec, extradata (SPS/PPS, AudioSpecificConfig)
    and every packet's (pts, dts, duration, keyframe, payload)."""
    with av.open(io.BytesIO(data)) as c:
        streams = [[s.codec_context.name, bytes(s.codec_context.extradata or b"")]
                   for s in c.streams]
        packets: list[list] = [[] for _ in c.streams]
        for p in c.demux():
            if p.size:
                packets[p.stream.index].append((p.pts, p.dts, p.duration, p.is_keyframe, bytes(p)))
    return [(*s, pk) for s, pk in zip(streams, packets)]


def _first_difference(x: bytes, y: bytes) -> int:
    return next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))


def decoded_media(data: bytes) -> list[np.ndarray]:
    """Every decoded video frame (RGB) and audio frame (float samples) of a file, stream by stream."""
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") if isinstance(f, av.VideoFrame) else f.to_ndarray()
                for f in c.decode(*c.streams)]


def assert_same_media(a: bytes, b: bytes) -> None:
    """The same media: byte-identical files, or else the same encoded streams (codec headers, every
    packet's timing and payload) and the same decoded frames and samples, which is what the demo
    promises (README: the MP4 container's own bytes are not asserted). A failure names the MP4
    boxes that differ."""
    if a == b:
        return
    if encoded_streams(a) == encoded_streams(b):
        decoded_a, decoded_b = decoded_media(a), decoded_media(b)
        assert len(decoded_a) == len(decoded_b) and all(np.array_equal(x, y) for x, y in zip(decoded_a, decoded_b))
        return
    boxes_a, boxes_b = mp4_leaf_boxes(a), mp4_leaf_boxes(b)
    if [n for n, _ in boxes_a] != [n for n, _ in boxes_b]:
        where = f"box layout {[n for n, _ in boxes_a]} vs {[n for n, _ in boxes_b]}"
    else:
        where = ", ".join(f"{n} ({len(x)} vs {len(y)} B, from byte {_first_difference(x, y)})"
                          for (n, x), (_, y) in zip(boxes_a, boxes_b) if x != y)
    pytest.fail(f"the encoded streams differ; the MP4 bytes ({len(a)} vs {len(b)} B) differ in {where}")


def test_assert_same_media_tells_muxing_from_content(dataset):
    files, _ = dataset
    data = next(iter(files.values()))
    tag = data.rindex(b"Lavf")  # the muxer's encoder tag, in moov/udta: the same media
    assert_same_media(data, data[:tag] + b"X" + data[tag + 1 :])
    mdat = data.index(b"mdat") + 200  # a byte of a packet's payload: other media
    with pytest.raises(pytest.fail.Exception, match=r"encoded streams differ.*in mdat"):
        assert_same_media(data, data[:mdat] + bytes([data[mdat] ^ 0xFF]) + data[mdat + 1 :])
    assert_same_media(data, bytes(data))


def test_same_config_gives_the_same_media(cfg, dataset):
    files, labels = dataset
    files2, labels2 = generate_demo_dataset(DemoConfig(**SMALL))
    assert list(files2) == list(files)
    for k in files:
        assert_same_media(files[k], files2[k])
    pd.testing.assert_frame_equal(labels2, labels)


def test_repeated_renders_give_the_same_media_in_and_across_processes(cfg):
    """Rendering one video four times in a process, and once in a fresh interpreter (another
    hash seed and memory layout), gives the same media: a fresh machine once gave two byte strings
    (A, B, B, A) with identical packets."""
    first, *again = [render_video(cfg, 2)[0] for _ in range(4)]
    for data in again:
        assert_same_media(first, data)
    code = ("import sys\n"
            "from pemt_pipeline.media.synthetic import DemoConfig, render_video\n"
            f"data = render_video(DemoConfig(**{SMALL!r}), 2)[0]\n"
            "sys.stdout.buffer.write(data)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, timeout=120).stdout
    assert_same_media(first, other)


def test_different_seed_gives_different_content(cfg, dataset):
    files, _ = dataset
    other, info = render_video(DemoConfig(**{**SMALL, "seed": 4}), 0)
    ours = decode(files[info["path"]])
    theirs = decode(other)
    n = min(len(ours.frames), len(theirs.frames))
    assert np.abs(ours.frames[:n].astype(int) - theirs.frames[:n]).mean() > 5
    m = min(ours.audio.shape[1], theirs.audio.shape[1])
    assert not np.allclose(ours.audio[:, :m], theirs.audio[:, :m], atol=0.05)


# ------------------------------------------------------------------------- labels


def test_labels_cover_files_classes_and_splits(cfg, dataset):
    files, labels = dataset
    assert list(labels.columns[:3]) == ["path", "label", "split"]
    assert {"duration_s", "n_bounces"} <= set(labels.columns)
    assert list(labels["path"]) == sorted(files) == sorted(labels["path"])
    assert sorted(labels["label"].unique()) == sorted(cfg.class_names())
    for path, label in zip(labels["path"], labels["label"]):
        assert path.startswith("videos/demo_") and path.endswith(f"_{label}.mp4")
    assert set(labels["split"]) == {"train", "test"}
    per_class = labels.groupby("label")["split"].agg(lambda s: sorted(set(s)))
    assert all(v == ["test", "train"] for v in per_class)
    assert (labels["n_bounces"] > 0).all()


@pytest.mark.parametrize("n, fraction, expected", [(10, 0.25, 2), (8, 0.25, 2), (3, 0.25, 1),
                                                    (2, 0.9, 1), (1, 0.5, 0), (5, 0.0, 0)])
def test_split_is_stratified(n, fraction, expected):
    labels = pd.Series(["a", "b"] * n)
    split = split_labels(labels, fraction)
    for cls in ("a", "b"):
        assert (split[labels == cls] == "test").sum() == expected
    assert split.isin({"train", "test"}).all()


# ------------------------------------------------------------------------- sync


def test_audio_onsets_and_pan_at_bounce_times(cfg, rendered):
    sr, w = cfg.sample_rate, round(WIN_S * cfg.sample_rate)
    checked = 0
    for info, d in rendered:
        mono = d.audio.mean(0)
        for t, wall in isolated_bounces(info, after=WIN_S):
            s = round(t * sr)
            assert rms(mono[s : s + w]) > 3 * rms(mono[s - w : s]), (info["path"], t)
            # the onset is at the bounce, not a few ms later: the first 10 ms already carry it
            assert rms(mono[s : s + sr // 100]) > 2 * rms(mono[s - w : s - sr // 200])
            if wall in ("left", "right"):
                left, right = rms(d.audio[0, s : s + w]), rms(d.audio[1, s : s + w])
                assert (left > 1.5 * right) if wall == "left" else (right > 1.5 * left)
            checked += 1
    assert checked >= 8


def wall_gaps(mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame, distance in pixels from the masked object to each wall (nan if absent)."""
    h, w = mask.shape[1:]
    cols, rows = mask.any(1), mask.any(2)  # (n, W), (n, H)

    def first(a: np.ndarray) -> np.ndarray:
        return np.where(a.any(1), a.argmax(1), np.nan)

    return {"left": first(cols), "right": first(cols[:, ::-1]),
            "top": first(rows), "bottom": first(rows[:, ::-1])}


def test_object_touches_wall_and_flashes_at_bounces(cfg, rendered):
    checked = 0
    for info, d in rendered:
        mask = target_mask(d.frames)
        gaps = wall_gaps(mask)
        visible = np.arange(len(d.frames)) / cfg.fps > info["appear_time"] + 0.25
        step = np.abs(np.diff(info["positions"], axis=0)).max(0)  # px per frame (x, y)
        for t, wall in isolated_bounces(info, before=0.0):
            k = round(t * cfg.fps)
            gap = gaps[wall][k]
            axis = 0 if wall in ("left", "right") else 1
            # 4 px: chroma is subsampled 2x2, so the colour mask moves in 2 px steps, and the
            # thin tip of a triangle loses its colour
            assert gap <= 4 + 0.5 * step[axis], (info["path"], t, wall, gap)
            # closer to that wall than 4 frames before and after
            around = [j for j in (k - 4, k + 4) if 0 <= j < len(mask) and visible[j]]
            assert (gap <= gaps[wall][around]).all(), (info["path"], t, wall, gap)
            checked += 1
        # flash: brighter on the 2 frames from each bounce than elsewhere (once visible)
        visible = np.arange(len(d.frames)) / cfg.fps > info["appear_time"] + 0.25
        flash = np.zeros(len(d.frames), bool)
        for t in info["bounce_times"]:
            flash[round(t * cfg.fps) : round(t * cfg.fps) + 2] = True
        bright = {k: d.frames[k][mask[k]].mean() for k in np.nonzero(visible)[0]}
        lit = [b for k, b in bright.items() if flash[k]]
        unlit = [b for k, b in bright.items() if not flash[k]]
        assert lit and unlit, info["path"]
        assert np.mean(lit) > np.mean(unlit) + 15, info["path"]
    assert checked >= 8


def test_decoded_object_follows_reported_positions(cfg, rendered):
    for info, d in rendered:
        mask = target_mask(d.frames)
        visible = np.arange(len(d.frames)) / cfg.fps > info["appear_time"] + 0.25
        for k in np.nonzero(visible)[0][::5]:
            ys, xs = np.nonzero(mask[k])
            centroid = np.array([xs.mean(), ys.mean()])
            # 3.5 px: a triangle's centroid sits 0.25 r below its bounding-box centre,
            # and its tip loses its colour in yuv420p
            assert np.abs(centroid - info["positions"][k]).max() < 3.5, (info["path"], k)


def test_motion_restarts_at_cuts_only_with_new_motion_at_cut():
    """new_motion_at_cut: the object moves smoothly within a shot and jumps at (some) cuts;
    without it the path is smooth throughout (one shot of motion per video)."""
    for new_motion, expect_jumps in ((True, True), (False, False)):
        cfg = DemoConfig(**{**SMALL, "new_motion_at_cut": new_motion, "appear_event": False,
                            "min_duration_s": 4.0, "max_duration_s": 4.0})
        _, info = render_video(cfg, 0)
        step = np.abs(np.diff(info["positions"], axis=0)).max(1)  # px per frame
        at_cut = (np.arange(1, len(step) + 1) % round(cfg.background_cut_s * cfg.fps)) == 0
        assert step[~at_cut].max() < 0.25 * cfg.width, step  # smooth within shots
        assert (step[at_cut].max() > step[~at_cut].max()) == expect_jumps, step[at_cut]


def test_bounce_times_are_wall_hits():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lo, hi = sorted(rng.uniform(0, 100, 2))
        p0, v = rng.uniform(lo, hi), rng.uniform(-200, 200)
        times, at_hi = bounce_times(p0, v, lo, hi, 5.0)
        assert abs(len(times) - abs(v) * 5.0 / (hi - lo)) <= 1
        np.testing.assert_allclose(reflect(p0, v, lo, hi, times), np.where(at_hi, hi, lo),
                                   atol=1e-6)
        t = np.linspace(0, 5, 2001)
        x = reflect(p0, v, lo, hi, t)
        assert x.min() >= lo - 1e-9 and x.max() <= hi + 1e-9


# ------------------------------------------------------------------------- class cues


def hue_deg(rgb) -> float:
    return 360.0 * colorsys.rgb_to_hsv(*rgb)[0]


def test_classes_differ_in_colour(all_classes):
    """The object's hue identifies its class (blending with the grey background and the
    codec desaturate small objects, but keep their hue)."""
    _, videos = all_classes
    template_hues = np.array([hue_deg(t.colour) for t in CLASS_TEMPLATES])
    for i, (template, info, d) in enumerate(videos):
        mask = target_mask(d.frames)
        colour = np.median(d.frames[mask], axis=0) / 255  # median: ignores blended edges
        assert colorsys.rgb_to_hsv(*colour)[1] > 0.4, template.name
        diff = np.abs((template_hues - hue_deg(colour) + 180) % 360 - 180)
        assert diff.argmin() == i and diff[i] < 15, (template.name, colour)


def test_burst_pitch_and_rhythm_match_class(all_classes):
    cfg, videos = all_classes
    sr = cfg.sample_rate
    for template, info, d in videos:
        bounces = [t for t, _ in isolated_bounces(info, before=0.2) if
                   all(not (t < b <= t + 0.15) for b in info["bounce_times"])]
        assert bounces, template.name
        t = bounces[0]
        s = round(t * sr)
        burst = d.audio.mean(0)[s + sr // 200 : s + round(0.06 * sr)]
        spec = np.abs(np.fft.rfft(burst * np.hanning(len(burst)), n=sr))  # 1 Hz bins
        spec[:80] = 0
        peak = float(np.argmax(spec))
        tol = 0.25 if template.waveform == "noise" else 0.06
        assert abs(peak / template.pitch_hz - 1) < tol, (template.name, peak)
        # rhythm: a double burst has a second onset 100 ms after the first
        mono = d.audio.mean(0)
        early = rms(mono[s + round(0.07 * sr) : s + round(0.095 * sr)])
        late = rms(mono[s + round(0.10 * sr) : s + round(0.125 * sr)])
        assert (late > 2 * early) if template.pulses == 2 else (late < early), template.name


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, value", [
    ("width", 65), ("height", 47), ("n_classes", 99), ("n_classes", 0), ("n_videos", 2),
    ("max_duration_s", 2.5), ("test_fraction", 1.0), ("sample_rate", 12345), ("crf", 70),
    ("distractors", -1), ("fps", 0), ("noise_level", -0.1), ("appear_event", "yes"),
])
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DemoConfig(**{**SMALL, field: value})


def test_from_dict_rejects_unknown_keys():
    assert DemoConfig.from_dict({"n_videos": 8, "seed": 2}) == DemoConfig(n_videos=8, seed=2)
    assert DemoConfig.from_dict(None) == DemoConfig()
    with pytest.raises(ValueError, match="n_vidoes"):
        DemoConfig.from_dict({"n_vidoes": 3})
