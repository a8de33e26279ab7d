"""Probing and decoding media files with PyAV (FFmpeg).

Stream choice (for files with several streams):
- video: attached pictures (cover art) are ignored; the stream with the most pixels (width x height)
  wins; ties go to the stream flagged *default*, then to the lowest stream index;
- audio: the highest sample rate wins, then the most channels; ties go to the *default* stream, then
  to the lowest index.

Time zero is the first decoded video frame. One demux pass reads both chosen streams; of the video
it converts (resize + RGB) only the frames that some clip samples: for each target instant t, the
frame shown at t, i.e. the last frame whose timestamp is <= t. This resamples any frame rate,
variable frame rates included, by timestamps. Rotation metadata (display matrix) is applied, so
frames are stored upright, and the short side is resized to `short_side` after rotation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from pemt_pipeline.media.audio import TimelineBuffer, downmix
from pemt_pipeline.media.clips import TIME_EPSILON

_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9.223372036854775808e18}


class MediaError(Exception):
    """A media file cannot be used; `code` is the reject reason recorded in the rejects table."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class StreamInfo:
    index: int
    kind: str  # "video" | "audio"
    codec: str
    default: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0  # average frame rate from the container (0 if unknown)
    sample_rate: int = 0
    channels: int = 0
    declared_duration: float | None = None  # seconds, from the container, if it says


@dataclass(frozen=True)
class Probe:
    format_name: str
    video: list[StreamInfo]
    audio: list[StreamInfo]


def _flag_set(flags, name: str) -> bool:
    return bool(flags & getattr(av.stream.Disposition, name)) if flags is not None else False


def _declared_duration(stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    container_duration = stream.container.duration
    return container_duration / av.time_base if container_duration else None


def check_file(path: str | os.PathLike) -> None:
    """Raise MediaError unless `path` is a readable, non-empty file."""
    path = Path(path)
    if path.is_dir():
        raise MediaError("is_directory", "a folder named like a media file")
    if not path.exists():
        raise MediaError("missing_file", "listed in the labels but not on disk")
    if not os.access(path, os.R_OK):
        raise MediaError("unreadable", "permission denied")
    if path.stat().st_size == 0:
        raise MediaError("empty_file", "zero bytes")


def open_container(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a file for reading, turning every failure into a MediaError with a reason code."""
    check_file(path)
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise MediaError("not_media", f"FFmpeg cannot open it: {exc}") from None
    except OSError as exc:
        raise MediaError("unreadable", str(exc)) from None


def probe(container: av.container.InputContainer) -> Probe:
    """Describe the video and audio streams of an open container."""
    video, audio = [], []
    for s in container.streams:
        if s.type not in ("video", "audio") or s.codec_context is None:
            continue
        default = _flag_set(s.disposition, "default")
        duration = _declared_duration(s)
        if s.type == "video":
            if _flag_set(s.disposition, "attached_pic"):
                continue
            rate = s.average_rate or s.guessed_rate
            video.append(
                StreamInfo(s.index, "video", s.codec_context.name, default, s.codec_context.width,
                           s.codec_context.height, float(rate) if rate else 0.0, declared_duration=duration)
            )
        else:
            audio.append(
                StreamInfo(s.index, "audio", s.codec_context.name, default, sample_rate=s.codec_context.sample_rate,
                           channels=s.codec_context.channels, declared_duration=duration)
            )
    return Probe(container.format.name, video, audio)


def choose_video(streams: list[StreamInfo]) -> StreamInfo | None:
    return min(streams, key=lambda s: (-s.width * s.height, not s.default, s.index), default=None)


def choose_audio(streams: list[StreamInfo]) -> StreamInfo | None:
    return min(streams, key=lambda s: (-s.sample_rate, -s.channels, not s.default, s.index), default=None)


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side`, aspect ratio kept."""
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def audio_frame_mono(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame downmixed to mono float32 (fast path for planar float, what most decoders give)."""
    if frame.format.name == "fltp":
        n, planes = frame.samples, frame.planes
        mono = np.frombuffer(planes[0], np.float32, n).copy()
        for plane in planes[1:]:
            mono += np.frombuffer(plane, np.float32, n)
        return mono / len(planes) if len(planes) > 1 else mono
    return downmix(audio_frame_planes(frame))


def audio_frame_planes(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame as float32 [channels, samples] in [-1, 1], whatever its sample format."""
    fmt = frame.format
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if not fmt.is_planar:
        data = data.reshape(-1, channels).T
    base = fmt.name.rstrip("p")
    if base in _INT_SCALE:
        data = data.astype(np.float32)
        if base == "u8":
            data -= 128.0
        data /= _INT_SCALE[base]
    return data.astype(np.float32, copy=False)


@dataclass
class Decoded:
    """What one pass over a file produced."""

    frames: np.ndarray | None  # [N, H, W, 3] uint8 for the N target instants (None if none asked)
    frame_source_times: np.ndarray | None  # [N] timestamp of the frame used for each target
    n_video_frames: int = 0
    video_duration: float = 0.0  # from the first frame to the end of the last one
    rotation: int = 0  # degrees counter-clockwise applied to make frames upright
    audio: np.ndarray | None = None  # mono float32 at the source rate, time 0 = first video frame
    audio_rate: int = 0
    decode_error: str | None = None  # FFmpeg error that ended decoding early, if any
    held_targets: int = 0  # targets after the end of the last frame (they repeat it)
    warnings: list[str] = field(default_factory=list)


class _BestEffortClock:
    """A frame's presentation time, as FFmpeg's `guess_correct_pts` picks it.

    Some files (AVI with packed B-frames) carry presentation timestamps out of order while the
    decoding timestamps are monotonic: whichever of the two has been faulty (non-increasing) less
    often is used.
    """

    def __init__(self, time_base: float | None, fallback_dt: float):
        self.time_base = time_base
        self.fallback_dt = fallback_dt
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = None
        self.last_time: float | None = None

    def __call__(self, frame: av.VideoFrame) -> float:
        pts, dts = frame.pts, frame.dts
        if pts is not None and self.last_pts is not None and pts <= self.last_pts:
            self.faulty_pts += 1
        if dts is not None and self.last_dts is not None and dts <= self.last_dts:
            self.faulty_dts += 1
        self.last_pts, self.last_dts = pts if pts is not None else self.last_pts, dts if dts is not None else self.last_dts
        stamp = pts if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None) else dts
        if stamp is None or self.time_base is None:
            time = (self.last_time or 0.0) + self.fallback_dt
        else:
            time = stamp * self.time_base
        self.last_time = time
        return time


class _FrameSelector:
    """Streams decoded frames past sorted target instants, converting only the frames used."""

    def __init__(self, targets: np.ndarray | None, short_side: int):
        self.targets = None if targets is None else targets + TIME_EPSILON
        self.short_side = short_side
        self.next = 0
        self.out: list[np.ndarray] = []
        self.source_times: list[float] = []
        self.prev = None  # (time, frame)
        self.rotation = 0
        self.size = None
        self.reformatter = av.video.reformatter.VideoReformatter()  # keeps its scaler between frames

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            self.rotation = int(round((frame.rotation or 0) / 90.0)) % 4 * 90
            w, h = (frame.height, frame.width) if self.rotation in (90, 270) else (frame.width, frame.height)
            dw, dh = resized_size(w, h, self.short_side)
            self.size = (dh, dw) if self.rotation in (90, 270) else (dw, dh)
        img = self.reformatter.reformat(frame, self.size[0], self.size[1], "rgb24", interpolation="AREA").to_ndarray()
        return np.ascontiguousarray(np.rot90(img, self.rotation // 90)) if self.rotation else img

    def _emit_prev_until(self, t_next: float) -> None:
        """Give the previous frame to every target before `t_next`."""
        if self.targets is None or self.prev is None:
            return
        converted = None
        while self.next < len(self.targets) and self.targets[self.next] < t_next:
            converted = self._convert(self.prev[1]) if converted is None else converted
            self.out.append(converted)
            self.source_times.append(self.prev[0])
            self.next += 1

    def push(self, t: float, frame: av.VideoFrame) -> None:
        if self.prev is None and self.targets is not None:
            # Targets before the first frame take the first frame.
            while self.next < len(self.targets) and self.targets[self.next] < t:
                self.out.append(self._convert(frame))
                self.source_times.append(t)
                self.next += 1
        self._emit_prev_until(t)
        self.prev = (t, frame)

    def finish(self, end_time: float) -> int:
        """Flush the last frame; returns how many targets lie past `end_time` (held frames)."""
        if self.targets is None:
            return 0
        held = int(np.sum(self.targets[self.next:] - TIME_EPSILON >= end_time))
        self._emit_prev_until(np.inf)
        return held


def decode(
    source: str | os.PathLike | av.container.InputContainer,
    video_index: int,
    audio_index: int | None,
    targets: np.ndarray | None,
    short_side: int,
    threads: int = 1,
) -> Decoded:
    """One demux pass over the chosen streams; see the module docstring for the rules.

    `source`: a path, or a container just opened (so a probed file is not opened twice).
    `targets`: sorted instants (seconds from the first frame) whose frames to keep, or None to only
    measure the video (timestamps, duration, audio).
    """
    if not isinstance(source, av.container.InputContainer):
        with open_container(source) as container:
            return decode(container, video_index, audio_index, targets, short_side, threads)
    container = source
    selector = _FrameSelector(targets, short_side)
    audio_chunks: list[tuple[float, np.ndarray]] = []
    audio_rate = 0
    result = Decoded(frames=None, frame_source_times=None)
    t_zero = last_t = last_frame = None
    vstream = container.streams[video_index]
    vstream.codec_context.thread_count = threads  # 0: FFmpeg picks; 1: no decoder threads
    vstream.thread_type = "AUTO"
    fallback_dt = 1.0 / float(vstream.average_rate) if vstream.average_rate else 1.0 / 30.0
    clock = _BestEffortClock(float(vstream.time_base) if vstream.time_base else None, fallback_dt)
    streams = [vstream] + ([container.streams[audio_index]] if audio_index is not None else [])
    audio_cursor = 0.0
    try:
        for packet in container.demux(streams):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    t = clock(frame)
                    if t_zero is None:
                        t_zero = t
                    if last_t is not None and t <= last_t:
                        result.warnings.append(f"non-increasing video timestamp at {t:.3f}s")
                        continue
                    selector.push(t - t_zero, frame)
                    last_t, last_frame = t, frame
                    result.n_video_frames += 1
                else:
                    audio_rate = frame.sample_rate
                    t = frame.time if frame.time is not None else audio_cursor
                    audio_chunks.append((t, audio_frame_mono(frame)))
                    audio_cursor = t + frame.samples / frame.sample_rate
    except av.FFmpegError as exc:
        result.decode_error = str(exc)
    if t_zero is None:
        return result
    last_duration = (float(last_frame.duration * last_frame.time_base)
                     if last_frame.duration and last_frame.time_base else fallback_dt)
    result.video_duration = last_t - t_zero + last_duration
    result.held_targets = selector.finish(result.video_duration)
    result.rotation = selector.rotation
    if targets is not None:
        result.frames = np.stack(selector.out) if selector.out else None
        result.frame_source_times = np.asarray(selector.source_times)
    if audio_chunks:
        buffer = TimelineBuffer(audio_rate)
        for t, samples in audio_chunks:
            buffer.write(t - t_zero, samples)
        result.audio, result.audio_rate = buffer.samples, audio_rate
    return result
