"""How close the pruned model's outputs stay to the original's, on calibration data.

Reported with every pruning that has calibration data: per output, the
mean cosine similarity of each sample's flattened output and the relative L2 error. A user who
asked for 50 ms wants to know what it cost, in the model's own terms.

The first ``MAX_SAMPLES`` calibration samples are compared, counted in samples (not batches),
so the figure does not depend on how the samples were packed in files. Samples whose original
output is not finite (the model's own NaN or Inf) are left out and counted; a pruned output
that is not finite where the original's is counts with cosine 0 (and is counted too).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from .calibration.data import runs_of

#: calibration samples compared (the first ones); enough for a stable mean
MAX_SAMPLES = 256


class _OutputTally:
    """Per output: the per-sample cosines and the squared error and norm, as batches arrive."""

    def __init__(self):
        self.cosines: list[float] = []
        self.sq_err = self.sq_norm = 0.0
        self.skipped = 0  # samples whose original output is not finite
        self.broken = 0  # samples whose pruned output is not finite where the original's is

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        xs = x.reshape(len(x), -1) if x.ndim else x.reshape(1, 1)
        ys = y.reshape(len(y), -1) if y.ndim else y.reshape(1, 1)
        good_x = np.isfinite(xs).all(axis=1)
        good_y = np.isfinite(ys).all(axis=1)
        self.skipped += int((~good_x).sum())
        broken = good_x & ~good_y
        self.broken += int(broken.sum())
        self.cosines.extend([0.0] * int(broken.sum()))
        xs, ys = xs[good_x & good_y], ys[good_x & good_y]
        norms = np.linalg.norm(xs, axis=1) * np.linalg.norm(ys, axis=1)
        cos = np.where(norms > 0, (xs * ys).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)
        self.cosines.extend(np.clip(cos, -1.0, 1.0).tolist())
        self.sq_err += float(((xs - ys) ** 2).sum())
        self.sq_norm += float((xs ** 2).sum())

    def summary(self) -> dict | None:
        if not self.cosines:
            return None
        return {"mean_cosine": float(np.mean(self.cosines)), "min_cosine": float(np.min(self.cosines)),
                "relative_error": float(np.sqrt(self.sq_err / self.sq_norm)) if self.sq_norm else 0.0}


def _original_outputs(first, batches: Iterable[dict[str, np.ndarray]], max_samples: int,
                      io_cuts: dict) -> tuple[list[str], list[tuple[dict, list]], int]:
    """The original's output names, and per run the pruned model's feeds and the original's
    outputs (cut as ``io_cuts`` says), for the first ``max_samples`` samples; and their count."""
    from .analysis.cache_io import cut_feeds

    names = [o.name for o in first.get_outputs()]
    wanted = {i.name for i in first.get_inputs()}
    held, samples = [], 0
    for run in runs_of(batches):
        if samples >= max_samples:
            break
        feeds = {k: v for k, v in run.feeds.items() if k in wanted}
        outputs = dict(zip(names, first.run(None, feeds)))
        held.append((cut_feeds(feeds, io_cuts), list(cut_feeds(outputs, io_cuts).values())))
        samples += run.samples
    return names, held, samples


def output_fidelity(original: bytes | gs.Graph, pruned: bytes | gs.Graph, batches: Iterable[dict[str, np.ndarray]],
                    max_samples: int = MAX_SAMPLES, threads: int | None = None, io_cuts: dict | None = None) -> dict:
    """Run both models on the batches; per output: mean cosine, minimum cosine, relative L2 error.
    ``io_cuts`` (``Plan.io_cuts``): graph inputs/outputs the pruning resized (a KV cache): the
    pruned model gets those inputs cut, and its outputs are compared with the original's cut.
    A model given as a graph (one whose weights were left in their files) runs with its weights
    handed to ONNX Runtime by reference, never serialized."""
    io_cuts = io_cuts or {}
    from .runtime.capture import analysis_options, graph_session
    from .runtime.session import onnxruntime

    ort = onnxruntime()
    opts = analysis_options(threads)

    def session(m):
        return graph_session(m, threads) if isinstance(m, gs.Graph) \
            else ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])

    # One session at a time: a model left in its files and its pruned copy are never both mapped
    # (or built); the original's outputs of the compared samples are held in between.
    names, held, samples = _original_outputs(session(original), batches, max_samples, io_cuts)
    count = len(held)
    second = session(pruned)
    tallies = {n: _OutputTally() for n in names}
    while held:
        feeds, a = held.pop(0)
        for name, x, y in zip(names, a, second.run(None, feeds)):
            x, y = np.asarray(x), np.asarray(y)
            if x.shape != y.shape or not np.issubdtype(x.dtype, np.floating):
                continue
            with np.errstate(all="ignore"):
                tallies[name].add(x.astype(np.float64), y.astype(np.float64))
    outputs = {name: s for name, t in tallies.items() if (s := t.summary()) is not None}
    result = {"batches": count, "samples": samples, "outputs": outputs}
    non_finite = {name: {"original": t.skipped, "pruned": t.broken} for name, t in tallies.items()
                  if t.skipped or t.broken}
    if non_finite:
        result["non_finite"] = non_finite
    return result
