"""Audio: placing decoded chunks on the video's timeline, downmix, resampling and the log-mel front end.

The log-mel of a clip has exactly `mel_frames` frames with hop `round(span * sample_rate / mel_frames)`
samples, so the frames tile the clip's `span` seconds; frame j is centred on
`clip_start + j * hop / sample_rate` (the convention of `torch.stft(center=True)`), its window reaches
`n_fft // 2` samples either side. Audio outside the track (before its first or after its last sample)
is zeros. Values are `log(log_offset + mel power)` (METHOD.md: log(1e-6 + mel)).
"""

from __future__ import annotations

import fractions
import functools
import math
from dataclasses import dataclass

import av
import numpy as np
import torch
import torchaudio


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front end. `span` is the clip length in seconds (from the clip configuration)."""

    sample_rate: int
    n_mels: int
    mel_frames: int
    span: float
    n_fft: int
    win_length: int
    f_min: float = 0.0
    f_max: float | None = None
    log_offset: float = 1e-6

    @property
    def hop_length(self) -> int:
        return max(1, round(self.span * self.sample_rate / self.mel_frames))

    @property
    def window_samples(self) -> int:
        """Samples one clip's mel frames read: (mel_frames - 1) * hop + n_fft."""
        return (self.mel_frames - 1) * self.hop_length + self.n_fft


class TimelineBuffer:
    """Mono float32 samples at a fixed rate, written chunk by chunk at their timestamps.

    Chunks starting before time 0 are cut; gaps (missing packets) stay zero; overlaps keep the later
    chunk. Memory is one float32 per sample of the track (about 10 MB per minute at 44.1 kHz).
    """

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._data = np.zeros(0, dtype=np.float32)
        self.end = 0  # one past the last written sample

    def write(self, start_s: float, samples: np.ndarray) -> None:
        start = round(start_s * self.sample_rate)
        if start < 0:
            samples, start = samples[-start:], 0
        stop = start + samples.shape[0]
        if stop > self._data.shape[0]:
            grown = np.zeros(max(stop, 2 * self._data.shape[0]), dtype=np.float32)
            grown[: self.end] = self._data[: self.end]
            self._data = grown
        self._data[start:stop] = samples
        self.end = max(self.end, stop)

    @property
    def samples(self) -> np.ndarray:
        return self._data[: self.end]


def downmix(planes: np.ndarray) -> np.ndarray:
    """[channels, samples] -> [samples]: the mean of all channels (5.1's LFE included)."""
    return planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0].astype(np.float32)


# torchaudio's sinc kernel has (new / g) x (orig / g + 2 * width) taps for g = gcd(orig, new): small for
# the usual rates (44.1k -> 16k: 160 x 455), but 4001 Hz -> 16 kHz would need 16000 x 4015 (64M taps,
# about 0.5 GB while it is built). Past this many taps FFmpeg's swresample (a fixed-size polyphase
# filter bank, bounded memory whatever the rates) resamples instead.
MAX_SINC_TAPS = 1 << 20
RESAMPLER_CACHE = 4  # kernels kept (each at most MAX_SINC_TAPS float32 taps, 4 MB)


def _reduced(orig: int, new: int) -> tuple[int, int]:
    g = math.gcd(orig, new)
    return orig // g, new // g


def sinc_resampling_fits(orig: int, new: int) -> bool:
    """Whether torchaudio's exact sinc kernel for orig -> new stays within MAX_SINC_TAPS."""
    o, n = _reduced(orig, new)
    return n * (o + 16) <= MAX_SINC_TAPS


def resampling_period(orig: int, new: int) -> int:
    """Input samples after which the sinc resampler's phases repeat: a window that starts at a
    multiple of it resamples onto the same output grid as the whole track would."""
    return _reduced(orig, new)[0] if sinc_resampling_fits(orig, new) else 1


@functools.lru_cache(maxsize=RESAMPLER_CACHE)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)


def _swresample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """FFmpeg's swresample (bounded memory for any pair of rates), output trimmed to the exact length."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=new_rate)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt",
                                       layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = orig_rate, 0, fractions.Fraction(1, orig_rate)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame) + resampler.resample(None)]
    expected = math.ceil(len(samples) * new_rate / orig_rate)
    y = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
    return np.pad(y[:expected], (0, max(0, expected - len(y)))).astype(np.float32, copy=False)


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of [..., n] samples; output sample i is at time i / new_rate.

    torchaudio's sinc resampler where its kernel is small (every common rate), FFmpeg's swresample
    otherwise (see MAX_SINC_TAPS); memory stays bounded for any pair of rates."""
    if orig_rate == new_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    if not sinc_resampling_fits(orig_rate, new_rate):
        if samples.ndim > 1:
            return np.stack([_swresample(row, orig_rate, new_rate) for row in samples])
        return _swresample(samples, orig_rate, new_rate)
    with torch.inference_mode():
        out = _resampler(orig_rate, new_rate)(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)))
    return out.numpy()


class WindowCollector:
    """Keeps, of a decoded audio stream, only the samples inside given windows of the video timeline.

    Ingestion needs a few seconds of audio around each clip, not the whole track: memory is the
    windows' length, whatever the video's. Window k covers source samples [first[k], first[k] + length[k])
    at the stream's rate (sample i at time i / rate, time 0 = the first video frame); samples never
    written stay zero (gaps, audio before time 0 or after the track's end); overlapping chunks keep
    the later one.
    """

    def __init__(self, windows_s: np.ndarray, rate: int, period: int = 1):
        """`windows_s` [K, 2] (start, end) in seconds; starts are moved back to a multiple of `period`
        samples (see `resampling_period`)."""
        self.rate = rate
        self.first = (np.floor(windows_s[:, 0] * rate / period).astype(np.int64) * period).tolist()
        self.stop = np.ceil(windows_s[:, 1] * rate).astype(np.int64).tolist()
        self.data = [np.zeros(max(0, b - a), dtype=np.float32) for a, b in zip(self.first, self.stop)]
        self.last_stop = max(self.stop, default=0)
        self.written = 0  # samples written into any window
        self.end = 0  # one past the last sample seen, on the whole timeline

    def write(self, start_s: float, samples: np.ndarray) -> None:
        start = round(start_s * self.rate)
        stop = start + samples.shape[0]
        self.end = max(self.end, stop)
        for k, (first, last) in enumerate(zip(self.first, self.stop)):  # a few windows: plain Python
            a, b = max(start, first, 0), min(stop, last)  # nothing before time 0
            if b > a:
                self.data[k][a - first:b - first] = samples[a - start:b - start]
                self.written += b - a

    def past(self, start_s: float) -> bool:
        """Whether every window ends before `start_s` (later audio is not needed)."""
        return round(start_s * self.rate) >= self.last_stop


def clip_windows_from(collector: WindowCollector | None, clip_starts: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """[T, window_samples] at cfg.sample_rate read by each clip's mel frames, resampled from what
    `collector` kept (zeros where it kept nothing; all zeros for no collector: a silent track).

    Window k must be the one collected for clip k (see `clip_audio_windows`). Windows that overlap
    more than they leave out (short videos) are resampled as one stretch, the others in one batch."""
    length = cfg.window_samples
    out = np.zeros((len(clip_starts), length), dtype=np.float32)
    if collector is None:
        return out
    firsts, data = collector.first, collector.data
    lo, hi = min(firsts), max(f + len(d) for f, d in zip(firsts, data))
    if hi - lo <= sum(len(d) for d in data):
        stretch = np.zeros(hi - lo, dtype=np.float32)
        for f, d in zip(firsts, data):
            stretch[f - lo:f - lo + len(d)] = d
        track = resample(stretch, collector.rate, cfg.sample_rate)
        tracks, starts = [track] * len(data), [lo] * len(data)
    else:
        width = max(len(d) for d in data)
        tracks = resample(np.stack([np.pad(d, (0, width - len(d))) for d in data]), collector.rate, cfg.sample_rate)
        starts = firsts
    for k, start in enumerate(clip_starts):
        track = tracks[k]
        offset = starts[k] * cfg.sample_rate / collector.rate  # where `track` starts on the output grid
        first = round(start * cfg.sample_rate) - cfg.n_fft // 2 - round(offset)
        a, b = max(0, first), min(len(track), first + length)
        if b > a:
            out[k, a - first:b - first] = track[a:b]
    return out


def clip_audio_windows(clip_starts: np.ndarray, cfg: MelConfig, margin_s: float = 0.05) -> np.ndarray:
    """[T, 2] (start, end) seconds of source audio that clip k's mel frames need, with a margin for the
    resampler's filter."""
    lead = cfg.n_fft // 2 / cfg.sample_rate + margin_s
    tail = (cfg.window_samples - cfg.n_fft // 2) / cfg.sample_rate + margin_s
    return np.stack([clip_starts - lead, clip_starts + tail], axis=1)


@functools.lru_cache(maxsize=8)
def _mel_transform(cfg: MelConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        win_length=cfg.win_length,
        hop_length=cfg.hop_length,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        n_mels=cfg.n_mels,
        power=2.0,
        center=False,
    )


def clip_windows(track: np.ndarray, clip_starts: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """[T, window_samples] slices of `track` (at cfg.sample_rate) read by each clip's mel frames."""
    first = np.round(clip_starts * cfg.sample_rate).astype(np.int64) - cfg.n_fft // 2
    length = cfg.window_samples
    pad_left = int(max(0, -first.min()))
    pad_right = int(max(0, first.max() + length - track.shape[0]))
    padded = np.pad(track, (pad_left, pad_right))
    index = (first + pad_left)[:, None] + np.arange(length)[None, :]
    return padded[index]


def log_mel(windows: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """[T, window_samples] audio -> [T, n_mels, mel_frames] float32 log-mel."""
    with torch.inference_mode():
        mel = _mel_transform(cfg)(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        out = torch.log(mel + cfg.log_offset)
    assert out.shape[-1] == cfg.mel_frames, (out.shape, cfg)
    return out.numpy()


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")
