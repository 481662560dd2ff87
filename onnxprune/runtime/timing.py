"""Interleaved latency measurement.

These machines drift ±30% between runs, so models are never timed one after the other: each
round times every model in turn (the order rotated per round), and comparisons use per-round
ratios, whose median and spread are reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .session import Runner


@dataclass
class Timing:
    name: str
    samples_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    def summary(self) -> dict:
        p50 = self.percentile(50)
        return {"name": self.name, "p50_ms": p50, "p90_ms": self.percentile(90), "p99_ms": self.percentile(99),
                "mean_ms": float(np.mean(self.samples_ms)), "throughput_per_s": 1000.0 / p50 if p50 > 0 else None,
                "round_median_min_ms": float(min(self.round_medians_ms)),
                "round_median_max_ms": float(max(self.round_medians_ms)),
                "samples": len(self.samples_ms), "rounds": len(self.round_medians_ms)}


def interleaved(runners: list[tuple[str, Runner]], warmup: int = 5, runs_per_round: int = 5,
                min_rounds: int = 5, max_rounds: int = 50, min_seconds: float = 2.0,
                stable_within: float = 0.02, progress: bool = True) -> list[Timing]:
    """Time all runners side by side until the medians settle (or ``max_rounds``)."""
    timings = [Timing(name) for name, _ in runners]
    for _, runner in runners:
        for _ in range(warmup):
            runner.run()
    from ..report.progress import Progress

    with Progress("timing rounds", max_rounds, silent=not progress) as bar:
        start = time.perf_counter()
        previous = None
        for rnd in range(max_rounds):
            bar.advance()
            order = list(range(len(runners)))
            shift = rnd % len(order)
            order = order[shift:] + order[:shift]
            for i in order:
                runner = runners[i][1]
                times = []
                for _ in range(runs_per_round):
                    t0 = time.perf_counter()
                    runner.run()
                    times.append((time.perf_counter() - t0) * 1000.0)
                timings[i].samples_ms.extend(times)
                timings[i].round_medians_ms.append(float(np.median(times)))
            medians = [float(np.median(t.round_medians_ms)) for t in timings]
            done = rnd + 1 >= min_rounds and time.perf_counter() - start >= min_seconds
            if done and previous is not None and all(abs(m - p) <= stable_within * p for m, p in zip(medians, previous)):
                break
            previous = medians
    return timings


def ratios(base: Timing, other: Timing) -> dict:
    """Per-round latency ratio other/base: median and min–max."""
    r = np.array(other.round_medians_ms) / np.array(base.round_medians_ms)
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
