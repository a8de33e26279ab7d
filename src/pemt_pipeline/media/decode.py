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

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from pemt_pipeline.media.audio import TimelineBuffer, WindowCollector, downmix, resampling_period
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
    """What the decoding passes over a file produced."""

    frames: np.ndarray | None  # [N, H, W, 3] uint8 for the N target instants (None if none asked)
    frame_source_times: np.ndarray | None  # [N] timestamp of the frame used for each target
    n_video_frames: int = 0  # frames decoded (only those near the clips when decoding seeks)
    video_duration: float = 0.0  # from the first frame to the end of the last decoded one
    rotation: int = 0  # degrees counter-clockwise applied to make frames upright
    audio: WindowCollector | None = None  # the audio windows asked for, at the source rate
    audio_rate: int = 0
    audio_error: str | None = None  # FFmpeg error that made the audio stream unusable, if any
    decode_error: str | None = None  # FFmpeg error that ended video decoding early, if any
    held_targets: int = 0  # targets after the end of the last frame (they repeat it)
    seeks: int = 0  # how many times decoding jumped ahead instead of decoding through
    timestamp_gap: tuple[float, float] | None = None  # (from, to) seconds of a jump that ended the video
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Extent:
    """Where a video stream's packets lie, measured without decoding (seconds from the first frame)."""

    duration: float  # end of the last packet before any gap
    gap: tuple[float, float] | None  # a jump of the timestamps past `max_gap_s`: (last end, next start)
    scanned_from: float  # where the scan started (0: the whole stream was read)


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
        self.last_pts = pts if pts is not None else self.last_pts
        self.last_dts = dts if dts is not None else self.last_dts
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
        self.last = None  # the last frame before a seek (prev restarts after each)
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

    def close_segment(self, until: float) -> None:
        """Before a seek: targets up to `until` take the last frame decoded, and the next stretch
        starts with no previous frame (its targets before its first frame take that frame)."""
        self._emit_prev_until(until + 2 * TIME_EPSILON)
        self.last, self.prev = self.prev or self.last, None

    def finish(self, end_time: float) -> int:
        """Flush the last frame; returns how many targets lie past `end_time` (held frames)."""
        if self.targets is None:
            return 0
        held = int(np.sum(self.targets[self.next:] - TIME_EPSILON >= end_time))
        self.prev = self.prev or self.last  # the stretch after the last seek gave no frame
        self._emit_prev_until(np.inf)
        return held


def frame_interval(stream) -> float:
    """A frame's duration where the file gives none: from the declared frame rates, at most 1 s (a
    timestamp jump makes the average rate meaningless)."""
    rates = [float(r) for r in (stream.average_rate, stream.guessed_rate) if r]
    return 1.0 / max([1.0, *rates])


def _stamp_seconds(packet_or_frame, time_base: float) -> float | None:
    stamp = packet_or_frame.pts if packet_or_frame.pts is not None else packet_or_frame.dts
    return None if stamp is None else stamp * time_base


def set_decoder_threads(container: av.container.InputContainer, video_index: int, threads: int):
    """Threads of the video decoder (0: FFmpeg picks; 1: none), set before the decoder opens."""
    stream = container.streams[video_index]
    if not stream.codec_context.is_open:
        stream.codec_context.thread_count = threads
        stream.thread_type = "AUTO"
    return stream


def first_frame_time(container: av.container.InputContainer, video_index: int, packets: int = 16) -> float | None:
    """Presentation time (seconds) of the first video frame, from the first packets without decoding:
    the smallest time stamp among them (decode order holds the first frame among its first packets;
    packets the demuxer marks to discard, e.g. before an edit list's start, are not shown). None if
    the stream has no stamped packet."""
    stream = container.streams[video_index]
    time_base = float(stream.time_base)
    times: list[float] = []
    try:
        container.seek(0, stream=stream, backward=True)
        for packet in container.demux(stream):
            t = _stamp_seconds(packet, time_base)
            if packet.size and not packet.is_discard and t is not None:
                times.append(t)
                if len(times) >= packets:
                    break
    except av.FFmpegError:
        pass
    return min(times) if times else None


def scan_extent(container: av.container.InputContainer, video_index: int, t_zero: float, from_s: float,
                max_gap_s: float, fallback_dt: float) -> Extent:
    """Read the video packets (no decoding) from `from_s` seconds after the first frame to the end, or
    to the first jump of more than `max_gap_s` between a packet and all before it.

    This measures a video's real length cheaply: from near the declared end it reads a few seconds;
    only files whose end does not match (no duration, broken timestamps) are read whole."""
    stream = container.streams[video_index]
    time_base = float(stream.time_base)
    if from_s > 0:
        container.seek(int((t_zero + from_s) / time_base), stream=stream, backward=True)
    else:
        container.seek(0, stream=stream, backward=True)
    end = latest = None
    try:
        for packet in container.demux(stream):
            t = _stamp_seconds(packet, time_base)
            if t is None or packet.size == 0:
                continue
            t -= t_zero
            if latest is not None and t > latest + max_gap_s:
                return Extent(end, (end, t), from_s)
            # A packet's duration is the distance to the next one in some containers (MP4): a jump
            # would make it hours long, so a duration past the gap limit counts as one frame.
            duration = packet.duration * time_base if packet.duration else fallback_dt
            stop = t + (duration if duration <= max_gap_s else fallback_dt)
            end = stop if end is None else max(end, stop)
            latest = t if latest is None else max(latest, t)
    except av.FFmpegError:
        pass
    return Extent(end or 0.0, None, from_s)


def _segments(targets: np.ndarray | None, windows: np.ndarray | None, seek_gap_s: float) -> list[list[float]]:
    """[start, end] stretches of the timeline to decode: the targets and audio windows, merged where
    less than `seek_gap_s` apart (decoding through is cheaper than seeking there)."""
    spans = []
    if targets is not None:
        spans += [(t, t) for t in targets]
    if windows is not None:
        spans += [(max(a, 0.0), b) for a, b in windows]
    merged: list[list[float]] = [[0.0, 0.0]]  # time zero is always read: the first frame defines it
    for a, b in sorted(spans):
        if a - merged[-1][1] <= seek_gap_s:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


class _VideoTaker:
    """Decodes video packets into a `_FrameSelector` and the video fields of a `Decoded`."""

    def __init__(self, stream, selector: _FrameSelector, result: Decoded, audio: _AudioTaker, end_s: float,
                 max_gap_s: float, max_pixels: int):
        self.stream, self.selector, self.result, self.audio = stream, selector, result, audio
        self.end_s, self.max_gap_s, self.max_pixels = end_s, max_gap_s, max_pixels
        self.time_base = float(stream.time_base)
        self.fallback_dt = frame_interval(stream)
        self.clock = _BestEffortClock(self.time_base, self.fallback_dt)
        self.t_zero: float | None = None  # time of the first frame: zero of the timeline
        self.last_t: float | None = None  # the previous frame's time (restarts after a seek)
        self.final_t, self.final_frame = None, None  # the latest frame decoded
        self.over = False  # past the end (end_s) or past a timestamp jump: no later frame is used

    def take(self, packet: av.Packet, seg_end: float) -> bool:
        """Decode one packet; True once this stretch needs no more frames."""
        result = self.result
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            result.decode_error = str(exc)
            return True
        for frame in frames:
            t = self.clock(frame)
            if self.t_zero is None:
                self.t_zero = t
                self.audio.flush_pending(t)
            if self.last_t is not None and t <= self.last_t:
                result.warnings.append(f"non-increasing video timestamp at {t:.3f}s")
                continue
            rel = t - self.t_zero
            if self.last_t is not None and t - self.last_t > self.max_gap_s:
                result.timestamp_gap = (self.last_t - self.t_zero, rel)
                self.over = True
                return True
            if rel > self.end_s + 1.0:
                self.over = True
                return True
            if self.max_pixels and frame.width * frame.height > self.max_pixels:
                raise MediaError("too_many_pixels", f"a frame of {frame.width}x{frame.height} at {rel:.2f} s is "
                                 f"over the limit of {self.max_pixels} pixels (ingestion.max_pixels)")
            self.selector.push(rel, frame)
            self.last_t = t
            if self.final_t is None or t > self.final_t:
                self.final_t, self.final_frame = t, frame
            result.n_video_frames += 1
            if rel > seg_end:
                return True
        return False

    def finish(self, keep_frames: bool) -> None:
        """Give the last frame to the targets left and fill the video fields of the result."""
        result, last = self.result, self.final_frame
        duration = float(last.duration * last.time_base) if last.duration and last.time_base else self.fallback_dt
        duration = duration if duration <= self.max_gap_s else self.fallback_dt
        result.video_duration = self.final_t - self.t_zero + duration
        result.held_targets = self.selector.finish(result.video_duration)
        result.rotation = self.selector.rotation
        if keep_frames:
            result.frames = np.stack(self.selector.out) if self.selector.out else None
            result.frame_source_times = np.asarray(self.selector.source_times)


class _AudioTaker:
    """Decodes audio packets into the `WindowCollector` of a `Decoded` (see `decode`)."""

    def __init__(self, index: int | None, windows: np.ndarray | None, resample_to: int, result: Decoded):
        self.index, self.windows, self.resample_to, self.result = index, windows, resample_to, result
        self.cursor = 0.0
        self.pending: list[tuple[float, np.ndarray]] = []  # decoded before time zero was known

    def flush_pending(self, t_zero: float) -> None:
        for t, chunk in self.pending:
            self.result.audio.write(t - t_zero, chunk)
        self.pending.clear()

    def take(self, packet: av.Packet, t_zero: float | None, seg_end: float) -> bool:
        """Decode one packet; True once this stretch needs no more audio (or the stream failed)."""
        result = self.result
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            result.audio_error = f"audio stream {self.index} cannot be decoded: {exc}"
            return True
        for frame in frames:
            if frame.samples == 0:
                continue
            if result.audio is None:
                result.audio_rate = frame.sample_rate
                period = resampling_period(frame.sample_rate, self.resample_to) if self.resample_to else 1
                result.audio = WindowCollector(self.windows, frame.sample_rate, period)
            t = frame.time if frame.time is not None else self.cursor
            self.cursor = t + frame.samples / frame.sample_rate
            if t_zero is None:  # the video decoder has not given its first frame yet
                if len(self.pending) < 1000:
                    self.pending.append((t, audio_frame_mono(frame)))
                continue
            rel = t - t_zero
            if frame.sample_rate != result.audio_rate:
                result.warnings.append(f"audio rate changes to {frame.sample_rate} Hz at {rel:.2f} s")
                return True
            result.audio.write(rel, audio_frame_mono(frame))
            if result.audio.past(rel) or rel > seg_end + 1.0:
                return True
        return False


def decode(
    source: str | os.PathLike | av.container.InputContainer,
    video_index: int,
    audio_index: int | None,
    targets: np.ndarray | None,
    short_side: int,
    threads: int = 1,
    *,
    audio_windows: np.ndarray | None = None,
    seek_gap_s: float = math.inf,
    end_s: float = math.inf,
    max_gap_s: float = math.inf,
    max_pixels: int = 0,
    resample_to: int = 0,
) -> Decoded:
    """Decode the chosen streams where the clips are; see the module docstring for the rules.

    `source`: a path, or an open container at its start (decoding starts where it stands).
    `targets`: sorted instants (seconds from the first frame) whose frames to keep, or None.
    `audio_windows`: [K, 2] (start, end) seconds of audio to keep (a `WindowCollector`), or None.
    `seek_gap_s`: where the next stretch to decode lies further ahead than this, seek to it rather
    than decode through. `end_s`: frames past this instant (plus one second) are treated as past the
    end. `max_gap_s`: a jump of the video timestamps larger than this ends the video (broken
    timestamps, not hours of video). `max_pixels`: a frame larger than this raises MediaError
    (`too_many_pixels`; 0 = no limit). `resample_to`: the rate the audio windows will be resampled
    to (their starts are aligned to that resampler's period; see `audio.resampling_period`).
    Memory is bounded by the frames and windows asked for, whatever the length of the file.
    """
    if not isinstance(source, av.container.InputContainer):
        with open_container(source) as container:
            return decode(container, video_index, audio_index, targets, short_side, threads,
                          audio_windows=audio_windows, seek_gap_s=seek_gap_s, end_s=end_s, max_gap_s=max_gap_s,
                          max_pixels=max_pixels, resample_to=resample_to)
    container = source
    result = Decoded(frames=None, frame_source_times=None)
    vstream = set_decoder_threads(container, video_index, threads)
    if not vstream.time_base:
        raise MediaError("decode_error", f"video stream {video_index} has no time base")
    astream = container.streams[audio_index] if audio_index is not None and audio_windows is not None else None
    audio = _AudioTaker(audio_index, audio_windows, resample_to, result)
    video = _VideoTaker(vstream, _FrameSelector(targets, short_side), result, audio, end_s, max_gap_s, max_pixels)
    segments = _segments(targets, audio_windows if astream is not None else None, seek_gap_s)
    for n, (seg_start, seg_end) in enumerate(segments):
        if n > 0:
            if video.t_zero is None or (video.over and astream is None):
                break
            video.selector.close_segment(segments[n - 1][1])
            container.seek(int((video.t_zero + seg_start - 1.0) / video.time_base), stream=vstream, backward=True)
            video.last_t = None
            result.seeks += 1
        video_done = video.over
        audio_done = astream is None or result.audio_error is not None or len(audio_windows) == 0
        streams = ([] if video_done else [vstream]) + ([] if audio_done else [astream])
        audio_far = False  # the audio lies far from its video in the file: read it on its own below
        for packet in container.demux(streams) if streams else ():
            if packet.stream.index == video_index:
                if not video_done:
                    video_done = video.take(packet, seg_end)
                elif packet.pts is not None and packet.pts * video.time_base - video.t_zero > seg_end + 5:
                    audio_far = True
                    break
            elif not audio_done:
                audio_done = audio.take(packet, video.t_zero, seg_end)
            if video_done and audio_done:
                break
        if audio_far and not audio_done:
            try:
                container.seek(max(0, int((video.t_zero + seg_start - 1.0) * av.time_base)), backward=True)
            except av.FFmpegError as exc:
                result.warnings.append(f"audio at {seg_start:.2f} s could not be reached: {exc}")
                continue
            for packet in container.demux(astream):
                if audio.take(packet, video.t_zero, seg_end):
                    break
    if video.t_zero is not None:
        video.finish(targets is not None)
    return result


@dataclass
class DecodedAudio:
    samples: np.ndarray  # mono float32 at `rate`, time 0 = first decoded sample
    rate: int
    codec: str
    channels: int
    declared_duration: float | None
    decode_error: str | None


def decode_audio(path: str | Path) -> DecodedAudio:
    """Decode the best audio stream of a file to mono (raises MediaError with a reason code).

    `media.decode.decode` is the ingestion's one-pass decoder, built around a video stream; this is
    its audio path alone (same stream choice, same per-frame downmix, same timeline buffer) for
    files that may have no video."""
    with open_container(path) as container:
        info = probe(container)
        stream_info = choose_audio(info.audio)
        if stream_info is None:
            raise MediaError("no_audio_stream", "no audio stream")
        stream = container.streams[stream_info.index]
        buffer: TimelineBuffer | None = None
        t_zero, cursor, error = None, 0.0, None
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if frame.samples == 0:
                        continue
                    t = frame.time if frame.time is not None else cursor
                    if buffer is None:
                        buffer, t_zero = TimelineBuffer(frame.sample_rate), t
                    if frame.sample_rate != buffer.sample_rate:
                        raise MediaError("decode_error", f"sample rate changes from {buffer.sample_rate} "
                                         f"to {frame.sample_rate} Hz at {t:.3f} s")
                    buffer.write(t - t_zero, audio_frame_mono(frame))
                    cursor = t + frame.samples / frame.sample_rate
        except av.FFmpegError as exc:
            error = str(exc)
    if buffer is None or buffer.end == 0:
        raise MediaError("decode_error", error or "no audio sample could be decoded")
    return DecodedAudio(buffer.samples, buffer.sample_rate, stream_info.codec, stream_info.channels,
                        stream_info.declared_duration, error)
