"""The benchmark pass: the original and the pruned model timed side by side."""

from __future__ import annotations

from ..context import PruningContext
from .base import Pass


class Benchmark(Pass):
    """Time both models interleaved on ``options.provider``/``threads`` (inputs of
    ``options.input_shapes`` or the first calibration batch) and report p50s and the ratio; with
    ``--quantize``, the quantized model too, in the same rounds."""

    name = "benchmark"
    requires = ("pruned",)
    provides = ()

    def __init__(self, min_seconds: float = 3.0, max_rounds: int = 50):
        self.min_seconds = min_seconds
        self.max_rounds = max_rounds

    def run(self, ctx: PruningContext) -> None:
        from ..runtime.session import make_runner
        from ..runtime.timing import interleaved, ratios
        from .search import latency_feeds

        if ctx.pruned is None:
            return
        opts = ctx.options
        feeds = None if opts.input_shapes else latency_feeds(ctx)
        original = make_runner(ctx.model.SerializeToString(), opts.provider, opts.threads, opts.input_shapes,
                               feeds=feeds)
        runners = [("original", original),
                   ("pruned", make_runner(ctx.pruned.SerializeToString(), opts.provider, opts.threads,
                                          feeds=original.feeds))]
        if ctx.quantized is not None:
            runners.append(("quantized", make_runner(ctx.quantized.SerializeToString(), opts.provider, opts.threads,
                                                     feeds=original.feeds)))
        timings = interleaved(runners, min_seconds=self.min_seconds, max_rounds=self.max_rounds)
        orig_t, pruned_t = timings[0], timings[1]
        ctx.report["benchmark"] = {"provider": opts.provider, "threads": opts.threads,
                                   "original": orig_t.summary(), "pruned": pruned_t.summary(),
                                   "ratio": ratios(orig_t, pruned_t)}
        if ctx.quantized is not None:
            ctx.report["benchmark"].update(quantized=timings[2].summary(), quantized_ratio=ratios(orig_t, timings[2]))
