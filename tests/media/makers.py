"""Small media files made inside tests with PyAV (frame i is filled with gray level `level(i)`)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def level(i: int) -> int:
    return 16 + (24 * i) % 224


def make_video(
    path: Path,
    pts_ms: list[int] | None = None,
    size: tuple[int, int] = (64, 48),
    fps: int = 25,
    seconds: float = 2.0,
    rotation: int = 0,
    audio: tuple[int, int] | None = (16000, 2),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pattern: str = "level",
) -> Path:
    """Write a video whose frame i is uniformly `level(i)` (or, with pattern="corner", black with a
    white top-left quadrant). `pts_ms` gives variable frame timestamps in milliseconds."""
    if pts_ms is None:
        pts_ms = [round(1000 * i / fps) for i in range(round(seconds * fps))]
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            vs.options = {"qp": "0", "preset": "ultrafast"}
        if rotation:
            vs.set_display_rotation(rotation)
        aus = None
        if audio:
            rate, channels = audio
            aus = out.add_stream("aac", rate=rate, layout="stereo" if channels == 2 else "mono")
        for i, pts in enumerate(pts_ms):
            img = np.full((h, w, 3), level(i), dtype=np.uint8)
            if pattern == "corner":
                img[:] = 0
                img[: h // 2, : w // 2] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aus is not None:
            rate, channels = audio
            duration = (pts_ms[-1] + 1000 / fps) / 1000
            t = np.arange(int(duration * rate)) / rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = np.tile(tone[start:start + 1024], (channels, 1))
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo" if channels == 2 else "mono")
                af.sample_rate, af.pts, af.time_base = rate, start, Fraction(1, rate)
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))
    return path


def frame_index(img: np.ndarray, n_frames: int) -> int:
    """Which frame a decoded image shows (nearest gray level)."""
    levels = np.array([level(i) for i in range(n_frames)])
    return int(np.abs(levels - img.mean()).argmin())


def make_av(
    path: Path,
    video_pts_ms: list[int],
    audio_seconds: float = 0.0,
    audio_rate: int = 16000,
    audio_channels: int = 1,
    audio_codec: str = "aac",
    size: tuple[int, int] = (32, 24),
    audio_packets: str = "encoded",
) -> Path:
    """A video whose frames have the given timestamps (frame i gray `level(i)`), with an audio track
    of its own length, rate, channel count and codec (pcm_s16le for any rate, in Matroska).
    `audio_packets="garbage"` muxes random bytes as the audio packets (a stream FFmpeg cannot decode)."""
    w, h = size
    layout = {1: "mono", 2: "stereo"}.get(audio_channels, f"{audio_channels}c")
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        vs.options = {"preset": "ultrafast", "g": "50"}
        aus = out.add_stream(audio_codec, rate=audio_rate, layout=layout) if audio_seconds else None
        if aus is not None and audio_codec.startswith("pcm_"):
            aus.format = "s16"
        for i, pts in enumerate(video_pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), level(i), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aus is not None:
            n = int(audio_seconds * audio_rate)
            rng = np.random.default_rng(0)
            for start in range(0, n, 1024):
                t = np.arange(start, min(n, start + 1024)) / audio_rate
                tone = (0.3 * np.sin(2 * np.pi * min(440.0, audio_rate / 8) * t)).astype(np.float32)
                if audio_packets == "garbage":
                    packet = av.Packet(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
                    packet.stream, packet.pts, packet.dts = aus, start, start
                    packet.time_base = Fraction(1, audio_rate)
                    out.mux(packet)
                    continue
                fmt = "s16" if audio_codec.startswith("pcm_") else "fltp"
                chunk = np.tile(tone, (audio_channels, 1))
                if fmt == "s16":
                    chunk = (chunk.T.reshape(1, -1) * 32767).astype(np.int16)
                af = av.AudioFrame.from_ndarray(chunk, format=fmt, layout=layout)
                af.sample_rate, af.pts, af.time_base = audio_rate, start, Fraction(1, audio_rate)
                out.mux(aus.encode(af))
            if audio_packets != "garbage":
                out.mux(aus.encode(None))
    return path
