"""Interleaved latency measurement.

These machines drift ±30% between runs, so models are never timed one after the other: each
round times every model in turn (the order rotated per round), and comparisons use per-round
ratios, whose median and spread are reported. Before the rounds each model is warmed up until
its latency settles (a first session run can be several times slower than the hundredth), and
every loop here has a fixed maximum count.

The clock is :data:`clock` (``time.perf_counter``), looked up at each reading, so tests can put
a stand-in clock there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .session import Runner

#: seconds, read before and after each run (replaceable: see the module docstring)
clock: Callable[[], float] = time.perf_counter
#: warm-up: at most this many batches of runs per model
MAX_WARMUP_BATCHES = 20
#: warm-up ends once two consecutive batches' medians agree within this fraction
WARMUP_STABLE_WITHIN = 0.05


@dataclass
class Timing:
    name: str
    samples_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    #: runs spent warming up before the first round
    warmup_runs: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    def interval(self, low: float = 25, high: float = 75) -> tuple[float, float]:
        """The spread of the per-round medians (by default their inter-quartile range)."""
        return float(np.percentile(self.round_medians_ms, low)), float(np.percentile(self.round_medians_ms, high))

    def median_interval(self) -> tuple[float, float]:
        """A distribution-free 95% confidence interval of the median round median: the order
        statistics at ranks n/2 ± 0.98·sqrt(n) (the binomial's normal approximation)."""
        values = sorted(self.round_medians_ms)
        n = len(values)
        half = 0.98 * math.sqrt(n)
        low, high = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half) - 1)
        return float(values[low]), float(values[high])

    def summary(self) -> dict:
        p50 = self.percentile(50)
        q25, q75 = self.interval()
        ci_low, ci_high = self.median_interval()
        return {"name": self.name, "p50_ms": p50, "p90_ms": self.percentile(90), "p99_ms": self.percentile(99),
                "mean_ms": float(np.mean(self.samples_ms)), "throughput_per_s": 1000.0 / p50 if p50 > 0 else None,
                "round_median_min_ms": float(min(self.round_medians_ms)),
                "round_median_max_ms": float(max(self.round_medians_ms)),
                "round_median_q25_ms": q25, "round_median_q75_ms": q75, "median_ci_ms": [ci_low, ci_high],
                "samples": len(self.samples_ms), "rounds": len(self.round_medians_ms),
                "warmup_runs": self.warmup_runs}


def _timed_runs(runner: Runner, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = clock()
        runner.run()
        times.append((clock() - t0) * 1000.0)
    return times


def warm_up(runner: Runner, min_runs: int = 5, batch: int = 5, max_batches: int = MAX_WARMUP_BATCHES,
            stable_within: float = WARMUP_STABLE_WITHIN) -> int:
    """Run until the latency settles: at least ``min_runs``, then batches of ``batch`` runs until
    two consecutive batch medians agree within ``stable_within`` (at most ``max_batches``).
    Returns the number of runs spent."""
    runs = 0
    previous = None
    for _ in range(max_batches):
        median = float(np.median(_timed_runs(runner, batch)))
        runs += batch
        if runs >= min_runs and previous is not None and abs(median - previous) <= stable_within * previous:
            break
        previous = median
    return runs


def interleaved(runners: list[tuple[str, Runner]], warmup: int = 5, runs_per_round: int = 5,
                min_rounds: int = 5, max_rounds: int = 50, min_seconds: float = 2.0,
                stable_within: float = 0.02, progress: bool = True) -> list[Timing]:
    """Warm each runner up until stable (at least ``warmup`` runs), then time them side by side
    until the medians settle (at most ``max_rounds`` rounds)."""
    timings = [Timing(name) for name, _ in runners]
    for timing, (_, runner) in zip(timings, runners):
        timing.warmup_runs = warm_up(runner, min_runs=warmup) if warmup > 0 else 0
    from ..report.progress import Progress

    with Progress("timing rounds", max_rounds, silent=not progress) as bar:
        start = clock()
        previous = None
        for rnd in range(max_rounds):
            bar.advance()
            order = list(range(len(runners)))
            shift = rnd % len(order)
            order = order[shift:] + order[:shift]
            for i in order:
                times = _timed_runs(runners[i][1], runs_per_round)
                timings[i].samples_ms.extend(times)
                timings[i].round_medians_ms.append(float(np.median(times)))
            medians = [float(np.median(t.round_medians_ms)) for t in timings]
            done = rnd + 1 >= min_rounds and clock() - start >= min_seconds
            if done and previous is not None and all(abs(m - p) <= stable_within * p for m, p in zip(medians, previous)):
                break
            previous = medians
    return timings


def ratios(base: Timing, other: Timing) -> dict:
    """Per-round latency ratio other/base: median and min–max."""
    r = np.array(other.round_medians_ms) / np.array(base.round_medians_ms)
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
