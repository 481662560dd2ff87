"""``onnxprune sensitivity``: where a model can be cut, measured before cutting it.

Runs the pipeline up to the scores (calibration statistics captured once), then the sweep of
``search.sensitivity``: every group alone cut to each kept fraction, every removable block
removed alone, each compared with the original on calibration samples.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

from .options import PruneOptions
from .search.sensitivity import FRACTIONS, SWEEP_SAMPLES, sweep, table


def sensitivity(model, options: PruneOptions, fractions=FRACTIONS, samples: int = SWEEP_SAMPLES,
                progress: Callable[[str], None] | None = None) -> dict:
    """The sensitivity table (``search.sensitivity.table``) of ``model`` on ``options.calibration``."""
    from .errors import BadInputError
    from .passes.builtin import Analyze, Calibrate, Normalize, Score
    from .pipeline import Pipeline

    if options.calibration is None:
        raise BadInputError("sensitivity needs calibration data (--calib)")
    if any(not 0 < f < 1 for f in fractions):
        raise BadInputError(f"--fractions must be kept fractions in (0, 1), got {', '.join(map(str, fractions))}")
    start = time.perf_counter()
    # without a refit, the scores (and the points) are for the cut as it is
    options = replace(options, reconstruct=options.reconstruct or "none")
    ctx = Pipeline([Normalize(), Analyze(), Calibrate(), Score()]).run(model, options)
    curves, measured = sweep(ctx.analysis, ctx.graph, ctx.model.SerializeToString(), ctx.scores, ctx.calibration,
                             fractions, blocks="blocks" in ctx.options.prune, max_samples=samples,
                             threads=ctx.options.threads, progress=progress, refit=ctx.options.reconstruct)
    out = table(curves, fractions, measured, time.perf_counter() - start)
    out["criterion"] = ctx.options.criterion
    out["reconstruct"] = ctx.options.reconstruct
    out["calibration"] = ctx.calibration.description
    out["warnings"] = list(ctx.warnings)
    return out


def text_table(result: dict, shown: int | None = None) -> str:
    """The table as the terminal shows it: one row per group or block, most sensitive first."""
    fractions = result["fractions"]
    head = f"{'kind':>8}  {'id':>4}  {'sens.':>7}  " + "  ".join(f"{f:>6.0%}" for f in fractions) \
        + f"  {'removed':>7}  name"
    lines = [f"sensitivity: relative output error on {result['samples']} calibration samples, each group alone "
             f"cut to the kept fraction, each block removed alone (refit: {result.get('reconstruct', 'none')}); "
             f"{result['seconds']:.1f} s", head]
    for row in result["rows"][:shown]:
        by = {round(p["fraction"], 4): p["error"] for p in row["points"]}
        block = row["kind"] == "block"
        cells = [None if block else by.get(round(f, 4)) for f in fractions]
        text = "  ".join(f"{c:>6.4f}" if c is not None else f"{'':>6}" for c in cells)
        removed = f"{row['points'][0]['error']:>7.4f}" if block else f"{'':>7}"
        lines.append(f"{row['kind']:>8}  {row['id']:>4}  {row['sensitivity']:>7.4f}  {text}  {removed}  "
                     f"{row['name'][:60]}")
    return "\n".join(lines)
