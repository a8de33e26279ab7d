"""Peak-memory measurement shared by the pipelines and the benchmarks (no Kedro)."""

from __future__ import annotations

import threading

import torch


def rss_anon_mb() -> float:
    """This process's anonymous resident memory (MB; memory-mapped files excluded), NaN off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakMemory:
    """Peak anonymous RSS (MB) above the value at entry, sampled every `interval` s by a thread;
    on CUDA also the peak allocated GPU memory (`gpu_mb`)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.mb = self.gpu_mb = float("nan")

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = rss_anon_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_anon_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_mb())
        self.mb = self.peak - self.base
        if torch.cuda.is_available():
            self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20
