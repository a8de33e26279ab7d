"""Deterministic, labelled, synthetic audio-visual demo dataset (MP4: H.264 + AAC).

This is the project's embedded demo data: small real video files in which picture and
sound are tied in time and by class, so that the self-supervised objectives (masked
clip-embedding prediction, correct audio/video pair prediction) have something to learn
and a linear probe on good features can separate the classes.

Design
------
* **Classes.** Each class is a :class:`ClassTemplate`: a shape (circle, square, triangle,
  diamond, ring, cross, hexagon, bar), a saturated colour, and a class sound (pitch,
  waveform among sine / square / sawtooth / FM / noise band, and rhythm: a single or a
  double burst). The cues are redundant: the class is both visible and audible.
* **Events.** One object of the class moves in straight lines (seeded random start and
  velocity, 1-3 wall bounces per second) and bounces off the frame walls. At each bounce
  the object flashes (brighter for 2 frames) and the class burst (~160 ms, decaying
  envelope) starts at the exact bounce time. The stereo pan follows the object's x
  position. Optionally (``appear_event``) the object rests invisible at its start
  position, then fades in at a random time in the first second with a short rising
  onset sound and only then starts moving.
* **Distractors.** ``distractors`` grey objects of random shape move and bounce silently;
  the soundtrack has background noise and random clicks tied to no visual event; the
  background is a smooth colour gradient with a mild static texture, redrawn at a scene cut
  every ``background_cut_s`` seconds (as shots change in real videos). With
  ``new_motion_at_cut`` every object also restarts each shot from a new random position and
  velocity, and the noise floor changes. Without cuts the background (and without new motion
  the object's path, speed and the noise level) tells videos apart, and masked-embedding
  prediction (whose negatives are other videos' clips) learns those instead of the class:
  with them, what persists through a video, and so what the context predicts, is the class
  object and its sound.
* **Learnable.** Audio-visual correspondence (burst onsets align with flashes and wall
  contacts, the pan with the object's side, timbre with shape and colour), temporal
  context (motion is smooth and predictable between bounces, rhythm repeats), and the
  class label from either modality.

Everything is drawn from ``numpy.random.default_rng([seed, video_index])`` and encoded
with single-threaded x264, so the same :class:`DemoConfig` gives byte-identical files.
"""

from __future__ import annotations

import math
import os
import tempfile
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pemt_pipeline.configs import from_params

__all__ = [
    "CLASS_TEMPLATES",
    "ClassTemplate",
    "DemoConfig",
    "bounce_times",
    "generate_demo_dataset",
    "reflect",
    "render_video",
    "split_labels",
    "video_path",
]

_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_AAC_FRAME = 1024
_X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                 "slower", "veryslow")
_CHUNK_FRAMES = 16  # frames rendered per vectorised batch
_FLASH_FRAMES = 2
_FADE_S = 0.2  # appearance fade-in duration
_PULSE_S = {1: 0.16, 2: 0.07}  # burst length for single / double bursts
_PULSE_GAP_S = 0.1  # onset-to-onset spacing of a double burst
_ONSET_S = 0.12  # appearance sound length


# --------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ClassTemplate:
    """Visual and audio signature of one class."""

    name: str
    shape: str
    colour: tuple[float, float, float]  # RGB in [0, 1]
    waveform: str  # "sine" | "square" | "sawtooth" | "fm" | "noise"
    pitch_hz: float  # fundamental (FM: carrier; noise: band centre)
    pulses: int  # 1: single burst, 2: double burst


CLASS_TEMPLATES: tuple[ClassTemplate, ...] = (
    ClassTemplate("circle", "circle", (0.92, 0.12, 0.10), "sine", 440.0, 1),
    ClassTemplate("square", "square", (0.12, 0.82, 0.18), "square", 220.0, 2),
    ClassTemplate("triangle", "triangle", (0.15, 0.32, 0.98), "sawtooth", 330.0, 1),
    ClassTemplate("diamond", "diamond", (0.96, 0.86, 0.08), "fm", 660.0, 2),
    ClassTemplate("ring", "ring", (0.92, 0.12, 0.88), "noise", 1800.0, 1),
    ClassTemplate("cross", "cross", (0.08, 0.86, 0.92), "sine", 880.0, 2),
    ClassTemplate("hexagon", "hexagon", (1.00, 0.52, 0.04), "square", 550.0, 1),
    ClassTemplate("bar", "bar", (0.58, 0.22, 0.96), "sawtooth", 165.0, 2),
)


# Signed distance (pixels, approximate) of each shape of size r, and its half-extents in
# units of r (the object touches a wall when its bounding box does).
def _sd_triangle(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    dy = dy - 0.25 * r  # centre the bounding box: apex at -0.75 r, base at +0.75 r
    return np.maximum(dy, 0.866 * np.abs(dx) - 0.5 * dy) - 0.5 * r


def _sd_cross(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay, w = np.abs(dx), np.abs(dy), 0.33 * r
    return np.minimum(np.maximum(ax - w, ay - r), np.maximum(ay - w, ax - r))


_SHAPES: Mapping[str, tuple[Callable[..., np.ndarray], float, float]] = {
    "circle": (lambda dx, dy, r: np.hypot(dx, dy) - r, 1.0, 1.0),
    "square": (lambda dx, dy, r: np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r, 0.85, 0.85),
    "triangle": (_sd_triangle, 0.866, 0.75),
    "diamond": (lambda dx, dy, r: (np.abs(dx) + np.abs(dy) - 1.1 * r) * 0.7071, 1.1, 1.1),
    "ring": (lambda dx, dy, r: np.abs(np.hypot(dx, dy) - 0.7 * r) - 0.3 * r, 1.0, 1.0),
    "cross": (_sd_cross, 1.0, 1.0),
    "hexagon": (
        lambda dx, dy, r: np.maximum(0.866 * np.abs(dx) + 0.5 * np.abs(dy), np.abs(dy))
        - 0.866 * r,
        1.0,
        0.866,
    ),
    "bar": (lambda dx, dy, r: np.maximum(np.abs(dx) - r, np.abs(dy) - 0.45 * r), 1.0, 0.45),
}


# --------------------------------------------------------------------------- config


@dataclass
class DemoConfig:
    """Parameters of the synthetic dataset; validated on construction (``ValueError``)."""

    n_videos: int = 64  # number of files; classes are assigned round-robin
    n_classes: int = 4  # first ``n_classes`` of ``CLASS_TEMPLATES`` (at most 8)
    min_duration_s: float = 8.0  # per-video duration drawn uniformly in [min, max]
    max_duration_s: float = 12.0
    width: int = 160  # frame size in pixels; even (yuv420p)
    height: int = 120
    fps: int = 30
    sample_rate: int = 22050  # audio is stereo AAC at this rate
    test_fraction: float = 0.625  # share of each class put in the "test" split
    distractors: int = 1  # silent grey objects per video
    noise_level: float = 0.02  # std of the stereo background noise (full scale = 1)
    click_rate: float = 0.5  # random audio clicks per second, tied to no visual event
    appear_event: bool = True  # the object fades in with an onset sound in the first second
    background_cut_s: float = 1.0  # a new background every this many seconds; 0 = one per video
    new_motion_at_cut: bool = True  # at each cut every object restarts from a new random
    # position and velocity (and the noise floor changes): only the class persists through a video
    object_size: float = 0.2  # object radius as a fraction of the frame height
    seed: int = 0
    crf: int = 23  # x264 constant rate factor (0-51)
    preset: str = "veryfast"  # x264 preset
    audio_bitrate: int = 64_000

    def __post_init__(self) -> None:
        n_tpl = len(CLASS_TEMPLATES)
        rules: list[tuple[str, type, Callable[[Any], bool], str]] = [
            ("n_classes", int, lambda v: 1 <= v <= n_tpl, f"in [1, {n_tpl}] (class templates)"),
            ("n_videos", int, lambda v: v >= self.n_classes, ">= n_classes"),
            ("min_duration_s", float, lambda v: v >= 1.0, ">= 1.0"),
            ("max_duration_s", float, lambda v: v >= self.min_duration_s, ">= min_duration_s"),
            ("width", int, lambda v: v >= 16 and v % 2 == 0, "even (yuv420p) and >= 16"),
            ("height", int, lambda v: v >= 16 and v % 2 == 0, "even (yuv420p) and >= 16"),
            ("fps", int, lambda v: 1 <= v <= 240, "in [1, 240]"),
            ("sample_rate", int, lambda v: v in _AAC_RATES, f"one of the AAC rates {_AAC_RATES}"),
            ("test_fraction", float, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
            ("distractors", int, lambda v: v >= 0, ">= 0"),
            ("noise_level", float, lambda v: v >= 0.0, ">= 0"),
            ("click_rate", float, lambda v: v >= 0.0, ">= 0"),
            ("appear_event", bool, lambda v: True, "True or False"),
            ("new_motion_at_cut", bool, lambda v: True, "True or False"),
            ("background_cut_s", float, lambda v: v == 0.0 or v >= 1.0 / self.fps,
             "0 (no cut) or at least one frame"),
            ("object_size", float, lambda v: 0.02 <= v <= 0.25, "in [0.02, 0.25]"),
            ("seed", int, lambda v: v >= 0, ">= 0"),
            ("crf", int, lambda v: 0 <= v <= 51, "in [0, 51]"),
            ("preset", str, lambda v: v in _X264_PRESETS, f"one of {_X264_PRESETS}"),
            ("audio_bitrate", int, lambda v: v >= 8000, ">= 8000"),
        ]
        for name, kind, ok, expected in rules:
            value = getattr(self, name)
            if not _is_a(value, kind) or not ok(value):
                raise ValueError(
                    f"parameter demo_data.{name} must be {expected} ({kind.__name__}), got {value!r}"
                )

    def validate(self) -> None:
        """The construction checks (ranges of every field), for `from_params`' validate convention."""
        self.__post_init__()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DemoConfig:
        """Build from a mapping (e.g. Kedro parameters); unknown keys raise ``ValueError``."""
        return from_params(cls, d, "demo_data")

    def class_names(self) -> list[str]:
        """Names of the classes in use, in template order."""
        return [t.name for t in CLASS_TEMPLATES[: self.n_classes]]


def _is_a(value: Any, kind: type) -> bool:
    """Type check that accepts ints for floats (and numpy scalars) but no bools for numbers."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, {int: numbers.Integral, float: numbers.Real}.get(kind, kind))


# --------------------------------------------------------------------------- motion


def reflect(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position at times ``t`` of a point starting at ``p0`` with velocity ``v`` that
    bounces elastically between ``lo`` and ``hi``."""
    length = hi - lo
    m = np.mod(p0 - lo + v * np.asarray(t, dtype=np.float64), 2.0 * length)
    return lo + length - np.abs(m - length)


def bounce_times(
    p0: float, v: float, lo: float, hi: float, t_end: float
) -> tuple[np.ndarray, np.ndarray]:
    """Times in (0, t_end) at which :func:`reflect` hits a wall, and whether it is ``hi``."""
    length = hi - lo
    u0 = p0 - lo
    if v == 0.0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    if v > 0:
        ks = np.arange(math.floor(u0 / length) + 1, math.floor((u0 + v * t_end) / length) + 1)
    else:
        ks = np.arange(math.ceil(u0 / length) - 1, math.ceil((u0 + v * t_end) / length) - 1, -1)
    times = (ks * length - u0) / v
    keep = (times > 0) & (times < t_end)
    return times[keep], (ks[keep] % 2) == 1


@dataclass(frozen=True)
class _Mover:
    """One object: shape, size, colour, and bouncing motion in shots. Shot k starts at
    ``starts[k]`` from ``p0[k]`` with velocity ``vel[k]`` (the first shot's start is when the
    object starts moving; it rests at ``p0[0]`` before)."""

    shape: str
    radius: float
    colour: np.ndarray
    starts: tuple[float, ...]
    p0: tuple[tuple[float, float], ...]
    vel: tuple[tuple[float, float], ...]
    bounds: tuple[tuple[float, float], tuple[float, float]]  # (lo, hi) for x and y

    def position(self, t: np.ndarray) -> np.ndarray:
        """Centre (x, y) in pixels at times ``t``: shape (len(t), 2)."""
        t = np.asarray(t, dtype=np.float64)
        k = np.searchsorted(np.asarray(self.starts[1:]), t, side="right")  # shot of each t
        tau = np.maximum(t - np.asarray(self.starts)[k], 0.0)
        p0, vel = np.asarray(self.p0)[k], np.asarray(self.vel)[k]  # (len(t), 2)
        return np.stack(
            [reflect(p0[:, a], vel[:, a], *self.bounds[a], tau) for a in (0, 1)], axis=1
        )

    def bounces(self, t_end: float) -> tuple[np.ndarray, list[str]]:
        """Sorted bounce times (absolute seconds) and the wall hit at each."""
        names = (("left", "right"), ("top", "bottom"))
        ends = (*self.starts[1:], t_end)
        times, walls = [], []
        for start, end, p0, vel in zip(self.starts, ends, self.p0, self.vel):
            for a in (0, 1):
                tb, hi = bounce_times(p0[a], vel[a], *self.bounds[a], min(end, t_end) - start)
                times.append(tb + start)
                walls += [names[a][int(h)] for h in hi]
        all_t = np.concatenate(times)
        order = np.argsort(all_t, kind="stable")
        return all_t[order], [walls[i] for i in order]


def _make_mover(
    rng: np.random.Generator, cfg: DemoConfig, shape: str, radius: float,
    colour: np.ndarray, starts: tuple[float, ...],
) -> _Mover:
    """Random start position and velocity for each shot: 1.2-2.6 wall bounces per second in
    total, split unevenly between the axes (x share in [0.15, 0.4] or [0.6, 0.85]) so that x
    and y bounces do not come in regular pairs (corner to corner)."""
    _, hx, hy = _SHAPES[shape]
    bounds = (
        (hx * radius - 0.5, cfg.width - 0.5 - hx * radius),
        (hy * radius - 0.5, cfg.height - 0.5 - hy * radius),
    )
    p0s, vels = [], []
    for _ in starts:
        p0s.append(tuple(float(rng.uniform(lo, hi)) for lo, hi in bounds))
        rate = rng.uniform(1.2, 2.6)
        share = rng.uniform(0.15, 0.4)
        shares = (share, 1 - share) if rng.integers(2) else (1 - share, share)
        signs = rng.choice([-1.0, 1.0], size=2)
        # a point moving at |v| between walls L apart bounces |v| / L times per second
        vels.append(tuple(float(signs[a] * shares[a] * rate * (bounds[a][1] - bounds[a][0]))
                          for a in (0, 1)))
    return _Mover(shape, radius, colour, tuple(starts), tuple(p0s), tuple(vels), bounds)


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class _Scene:
    """Everything random about one video, drawn once from its generator."""

    template: ClassTemplate
    n_frames: int
    n_samples: int
    target: _Mover
    distractors: tuple[_Mover, ...]
    appear_time: float | None
    backgrounds: np.ndarray  # (n_cuts + 1, H, W, 3) float32, one per scene
    scene_frames: int  # frames per scene (the last one may be shorter)
    click_times: np.ndarray
    rng_audio: np.random.Generator
    duration: float


def _sample_scene(cfg: DemoConfig, index: int) -> _Scene:
    """Draw class, duration, objects, appearance, background and clicks of video ``index``."""
    rng = np.random.default_rng([cfg.seed, index])
    template = CLASS_TEMPLATES[index % cfg.n_classes]
    n_frames = max(1, round(rng.uniform(cfg.min_duration_s, cfg.max_duration_s) * cfg.fps))
    duration = n_frames / cfg.fps
    radius = cfg.object_size * cfg.height
    appear = float(rng.uniform(0.1, 0.9)) if cfg.appear_event else None
    scene_frames = max(1, round(cfg.background_cut_s * cfg.fps)) if cfg.background_cut_s else n_frames
    n_scenes = math.ceil(n_frames / scene_frames)
    cuts = tuple(k * scene_frames / cfg.fps for k in range(1, n_scenes)) if cfg.new_motion_at_cut else ()
    target = _make_mover(rng, cfg, template.shape, radius,
                         np.asarray(template.colour, np.float32),
                         (appear or 0.0, *(c for c in cuts if c > (appear or 0.0))))
    shapes = sorted(_SHAPES)
    distractors = tuple(
        _make_mover(rng, cfg, shapes[rng.integers(len(shapes))], radius * rng.uniform(0.6, 1.0),
                    np.full(3, rng.uniform(0.45, 0.75), np.float32), (0.0, *cuts))
        for _ in range(cfg.distractors)
    )
    n_clicks = rng.poisson(cfg.click_rate * duration)
    return _Scene(
        template=template,
        n_frames=n_frames,
        n_samples=round(duration * cfg.sample_rate),
        target=target,
        distractors=distractors,
        appear_time=appear,
        backgrounds=np.stack([_background(rng, cfg.height, cfg.width) for _ in range(n_scenes)]),
        scene_frames=scene_frames,
        click_times=np.sort(rng.uniform(0.0, duration, n_clicks)),
        rng_audio=np.random.default_rng(rng.integers(2**63)),
        duration=duration,
    )


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth, desaturated two-colour gradient plus a mild static texture."""
    grey = rng.uniform(0.15, 0.45, size=(2, 1))
    colours = np.clip(grey + rng.uniform(-0.06, 0.06, size=(2, 3)), 0, 1)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
    img = colours[0] * (1 - g[..., None]) + colours[1] * g[..., None]
    img += rng.normal(0.0, 0.025, size=(h, w, 1))
    return img.astype(np.float32)


# --------------------------------------------------------------------------- video


def _render_frames(
    cfg: DemoConfig, scene: _Scene, flash: np.ndarray, alpha: np.ndarray
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frame batches (n, H, W, 3), objects composited onto the background."""
    movers = [*scene.distractors, scene.target]
    pad = int(math.ceil(2.4 * max(m.radius for m in movers))) + 4  # patches never wrap
    padded = np.pad(scene.backgrounds, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    for start in range(0, scene.n_frames, _CHUNK_FRAMES):
        idx = np.arange(start, min(start + _CHUNK_FRAMES, scene.n_frames))
        canvas = padded[idx // scene.scene_frames]  # (n, H + 2 pad, W + 2 pad, 3), a copy
        for m in movers:
            is_target = m is scene.target
            colour = np.broadcast_to(m.colour, (len(idx), 3))
            if is_target:
                colour = colour + 0.5 * flash[idx, None] * (1.0 - colour)
            _composite(canvas, m, m.position(idx / cfg.fps) + pad, colour,
                       alpha[idx] if is_target else None)
        frames = canvas[:, pad:-pad, pad:-pad]
        yield (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _composite(
    canvas: np.ndarray, m: _Mover, centres: np.ndarray, colour: np.ndarray,
    alpha: np.ndarray | None,
) -> None:
    """Alpha-blend an antialiased shape into each frame of ``canvas`` (in place)."""
    sdf, hx, hy = _SHAPES[m.shape]
    size = int(math.ceil(2 * max(hx, hy) * m.radius)) + 3
    origin = np.floor(centres).astype(np.int64) - size // 2  # (n, 2) top-left of the patch
    xs = origin[:, 0:1] + np.arange(size)  # (n, size)
    ys = origin[:, 1:2] + np.arange(size)
    dx = xs[:, None, :] - centres[:, 0, None, None]
    dy = ys[:, :, None] - centres[:, 1, None, None]
    cover = np.clip(0.5 - sdf(dx, dy, m.radius), 0.0, 1.0)
    if alpha is not None:
        cover = cover * alpha[:, None, None]
    cover = cover[..., None].astype(np.float32)
    t = np.arange(len(centres))[:, None, None]
    sel = (t, ys[:, :, None], xs[:, None, :])
    canvas[sel] = canvas[sel] * (1.0 - cover) + colour[:, None, None, :] * cover


def _flash_and_alpha(
    cfg: DemoConfig, scene: _Scene, bounces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame flash indicator of the target (2 frames from each bounce) and its opacity."""
    flash = np.zeros(scene.n_frames, np.float32)
    for f in np.round(bounces * cfg.fps).astype(int):
        flash[f : f + _FLASH_FRAMES] = 1.0
    t = np.arange(scene.n_frames) / cfg.fps
    if scene.appear_time is None:
        alpha = np.ones(scene.n_frames, np.float32)
    else:
        alpha = np.clip((t - scene.appear_time) / _FADE_S, 0.0, 1.0).astype(np.float32)
    return flash, alpha


# --------------------------------------------------------------------------- audio


def _tone(template: ClassTemplate, f0: float, f1: float, n: int, sr: int,
          rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the class timbre sweeping linearly from ``f0`` to ``f1`` Hz."""
    kind = template.waveform
    if kind == "noise":  # noise band of +-25 % around the mean frequency
        centre = 0.5 * (f0 + f1)
        spec = np.fft.rfft(rng.normal(size=n))
        f = np.fft.rfftfreq(n, 1.0 / sr)
        spec[(f < centre / 1.25) | (f > centre * 1.25)] = 0.0
        x = np.fft.irfft(spec, n)
        return 0.4 * x / (np.sqrt(np.mean(x**2)) + 1e-9)
    phase = np.cumsum(2 * np.pi * np.linspace(f0, f1, n) / sr)
    if kind == "sine":
        return np.sin(phase)
    if kind == "square":
        return 0.7 * np.sign(np.sin(phase))
    if kind == "sawtooth":
        return 2.0 * np.mod(phase / (2 * np.pi), 1.0) - 1.0
    if kind == "fm":  # modulator at twice the carrier, index 1: the carrier stays dominant
        return np.sin(phase + np.sin(2.0 * phase))
    raise ValueError(f"unknown waveform {kind!r}")


def _burst(template: ClassTemplate, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The class sound: 1 or 2 pulses with a sharp attack and exponential decay."""
    pulse_len = round(_PULSE_S[template.pulses] * sr)
    t = np.arange(pulse_len) / sr
    env = np.minimum(t / 0.003, 1.0) * np.exp(-t / (_PULSE_S[template.pulses] / 4))
    env[-16:] *= np.linspace(1.0, 0.0, 16)
    gap = round(_PULSE_GAP_S * sr)
    out = np.zeros(gap * (template.pulses - 1) + pulse_len)
    for k in range(template.pulses):
        tone = _tone(template, template.pitch_hz, template.pitch_hz, pulse_len, sr, rng)
        out[k * gap : k * gap + pulse_len] += tone * env
    return out


def _onset_sound(template: ClassTemplate, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Soft rising sweep (half to full pitch) played when the object appears."""
    n = round(_ONSET_S * sr)
    env = np.sin(np.linspace(0.0, np.pi, n)) ** 2
    return 0.6 * env * _tone(template, template.pitch_hz / 2, template.pitch_hz, n, sr, rng)


def _add_at(track: np.ndarray, sound: np.ndarray, start: int) -> None:
    """Mix ``sound`` into ``track`` (last axis) from sample ``start``, cropping at the end."""
    end = min(track.shape[-1], start + sound.shape[-1])
    if end > start:
        track[..., start:end] += sound[..., : end - start]


def _synth_audio(cfg: DemoConfig, scene: _Scene, bounces: np.ndarray) -> np.ndarray:
    """Stereo float32 soundtrack (2, n_samples): panned class events, noise, clicks."""
    sr, rng = cfg.sample_rate, scene.rng_audio
    mono = np.zeros(scene.n_samples)
    for tb in bounces:
        _add_at(mono, 0.8 * _burst(scene.template, sr, rng), round(tb * sr))
    if scene.appear_time is not None:
        _add_at(mono, 0.5 * _onset_sound(scene.template, sr, rng), round(scene.appear_time * sr))
    x = scene.target.position(np.arange(scene.n_samples) / sr)[:, 0]
    stereo = mono * _pan_gains(x / (cfg.width - 1))
    if cfg.new_motion_at_cut:  # a noise floor per shot
        shot = np.arange(scene.n_samples) * cfg.fps // (scene.scene_frames * sr)
        gain = rng.uniform(0.5, 1.5, size=len(scene.backgrounds))[np.minimum(shot, len(scene.backgrounds) - 1)]
    else:
        gain = rng.uniform(0.5, 1.5)
    stereo += rng.normal(0.0, 1.0, size=stereo.shape) * (cfg.noise_level * gain)
    for tc in scene.click_times:
        n = round(rng.uniform(0.002, 0.012) * sr)
        click = rng.normal(size=n) * np.exp(-np.arange(n) / (n / 3)) * rng.uniform(0.15, 0.35)
        _add_at(stereo, click * _pan_gains(np.array([rng.uniform()])), round(tc * sr))
    return np.clip(stereo, -0.99, 0.99).astype(np.float32)


def _pan_gains(x01: np.ndarray) -> np.ndarray:
    """Constant-power (left, right) gains, shape (2, len(x01)), for positions in [0, 1]."""
    theta = np.pi / 4 + (np.clip(x01, 0.0, 1.0) - 0.5) * 0.8 * (np.pi / 2)
    return np.stack([np.cos(theta), np.sin(theta)])


# --------------------------------------------------------------------------- encoding


def _encode_mp4(cfg: DemoConfig, frame_batches: Iterator[np.ndarray], audio: np.ndarray) -> bytes:
    """Mux H.264 (yuv420p, single-threaded x264) and stereo AAC into MP4 bytes,
    interleaving audio with video by time. The muxer writes a temporary file through FFmpeg's own
    file I/O (it seeks back to patch box sizes), not through a Python file object."""
    with tempfile.TemporaryDirectory(prefix="pemt-demo-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        _mux_mp4(path, cfg, frame_batches, audio)
        with open(path, "rb") as f:
            return f.read()


def _mux_mp4(path: str, cfg: DemoConfig, frame_batches: Iterator[np.ndarray], audio: np.ndarray) -> None:
    with av.open(path, "w", format="mp4") as out:
        # mbtree off: with it, x264 encoded the first frames of the same pictures to different bytes
        # from one render to the next (4 distinct results in 5 renders of 4 demo videos; none without)
        vs = out.add_stream("libx264", rate=cfg.fps,
                            options={"preset": cfg.preset, "crf": str(cfg.crf), "threads": "1",
                                     "x264-params": "mbtree=0"})
        vs.width, vs.height, vs.pix_fmt = cfg.width, cfg.height, "yuv420p"
        vs.codec_context.time_base = Fraction(1, cfg.fps)
        aus = out.add_stream("aac", rate=cfg.sample_rate, layout="stereo", format="fltp",
                             options={"aac_coder": "fast"})
        aus.bit_rate = cfg.audio_bitrate
        n_written = frame_index = 0
        for batch in frame_batches:
            for rgb in batch:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = frame_index, Fraction(1, cfg.fps)
                out.mux(vs.encode(frame))
                frame_index += 1
            upto = min(audio.shape[1], round(frame_index / cfg.fps * cfg.sample_rate))
            n_written = _encode_audio(out, aus, audio, n_written, upto, cfg.sample_rate)
        _encode_audio(out, aus, audio, n_written, audio.shape[1], cfg.sample_rate, final=True)
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))


def _encode_audio(out: Any, stream: Any, audio: np.ndarray, start: int, upto: int, sr: int,
                  final: bool = False) -> int:
    """Encode whole AAC frames of ``audio[:, start:upto]`` (and the remainder if ``final``);
    return the first sample not yet encoded."""
    while upto - start >= _AAC_FRAME or (final and upto > start):
        n = min(_AAC_FRAME, upto - start)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio[:, start : start + n]), format="fltp", layout="stereo"
        )
        frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
        out.mux(stream.encode(frame))
        start += n
    return start


# --------------------------------------------------------------------------- public API


def video_path(cfg: DemoConfig, index: int) -> str:
    """Relative path of video ``index``, e.g. ``videos/demo_0007_diamond.mp4``."""
    width = max(4, len(str(cfg.n_videos - 1)))
    name = CLASS_TEMPLATES[index % cfg.n_classes].name
    return f"videos/demo_{index:0{width}d}_{name}.mp4"


def render_video(cfg: DemoConfig, index: int) -> tuple[bytes, dict[str, Any]]:
    """Render and encode video ``index`` of the dataset.

    Returns the MP4 bytes and an info dict: ``path``, ``label``, ``class_index``,
    ``duration_s``, ``n_frames``, ``n_samples``, ``bounce_times`` (s, the exact onsets of
    the class bursts and flashes), ``bounce_walls`` ("left"/"right"/"top"/"bottom"),
    ``n_bounces``, ``appear_time`` (s or None), ``click_times`` (s, distractor clicks),
    ``positions`` ((n_frames, 2) target centre in pixels, x right, y down, pixel centres
    at integers) and ``half_extent`` ((hx, hy) target half-size in pixels).
    """
    if not 0 <= index < cfg.n_videos:
        raise ValueError(f"index must be in [0, {cfg.n_videos}), got {index}")
    scene = _sample_scene(cfg, index)
    bounces, walls = scene.target.bounces(scene.duration)
    flash, alpha = _flash_and_alpha(cfg, scene, bounces)
    audio = _synth_audio(cfg, scene, bounces)
    data = _encode_mp4(cfg, _render_frames(cfg, scene, flash, alpha), audio)
    _, hx, hy = _SHAPES[scene.target.shape]
    info = {
        "path": video_path(cfg, index),
        "label": scene.template.name,
        "class_index": index % cfg.n_classes,
        "duration_s": scene.duration,
        "n_frames": scene.n_frames,
        "n_samples": scene.n_samples,
        "bounce_times": bounces.tolist(),
        "bounce_walls": walls,
        "n_bounces": len(bounces),
        "appear_time": scene.appear_time,
        "click_times": scene.click_times.tolist(),
        "positions": scene.target.position(np.arange(scene.n_frames) / cfg.fps),
        "half_extent": (hx * scene.target.radius, hy * scene.target.radius),
    }
    return data, info


def split_labels(labels: pd.Series, test_fraction: float) -> pd.Series:
    """Stratified, deterministic train/test assignment: in each class (in row order),
    ``round(n * test_fraction)`` evenly spaced rows go to "test", at least one and never
    all when the class has two or more rows and ``test_fraction > 0``."""
    split = pd.Series("train", index=labels.index, dtype=object)
    for _, rows in labels.groupby(labels, sort=False).groups.items():
        n = len(rows)
        n_test = round(n * test_fraction)
        if test_fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        picks = [rows[int((k + 0.5) * n / n_test)] for k in range(n_test)]
        split.loc[picks] = "test"
    return split


def generate_demo_dataset(
    cfg: DemoConfig, progress: bool = False
) -> tuple[dict[str, bytes], pd.DataFrame]:
    """Render the whole dataset.

    Returns ``{relative_path: mp4_bytes}`` and a labels DataFrame (sorted by ``path``) with
    columns ``path``, ``label``, ``split`` ("train"/"test", stratified by class),
    ``duration_s`` and ``n_bounces``.
    """
    files: dict[str, bytes] = {}
    rows = []
    for i in tqdm(range(cfg.n_videos), desc="demo videos", unit="video", disable=not progress):
        data, info = render_video(cfg, i)
        files[info["path"]] = data
        rows.append({k: info[k] for k in ("path", "label", "duration_s", "n_bounces")})
    labels = pd.DataFrame(rows).sort_values("path", kind="stable").reset_index(drop=True)
    labels.insert(2, "split", split_labels(labels["label"], cfg.test_fraction))
    return dict(sorted(files.items())), labels
