"""How a shard stores its clips' frames: `raw` uint8 pixels, `h264` (one short H.264 stream per
clip, libx264) or `jpeg` (one JPEG image per frame, libjpeg-turbo through torchvision).

An encoded clip is F packets (one per frame, in display order): a shard concatenates every clip's
packets into one byte array and keeps their offsets, so one clip is read and decoded alone.
H.264 streams have one keyframe per clip (the GOP is the clip), no B-frames, 4:4:4 chroma (4:2:0
alone caps the paper's detailed 160 px frames at 40-41 dB PSNR) and x264's `psnr` tuning (its
psycho-visual tools trade PSNR for perceived detail): at the source's size, 36.6 dB instead of
x264's defaults' 35.2 dB on the Big Buck Bunny clip. Odd frame sizes are
padded by repeating the last row / column and cropped back on decoding.
"""

from __future__ import annotations

import fractions
import json
import threading
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torchvision import io as tvio

CODECS = ("h264", "jpeg", "raw")
H264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
H264_PIXEL_FORMAT = "yuv444p"
# Colour converters, one per thread and direction: each keeps its swscale context between frames of
# one size (a frame's own `to_ndarray(format=...)` builds a new one each time, which costs more than
# decoding a small frame). Always single-threaded (`threads=1`): swscale's own threads would not
# survive a fork, and a forked worker (ingestion, DataLoader) converting afterwards would hang.
_converters = threading.local()


def _converter(direction: str) -> VideoReformatter:
    if not hasattr(_converters, direction):
        setattr(_converters, direction, VideoReformatter())
    return getattr(_converters, direction)


@dataclass(frozen=True)
class ClipCodec:
    """The frame codec of a shard and its settings (only those of `name` matter).

    name: h264 | jpeg | raw. h264_crf: x264 constant rate factor, 0 (lossless) - 51, lower = better
    and larger. h264_preset: x264 speed preset (slower = smaller at the same quality). jpeg_quality:
    1-100, higher = better and larger.
    """

    name: str = "h264"
    h264_crf: int = 17
    h264_preset: str = "veryfast"
    jpeg_quality: int = 90

    def settings(self) -> dict[str, Any]:
        """What decides the stored bytes: the name and the settings of that codec only."""
        if self.name == "h264":
            return {"name": "h264", "crf": self.h264_crf, "preset": self.h264_preset, "pixel_format": H264_PIXEL_FORMAT}
        if self.name == "jpeg":
            return {"name": "jpeg", "quality": self.jpeg_quality}
        return {"name": "raw"}

    def encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [T, F, H, W, 3] -> (data uint8 [N], offsets int64 [T * F + 1]): frame f of clip t is
        data[offsets[t * F + f]:offsets[t * F + f + 1]]."""
        if self.name == "raw":
            raise ValueError("raw frames are stored as they are, not encoded")
        encode_clip = _encode_h264 if self.name == "h264" else _encode_jpeg
        packets = [p for clip in frames for p in encode_clip(clip, self)]
        sizes = np.fromiter((len(p) for p in packets), dtype=np.int64, count=len(packets))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return np.frombuffer(b"".join(packets), dtype=np.uint8), offsets

    def metadata(self) -> str:
        return json.dumps(self.settings(), sort_keys=True)


def _even(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] padded to even H and W by repeating the last row / column."""
    _, H, W, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge") if H % 2 or W % 2 else frames


def _encode_h264(clip: np.ndarray, codec: ClipCodec) -> list[bytes]:
    """uint8 [F, H, W, 3] -> F H.264 packets (the first one a keyframe with the stream headers)."""
    clip = _even(clip)
    n_frames, H, W, _ = clip.shape
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = W, H, H264_PIXEL_FORMAT
    ctx.time_base = fractions.Fraction(1, 30)  # nominal: the shard holds the real timestamps
    # mbtree off: with it, the same clip encoded to different bytes from one call to the next (about
    # one process in three, its first call; as in synthetic.py), so shards differed between runs
    ctx.options = {"crf": str(codec.h264_crf), "preset": codec.h264_preset, "tune": "psnr", "bf": "0",
                   "g": str(n_frames), "threads": "1", "x264-params": "mbtree=0"}
    packets = []
    for i, frame in enumerate(clip):
        picture = _converter("to_yuv").reformat(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"),
                                   format=H264_PIXEL_FORMAT, threads=1)
        picture.pts = i
        packets.extend(bytes(p) for p in ctx.encode(picture))
    packets.extend(bytes(p) for p in ctx.encode(None))
    if len(packets) != n_frames:  # bf=0: one packet per frame, in order
        raise RuntimeError(f"libx264 gave {len(packets)} packets for {n_frames} frames")
    return packets


def _encode_jpeg(clip: np.ndarray, codec: ClipCodec) -> list[bytes]:
    images = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)  # [F, 3, H, W]
    return [bytes(x.numpy()) for x in tvio.encode_jpeg(list(images), quality=codec.jpeg_quality)]


def decode_clip(codec_name: str, data: np.ndarray, offsets: np.ndarray, height: int, width: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """One clip's F packets (data uint8, offsets [F + 1] into it) -> uint8 [F, H, W, 3], written into
    `out` when given."""
    n_frames = len(offsets) - 1
    out = np.empty((n_frames, height, width, 3), np.uint8) if out is None else out
    starts = offsets - offsets[0]
    if codec_name == "jpeg":
        out[:] = decode_jpeg_on(torch.device("cpu"), data, offsets).numpy()
        return out
    if codec_name != "h264":
        raise ValueError(f"unknown frame codec {codec_name!r} (known: {CODECS})")
    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = 1
    payload, frames = data.tobytes(), []
    for i in range(n_frames):
        frames += ctx.decode(av.Packet(payload[starts[i]:starts[i + 1]]))
    frames += ctx.decode(None)
    if len(frames) != n_frames:
        raise ValueError(f"an H.264 clip of {n_frames} packets decoded to {len(frames)} frames (corrupt shard?)")
    to_rgb = _converter("to_rgb")
    for k, frame in enumerate(frames):
        out[k] = to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()[:height, :width]
    return out


def decode_jpeg_on(device: torch.device, data: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """JPEG packets -> uint8 [n, H, W, 3] on `device`, decoded in one batch (nvjpeg on CUDA)."""
    starts = offsets - offsets[0]
    data = data if data.flags.writeable else data.copy()  # torch tensors need writable memory
    images = tvio.decode_jpeg([torch.from_numpy(data[starts[i]:starts[i + 1]]) for i in range(len(offsets) - 1)],
                              mode=tvio.ImageReadMode.RGB, device=device)
    return torch.stack(images).permute(0, 2, 3, 1)
