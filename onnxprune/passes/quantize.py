"""The quantize pass: fewer weights, then fewer bits each, as one build step.

After pruning and reconstruction, ``options.quantize`` quantizes the pruned model with ONNX
Runtime's own tools (``runtime/quantize.py``): static int8 QDQ on the same calibration data,
dynamic int8 without it, or int4 weights. The report's ``quantization`` gives what was done, the
size of each step's model and, with calibration data, the quantized model's fidelity against the
original, as ``fidelity`` gives the pruned one's.
"""

from __future__ import annotations

from ..analysis.cache_io import cut_feeds
from ..context import PruningContext
from .base import Pass


def io_cuts(ctx: PruningContext) -> dict:
    """The graph inputs/outputs the pruning resized (KV cache), for feeding the pruned model."""
    if ctx.analysis is None or ctx.selection is None:
        return {}
    return ctx.analysis.plan.io_cuts(ctx.selection.removed)


class CutBatches:
    """Calibration batches as the pruned model takes them (re-iterable)."""

    def __init__(self, calibration, cuts: dict):
        self.calibration, self.cuts = calibration, cuts

    def __iter__(self):
        for batch in self.calibration:
            yield cut_feeds(batch, self.cuts)


class Quantize(Pass):
    """Quantize the pruned (and refit) model; ``work_dir`` holds the quantizer's temporary files
    (the output's folder; None: the system's temporary folder)."""

    name = "quantize"
    requires = ("pruned",)
    provides = ("quantized",)

    def __init__(self, work_dir=None):
        self.work_dir = work_dir

    def run(self, ctx: PruningContext) -> None:
        from ..fidelity import output_fidelity
        from ..runtime.quantize import quantize

        method = ctx.options.quantize
        if method is None or ctx.pruned is None:
            return
        calibrated = method == "int8" and ctx.calibration is not None
        batches = CutBatches(ctx.calibration, io_cuts(ctx)) if calibrated else None
        done = quantize(ctx.pruned, method, batches, self.work_dir)
        report = {"method": method, "scheme": done.scheme, "layers": done.layers, "samples": done.samples,
                  "pruned": ctx.pruned is not ctx.model,
                  "calibration": ctx.calibration.description if calibrated else None,
                  "bytes": {"original": ctx.model.ByteSize(), "pruned": ctx.pruned.ByteSize(),
                            "quantized": done.model.ByteSize()}}
        ctx.report["quantization"] = report
        if done.layers == 0:
            what = "MatMul layers with a constant weight" if method == "int4" else "Conv, Gemm or MatMul layers"
            report["bytes"]["quantized"] = None
            ctx.warnings.append(f"--quantize {method}: ONNX Runtime's quantizer quantized no layer (it quantizes "
                                f"{what}); the output is the pruned model, not quantized")
            return
        ctx.quantized = done.model
        if ctx.calibration is not None:
            report["fidelity"] = output_fidelity(ctx.model.SerializeToString(), done.model.SerializeToString(),
                                                 ctx.calibration, threads=ctx.options.threads, io_cuts=io_cuts(ctx))
