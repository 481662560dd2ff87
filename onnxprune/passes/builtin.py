"""The built-in passes: small objects with a name and ``run(ctx)``, composed by a Pipeline."""

from __future__ import annotations

from ..analysis import analyze_graph, restrict
from ..context import PruningContext
from ..errors import BadInputError
from ..io import check_opset
from ..metrics import count_flops, count_params
from ..scoring import CRITERIA, needs_activations, needs_grams, score_groups, sink_tensors
from ..selection import select_by_ratio
from .normalize import normalize
from .rewrite import export_checked, rewrite


class Pass:
    """One step of the pipeline. Subclasses set ``name`` and implement ``run``."""

    name = "pass"

    def run(self, ctx: PruningContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize(Pass):
    """Fold constants into initializers and infer shapes."""

    name = "normalize"

    def run(self, ctx: PruningContext) -> None:
        ctx.opset = check_opset(ctx.model)
        ctx.graph = normalize(ctx.model)
        ctx.report["before"] = {"params": count_params(ctx.graph), "flops": count_flops(ctx.graph)}


class Analyze(Pass):
    """Find channel groups and the reasons blocked ones are refused."""

    name = "analyze"

    def run(self, ctx: PruningContext) -> None:
        ctx.analysis = analyze_graph(ctx.graph, ctx.opset)
        restrict(ctx.analysis, ctx.options.prune)


#: The criterion used when calibration data is given and none is named: structured OBS, which
#: ranks channels by the error a refit leaves. With no reconstruction at all its ranking answers
#: the wrong question (on the digits CNN it then does worse), and ``fluctuation`` is used instead.
DEFAULT_CALIBRATED_CRITERION = "obs"
DEFAULT_UNREFIT_CRITERION = "fluctuation"
RECONSTRUCT_MODES = ("none", "bias", "lstsq")


def resolve_options(ctx: PruningContext) -> None:
    """Fill the defaults that depend on whether calibration data was given."""
    opts = ctx.options
    if opts.criterion is None:
        if opts.calibration is None:
            opts.criterion = "l1"
        else:
            refit = opts.reconstruct != "none"
            opts.criterion = DEFAULT_CALIBRATED_CRITERION if refit else DEFAULT_UNREFIT_CRITERION
    if opts.criterion not in CRITERIA:
        raise BadInputError(f"unknown criterion '{opts.criterion}' (choose from {', '.join(CRITERIA)})")
    if opts.reconstruct is None:
        opts.reconstruct = "lstsq" if opts.calibration is not None else "none"
    if opts.reconstruct not in RECONSTRUCT_MODES:
        raise BadInputError(f"unknown reconstruction '{opts.reconstruct}' (choose from {', '.join(RECONSTRUCT_MODES)})")
    if opts.reconstruct != "none" and opts.calibration is None:
        raise BadInputError("reconstruction needs calibration data (--calib)")


class Calibrate(Pass):
    """Read calibration data and reduce the activations entering each consuming layer to
    per-channel statistics, streaming (memory does not grow with the number of samples)."""

    name = "calibrate"

    def run(self, ctx: PruningContext) -> None:
        from ..calibration.collect import collect_stats
        from ..calibration.data import Calibration, input_specs

        resolve_options(ctx)
        opts = ctx.options
        if opts.calibration is None:
            if not needs_activations(opts.criterion):
                return
            ctx.warnings.append(f"criterion '{opts.criterion}' needs activations and no calibration data was given: "
                                "using random synthetic inputs (give --calib for meaningful scores)")
            source, description = _synthetic_batches(ctx.graph), "synthetic random inputs"
        else:
            source, description = opts.calibration, None
        if opts.calib_rows < 1:
            raise BadInputError(f"--calib-rows must be positive, got {opts.calib_rows}")
        ctx.calibration = Calibration(source, input_specs(ctx.graph), opts.calib_samples, description)
        if opts.reconstruct != "none":
            import onnx_graphsurgeon as gs

            ctx.original = gs.import_onnx(gs.export_onnx(ctx.graph, do_type_check=False))  # rewrite edits in place
        if not needs_activations(opts.criterion):
            return
        ctx.stats = collect_stats(ctx.analysis, ctx.graph, ctx.calibration, grams=needs_grams(opts.criterion),
                                  rows_per_sample=opts.calib_rows)


def _synthetic_batches(graph) -> list[dict]:
    import numpy as np

    from ..calibration.data import input_specs
    from ..runtime.session import check_input_memory

    rng = np.random.default_rng(0)
    specs = input_specs(graph)
    shapes = {spec.name: [8] + [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape][1:] for spec in specs}
    check_input_memory({spec.name: (shapes[spec.name], spec.dtype) for spec in specs})  # before allocating
    batch = {}
    for spec in specs:
        if np.issubdtype(spec.dtype, np.floating):
            batch[spec.name] = rng.standard_normal(shapes[spec.name]).astype(spec.dtype)
        else:
            batch[spec.name] = np.ones(shapes[spec.name], dtype=spec.dtype)
    return [batch]


class Score(Pass):
    """Score every channel of every group with the chosen criterion."""

    name = "score"

    def run(self, ctx: PruningContext) -> None:
        resolve_options(ctx)
        if needs_activations(ctx.options.criterion) and not ctx.stats and sink_tensors(ctx.analysis):
            raise BadInputError(f"criterion '{ctx.options.criterion}' needs the calibrate pass before score")
        notes: list[str] = []
        ctx.scores = score_groups(ctx.analysis, ctx.options.criterion, ctx.stats, notes)
        if notes:
            ctx.warnings.append(f"criterion '{ctx.options.criterion}': {len(notes)} group(s) scored by a fallback: "
                                + " | ".join(notes))


class Select(Pass):
    """Remove ``ratio`` of every prunable group, lowest scores first."""

    name = "select"

    def run(self, ctx: PruningContext) -> None:
        ratio = ctx.options.ratio
        if not 0 <= ratio < 1:
            raise BadInputError(f"ratio must be in [0, 1), got {ratio}")
        if ctx.options.round_to < 1:
            raise BadInputError(f"round-to must be a positive integer, got {ctx.options.round_to}")
        ctx.selection = select_by_ratio(ctx.analysis, ctx.scores, ratio, ctx.options.round_to)


class Rewrite(Pass):
    """Slice weights, fix attributes and shape constants, re-infer shapes, validate."""

    name = "rewrite"

    def run(self, ctx: PruningContext) -> None:
        graph = rewrite(ctx.analysis, ctx.selection.removed)
        ctx.pruned_graph = graph
        ctx.pruned = export_checked(graph, ctx.model)
        ctx.report["after"] = {"params": count_params(graph), "flops": count_flops(graph)}


class Reconstruct(Pass):
    """Refit the layers that lost input channels on calibration data (bias or least squares)."""

    name = "reconstruct"

    def run(self, ctx: PruningContext) -> None:
        from ..reconstruct import NON_FINITE, reconstruct

        mode = ctx.options.reconstruct
        if mode in (None, "none") or ctx.original is None or not ctx.selection.removed:
            return
        keep = ctx.analysis.keep_fn(ctx.selection.removed)
        inputs: dict[str, list[int]] = {}
        outputs = {}
        for site in ctx.analysis.sites:
            if site.role == "weight_in":
                mask = keep(site.atoms)
                if not mask.all():
                    inputs[site.node.name] = [int(mask.sum()), len(mask)]
            elif site.role == "weight_out":
                outputs[site.node.name] = keep(site.atoms)
        layers = [(n.name, *inputs[n.name], outputs.get(n.name)) for n in ctx.original.nodes if n.name in inputs]
        layers = reconstruct(ctx.original, ctx.pruned_graph, layers, ctx.calibration, mode=mode,
                             ridge=ctx.options.ridge, rows_per_sample=ctx.options.calib_rows)
        ctx.pruned_graph.cleanup(remove_unused_graph_inputs=False).toposort()
        ctx.pruned = export_checked(ctx.pruned_graph, ctx.model)
        ctx.report["reconstruction"] = {"mode": mode, "layers": [vars(r) for r in layers]}
        skipped = [r.node for r in layers if r.skipped == NON_FINITE]
        if skipped:
            ctx.warnings.append(f"reconstruction left {len(skipped)} layer(s) as they are: {NON_FINITE}: "
                                + ", ".join(skipped))


def default_passes(options=None, log=None) -> list[Pass]:
    """The standard pipeline; with a target in ``options``, a search replaces the ratio selection."""
    from .benchmark import Benchmark
    from .search import Search
    from .verify import Verify

    select = Search(log) if options is not None and options.target is not None else Select()
    passes = [Normalize(), Analyze(), Calibrate(), Score(), select, Rewrite(), Reconstruct(), Verify()]
    if options is not None and options.benchmark:
        passes.append(Benchmark())
    return passes
