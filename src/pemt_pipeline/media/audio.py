"""Audio: placing decoded chunks on the video's timeline, downmix, resampling and the log-mel front end.

The log-mel of a clip has exactly `mel_frames` frames with hop `round(span * sample_rate / mel_frames)`
samples, so the frames tile the clip's `span` seconds; frame j is centred on
`clip_start + j * hop / sample_rate` (the convention of `torch.stft(center=True)`), its window reaches
`n_fft // 2` samples either side. Audio outside the track (before its first or after its last sample)
is zeros. Values are `log(log_offset + mel power)` (METHOD.md: log(1e-6 + mel)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited (sinc) resampling with torchaudio; output sample i is at time i / new_rate."""
    if orig_rate == new_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    with torch.inference_mode():
        out = _resampler(orig_rate, new_rate)(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)))
    return out.numpy()


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
