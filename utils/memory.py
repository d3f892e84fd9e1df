"""Peak memory of a block of work: GPU allocator peak on CUDA, sampled resident memory on CPU.

The process-lifetime peak (`ru_maxrss`) is useless for comparing training methods on small models:
loading the checkpoint can spike higher than training. So the CPU peak is sampled by a thread while
the block runs.
"""

from __future__ import annotations

import threading
from typing import Self

import psutil
import torch


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.result()` -> dict of bytes."""

    def __init__(self, interval_seconds: float = 0.02):
        self.interval = interval_seconds
        self.process = psutil.Process()
        self._stop = threading.Event()
        self.peak_rss = 0
        self.rss_before = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def __enter__(self) -> Self:
        self.rss_before = self.peak_rss = self.process.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def result(self) -> dict:
        out = {"rss_before_bytes": self.rss_before, "peak_rss_bytes": self.peak_rss,
               "peak_rss_growth_bytes": self.peak_rss - self.rss_before}
        if torch.cuda.is_available():
            out["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
        return out
