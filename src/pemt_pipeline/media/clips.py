"""Where the T clips of a video go, and which instants each clip samples.

A clip is `frames_per_clip` frames taken every `frame_stride` frames of the target frame rate, so it
covers `span = frames_per_clip * frame_stride / fps` seconds. Its audio is the same `span` seconds.

Placement (`placement`):
- ``uniform``: clip starts spread evenly from 0 to `duration - span` (the first clip starts at the
  first frame, the last one ends at the end of the video), gaps between clips when the video is long.
- ``consecutive``: T back-to-back clips (`T * span` seconds) centred in the video.

Videos shorter than T clips (`short_video_policy`), i.e. `duration < T * span`:
- ``overlap`` (default): still T clips, spread uniformly, so neighbours overlap;
- ``pad``: only the `floor(duration / span)` clips that fit without overlap (placed as above); the
  rest are padding, marked False in the clip mask (the model masks them out);
- ``reject``: the video is rejected (`too_short`).
A video shorter than one clip (`duration < span`) is always rejected (`too_short`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PLACEMENTS = ("uniform", "consecutive")
SHORT_VIDEO_POLICIES = ("overlap", "pad", "reject")

# Tolerance (seconds) when comparing a target instant with frame timestamps, so that a target
# falling exactly on a frame's timestamp picks that frame despite float rounding.
TIME_EPSILON = 1e-4


@dataclass(frozen=True)
class ClipPlan:
    """Clip start times (seconds from the first video frame) and which of them are real."""

    starts: np.ndarray  # [T] float64; padding clips repeat the last real start
    mask: np.ndarray  # [T] bool, True for a real clip
    overlapping: bool  # real clips overlap (short video under the `overlap` policy)

    @property
    def n_real(self) -> int:
        return int(self.mask.sum())


class ClipPlacementError(ValueError):
    """The video cannot be cut into clips under the configured policy."""


def clip_span(frames_per_clip: int, frame_stride: int, fps: float) -> float:
    """Seconds covered by one clip."""
    return frames_per_clip * frame_stride / fps


def _spread(n: int, first: float, last: float) -> np.ndarray:
    return np.linspace(first, last, n) if n > 1 else np.array([first], dtype=np.float64)


def plan_clips(
    duration: float, span: float, n_clips: int, placement: str = "uniform", short_video_policy: str = "overlap"
) -> ClipPlan:
    """Place `n_clips` clips of `span` seconds in a video of `duration` seconds."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if short_video_policy not in SHORT_VIDEO_POLICIES:
        raise ValueError(f"short_video_policy must be one of {SHORT_VIDEO_POLICIES}, got {short_video_policy!r}")
    if n_clips < 1 or span <= 0:
        raise ValueError(f"need n_clips >= 1 and span > 0, got {n_clips}, {span}")
    if duration + TIME_EPSILON < span:
        raise ClipPlacementError(f"video is {duration:.3f} s long, shorter than one clip ({span:.3f} s)")

    fits = int(math.floor((duration + TIME_EPSILON) / span))  # non-overlapping clips that fit
    n_real, overlapping = n_clips, False
    if fits < n_clips:
        if short_video_policy == "reject":
            raise ClipPlacementError(
                f"video is {duration:.3f} s long: {fits} clip(s) of {span:.3f} s fit, {n_clips} needed"
            )
        if short_video_policy == "pad":
            n_real = fits
        else:
            overlapping = True

    last_start = max(duration - span, 0.0)
    if placement == "consecutive" and not overlapping:
        first = (duration - n_real * span) / 2
        real = first + span * np.arange(n_real, dtype=np.float64)
    else:
        real = _spread(n_real, 0.0, last_start)
    starts = np.concatenate([real, np.full(n_clips - n_real, real[-1])])
    mask = np.arange(n_clips) < n_real
    return ClipPlan(starts=starts, mask=mask, overlapping=overlapping)


def frame_times(starts: np.ndarray, frames_per_clip: int, frame_stride: int, fps: float) -> np.ndarray:
    """Target instants [T, F] (seconds) at which each clip samples a frame."""
    offsets = np.arange(frames_per_clip, dtype=np.float64) * frame_stride / fps
    return starts[:, None] + offsets[None, :]
