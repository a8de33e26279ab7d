"""Aggregation over seeds and number formatting for the report (no Kedro).

Spread over seeds is the sample standard deviation (ddof = 1) of the per-seed values; with one
seed there is no spread (std 0, and the report prints the bare mean). Accuracies and recalls are
fractions in [0, 1] and are printed as percentages; their differences as percentage points.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pemt_pipeline.evaluation.retrieval import RETRIEVAL_DIRECTIONS

STREAM_ORDER = ("visual_cnn", "audio_cnn", "visual", "audio", "multimodal")


def finite(x: Any) -> bool:
    """A real number (numpy scalars included), not a bool, not NaN or infinite."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Stat:
    """Mean and sample std of the finite values among the per-seed values."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[Any]) -> Stat:
        return cls(tuple(float(v) for v in values if finite(v)))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def ok(self) -> bool:
        return self.n > 0

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def min(self) -> float:
        return min(self.values) if self.n else math.nan

    @property
    def max(self) -> float:
        return max(self.values) if self.n else math.nan


def ordered_streams(streams: Iterable[str]) -> list[str]:
    streams = set(streams)
    known = [s for s in STREAM_ORDER if s in streams]
    return known + sorted(streams - set(known))


# ----------------------------------------------------------------------------- per-variant access

def probe_stat(variant: Mapping, init: str, stream: str, metric: str = "top1") -> Stat | None:
    """Stat of a probe metric over the variant's runs; None when no run probed that stream."""
    values, seen = [], False
    for run in variant["runs"]:
        streams = run["probe"].get(init) or {}
        if stream in streams:
            seen = True
            values.append(streams[stream].get(metric))
    return Stat.of(values) if seen else None


def probe_streams(variant: Mapping, init: str = "pretrained") -> list[str]:
    return ordered_streams({s for run in variant["runs"] for s in (run["probe"].get(init) or {})})


def retrieval_stat(variant: Mapping, direction: str, key: str) -> Stat:
    return Stat.of(run["retrieval"][direction].get(key) for run in variant["runs"])


def mean_recall1_stat(variant: Mapping) -> Stat:
    """Per seed, the mean of recall@1 over both directions."""
    values = []
    for run in variant["runs"]:
        r = run["retrieval"]
        a, b = (r[d].get("recall@1") for d in RETRIEVAL_DIRECTIONS)
        values.append((a + b) / 2 if finite(a) and finite(b) else None)
    return Stat.of(values)


def run_stat(variant: Mapping, key: str) -> Stat:
    return Stat.of(run.get(key) for run in variant["runs"])


def recall_ks(retrievals: Iterable[Mapping]) -> list[int]:
    """The k of every recall@k key present (1, 5, 10 at least), ascending."""
    ks = set()
    for r in retrievals:
        for key in r:
            if key.startswith("recall@") and key[7:].isdigit():
                ks.add(int(key[7:]))
    return sorted(ks)


# ----------------------------------------------------------------------------- formatting

NA = "n/a"


def fmt_int(x: Any) -> str:
    return f"{int(round(x)):,}" if finite(x) else NA


def fmt_si(x: Any, unit: str = "") -> str:
    """3,843,840 -> '3.84 M'; for chart labels and FLOPs."""
    if not finite(x):
        return NA
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _decimals(x: float) -> int | None:
    """Decimals giving about three significant digits; None: too small, use e-notation."""
    a = abs(x)
    if a >= 100:
        return 0
    if a >= 10:
        return 1
    if a >= 1:
        return 2
    if a >= 0.001 or a == 0:
        return 3
    return None


def fmt_num(x: Any) -> str:
    """About three significant digits, thousands separated, no e-notation above 0.001."""
    if not finite(x):
        return NA
    d = _decimals(x)
    return f"{x:.2e}" if d is None else f"{x:,.{d}f}"


def fmt_mean_std(mean: float, std: float) -> str:
    """'mean ± std', the std with as many decimals as the mean."""
    d = _decimals(mean)
    if d is None:
        return f"{mean:.2e} ± {std:.1e}"
    return f"{mean:,.{d}f} ± {std:,.{d}f}"


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if finite(x) else NA


def fmt_points(d: Any) -> str:
    return f"{100 * d:+.1f} points" if finite(d) else NA


def fmt_stat(stat: Stat | None, kind: str = "num") -> str:
    """'mean ± std' (kind 'pct': in percent) when more than one seed, else the bare value."""
    if stat is None:
        return "—"
    if not stat.ok:
        return NA
    if kind == "pct":
        return (f"{100 * stat.mean:.1f} ± {100 * stat.std:.1f}%" if stat.n > 1
                else fmt_pct(stat.mean))
    if kind == "int":
        return (f"{fmt_int(stat.mean)} ± {fmt_int(stat.std)}" if stat.n > 1
                else fmt_int(stat.mean))
    return fmt_mean_std(stat.mean, stat.std) if stat.n > 1 else fmt_num(stat.mean)
