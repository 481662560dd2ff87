"""The built-in passes: small objects with a name and ``run(ctx)``, composed by a Pipeline."""

from __future__ import annotations

from dataclasses import replace

from ..analysis import analyze_graph, restrict
from ..context import PruningContext
from ..errors import BadInputError
from ..io import check_opset, is_deferred, uses_external_data
from ..metrics import count_flops_at, count_params
from ..normalize import normalize
from ..model_config import find_configs, pruned_counts, tie_groups
from ..rewrite import apply, check_not_bigger, export_checked, export_unchanged, io_shape_changes, note_kept_whole
from ..scoring import needs_activations, needs_grams, score_groups, sink_tensors
from ..selection import block_count, kept_count, select_blocks, select_by_counts, select_by_ratio
from .base import Pass


class Normalize(Pass):
    """Fold constants into initializers and infer shapes."""

    name = "normalize"
    requires = ("model",)
    provides = ("opset", "graph")

    def run(self, ctx: PruningContext) -> None:
        ctx.opset = check_opset(ctx.model)
        ctx.graph = normalize(ctx.model)
        ctx.report["before"] = {"params": count_params(ctx.graph),  # FLOPs as Rewrite counts them (analyze)
                                "flops": count_flops_at(ctx.graph, ctx.options.input_shapes).flops}


class Analyze(Pass):
    """Find channel groups and the reasons blocked ones are refused."""

    name = "analyze"
    requires = ("graph", "opset")
    provides = ("analysis",)

    def run(self, ctx: PruningContext) -> None:
        ctx.analysis = analyze_graph(ctx.graph, ctx.opset, cache_io=not ctx.options.keep_io_shapes)
        restrict(ctx.analysis, ctx.options.prune)
        ctx.model_configs = find_configs(ctx.source)
        tie_groups(ctx.analysis, ctx.model_configs)


#: The criterion used when calibration data is given and none is named: structured OBS, which
#: ranks channels by the error a refit leaves. With no reconstruction at all its ranking answers
#: the wrong question (on the digits CNN it then does worse), and ``fluctuation`` is used instead.
DEFAULT_CALIBRATED_CRITERION = "obs"
DEFAULT_UNREFIT_CRITERION = "fluctuation"


def resolve_options(ctx: PruningContext) -> None:
    """Fill the defaults that depend on whether calibration data was given (a new frozen copy;
    every value is checked by ``PruneOptions.validate``)."""
    opts = ctx.options.validate()
    criterion, reconstruct = opts.criterion, opts.reconstruct
    if criterion is None:
        if opts.calibration is None:
            criterion = "l1"
        else:
            refit = reconstruct != "none"
            criterion = DEFAULT_CALIBRATED_CRITERION if refit else DEFAULT_UNREFIT_CRITERION
    if reconstruct is None:
        reconstruct = "lstsq" if opts.calibration is not None else "none"
    if reconstruct != "none" and opts.calibration is None:
        raise BadInputError("reconstruction needs calibration data (--calib)")
    ctx.options = replace(opts, criterion=criterion, reconstruct=reconstruct)


class Calibrate(Pass):
    """Read calibration data and reduce the activations entering each consuming layer to
    per-channel statistics, streaming (memory does not grow with the number of samples)."""

    name = "calibrate"
    requires = ("graph", "analysis")
    provides = ("calibration", "stats", "original")

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
            source, description = opts.calibration_source(), None
        ctx.calibration = Calibration(source, input_specs(ctx.graph), opts.calib_samples, description)
        if opts.reconstruct != "none":
            ctx.original = ctx.graph  # the rewrite works on a copy
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
    requires = ("analysis",)
    provides = ("scores",)

    def run(self, ctx: PruningContext) -> None:
        resolve_options(ctx)
        if needs_activations(ctx.options.criterion) and not ctx.stats and sink_tensors(ctx.analysis):
            raise BadInputError(f"criterion '{ctx.options.criterion}' needs the calibrate pass before score")
        notes: list[str] = []
        ctx.scores = score_groups(ctx.analysis, ctx.options.criterion, ctx.stats, notes)
        if notes:
            ctx.warnings.append(f"criterion '{ctx.options.criterion}': {len(notes)} group(s) scored by a fallback: "
                                + " | ".join(notes))
        if "blocks" in ctx.options.prune:
            score_residual_blocks(ctx)


def score_residual_blocks(ctx: PruningContext) -> None:
    """Score the removable blocks: on calibration data where given, else from their weights (warned)."""
    from ..scoring.blocks import block_scores_from_data, block_scores_from_weights

    if not ctx.analysis.removable_blocks:
        return
    if ctx.options.calibration is not None and ctx.calibration is not None:
        ctx.block_scores = block_scores_from_data(ctx.analysis, ctx.graph, ctx.calibration, ctx.options.threads)
        return
    ctx.warnings.append("blocks are scored from their output projections' weights (no calibration data): "
                        "give --calib to choose blocks by what removing them changes")
    ctx.block_scores = block_scores_from_weights(ctx.analysis)


class Select(Pass):
    """Remove ``ratio`` of every prunable group, lowest scores first."""

    name = "select"
    requires = ("analysis", "scores")
    provides = ("selection",)

    def run(self, ctx: PruningContext) -> None:
        ratio = ctx.options.ratio  # checked by PruneOptions.validate
        if ctx.options.allocate == "global":
            ctx.selection = select_by_counts(ctx.analysis, ctx.scores, global_counts(ctx, ratio))
        else:
            ctx.selection = select_by_ratio(ctx.analysis, ctx.scores, ratio, ctx.options.round_to)
        if "blocks" in ctx.options.prune and ctx.block_scores:
            count = block_count(ctx.analysis, ratio, ctx.options.blocks)
            ctx.selection.blocks = select_blocks(ctx.analysis, ctx.block_scores, count)


def global_counts(ctx: PruningContext, ratio: float) -> dict[int, int]:
    """Per-group kept counts for ``--allocate global``: each group alone cut and measured on
    calibration data (``search.sensitivity``), the uniform ratio's parameters spread by it."""
    from ..search.allocate import allocate_by_sensitivity
    from ..search.sensitivity import sweep

    curves, _ = sweep(ctx.analysis, ctx.graph, ctx.model.SerializeToString(), ctx.scores, ctx.calibration,
                      blocks=False, threads=ctx.options.threads, refit=ctx.options.reconstruct)
    groups = ctx.analysis.prunable_groups
    counts = allocate_by_sensitivity(ctx.analysis, {c.id: c for c in curves}, ratio, flop_shapes(ctx) or None)
    if ctx.options.round_to > 1:
        counts = {g.id: kept_count(g.channels, 1 - counts[g.id] / g.channels, ctx.options.round_to) for g in groups}
    ctx.report["allocation"] = {"mode": "global", "counts": {str(k): v for k, v in counts.items()},
                                "sensitivity": {str(c.id): c.sensitivity for c in curves}}
    return counts


class Rewrite(Pass):
    """Slice weights, fix attributes and shape constants, re-infer shapes, validate."""

    name = "rewrite"
    requires = ("graph", "analysis", "selection")
    provides = ("pruned", "pruned_graph")

    def run(self, ctx: PruningContext) -> None:
        note_kept_whole(ctx.analysis, ctx.selection)
        pruned_counts(ctx.analysis, ctx.model_configs, ctx.selection.kept)
        ctx.warnings.extend(note for c in ctx.model_configs for note in c.notes())
        ctx.report["model_configs"] = [{"file": c.file_name, "changes": c.changes()} for c in ctx.model_configs]
        shapes = flop_shapes(ctx)
        before = count_flops_at(ctx.graph, shapes)
        ctx.report["before"]["flops"] = before.flops
        if not ctx.selection.changes:
            # Nothing to remove: the input is the output, never normalized or re-validated (its
            # weights are only moved when they live in external data files).
            ctx.pruned, ctx.pruned_graph = ctx.model, None
            if uses_external_data(ctx.model):
                ctx.pruned_graph, ctx.pruned = export_unchanged(ctx.model)
            ctx.report["after"] = dict(ctx.report["before"])
            ctx.report["flops_at"] = _flops_at(ctx, before, before)
            return
        # a new graph: ctx.graph stays the original
        graph = apply(ctx.analysis.plan, ctx.selection.removed, ctx.graph, ctx.selection.blocks)
        ctx.pruned_graph = graph
        after = count_flops_at(graph, shapes)
        ctx.report["after"] = {"params": count_params(graph), "flops": after.flops}
        ctx.report["flops_at"] = _flops_at(ctx, before, after)
        ctx.report["io_shapes"] = io_shape_changes(ctx.graph, graph)
        check_not_bigger(ctx.report["before"]["params"], ctx.report["after"]["params"])
        ctx.pruned = export_checked(graph, ctx.model)


def _flops_at(ctx: PruningContext, before, after) -> dict:
    """The report's ``flops_at``: the shapes both counts used, where they came from, what stayed unknown."""
    return {"shapes": before.shapes, "source": flop_shapes_source(ctx), "dynamic_as_one": before.dynamic_as_one,
            "uncounted": sorted(set(before.uncounted) | set(after.uncounted))}


def flop_shapes(ctx: PruningContext) -> dict[str, list[int]]:
    """The input shapes FLOPs are counted at: ``input_shapes``, else a calibration sample's."""
    if ctx.options.input_shapes:
        return dict(ctx.options.input_shapes)
    from .search import latency_feeds

    feeds = latency_feeds(ctx)
    return {name: list(value.shape) for name, value in (feeds or {}).items()}


def flop_shapes_source(ctx: PruningContext) -> str:
    if ctx.options.input_shapes:
        return "input-shape"
    return "calibration" if ctx.calibration is not None else "model"


class Reconstruct(Pass):
    """Refit the layers that lost input channels on calibration data (bias or least squares)."""

    name = "reconstruct"
    requires = ("analysis", "selection", "calibration", "pruned_graph")
    provides = ("pruned",)

    def run(self, ctx: PruningContext) -> None:
        from ..reconstruct import NON_FINITE, reconstruct

        mode = ctx.options.reconstruct
        if mode in (None, "none") or ctx.original is None or not ctx.selection.changes:
            return
        plan = ctx.analysis.plan
        layers = refit_layers(ctx)
        layers = reconstruct(ctx.original, ctx.pruned_graph, layers, ctx.calibration, mode=mode,
                             ridge=ctx.options.ridge, threads=ctx.options.threads,
                             rows_per_sample=ctx.options.calib_rows, io_cuts=plan.io_cuts(ctx.selection.removed))
        ctx.pruned_graph.cleanup(remove_unused_graph_inputs=False).toposort()
        before, after = ctx.report["before"]["params"], count_params(ctx.pruned_graph)
        if after > before and not is_deferred(ctx.pruned):
            # A refit weight that other layers share is copied, and refit biases are added: never
            # at the price of a model bigger than its input. The rewrite's model stands.
            ctx.pruned_graph = None
            ctx.warnings.append(f"reconstruction skipped: the refit model would have {after} parameters, more "
                                f"than the input's {before}")
            return
        check_not_bigger(before, after)
        ctx.pruned = export_checked(ctx.pruned_graph, ctx.model)
        ctx.report["after"]["params"] = after
        ctx.report["reconstruction"] = {"mode": mode, "layers": [vars(r) for r in layers]}
        skipped = [r.node for r in layers if r.skipped == NON_FINITE]
        if skipped:
            ctx.warnings.append(f"reconstruction left {len(skipped)} layer(s) as they are: {NON_FINITE}: "
                                + ", ".join(skipped))


def refit_layers(ctx: PruningContext) -> list[tuple]:
    """The layers to refit, in graph order, as ``reconstruct`` takes them: those that lost input
    channels, and the output projection of the first block kept after each removed block (its
    target is the original stream, which the removed block no longer adds to); none that went
    with a removed block."""
    plan = ctx.analysis.plan
    keep = plan.keep_fn(ctx.selection.removed)
    inputs: dict[str, list[int]] = {}
    outputs = {}
    for cut in plan.cuts:
        if cut.role == "weight_in":
            mask = keep(cut.atoms)
            if not mask.all():
                inputs[cut.node] = [int(mask.sum()), len(mask)]
        elif cut.role == "weight_out":
            outputs[cut.node] = keep(cut.atoms)
    gone = {name for b in ctx.analysis.blocks if b.id in ctx.selection.blocks for name in b.nodes}
    after = _after_removed_blocks(ctx.analysis.removable_blocks, ctx.selection.blocks)
    sizes = {n.name: n.inputs[1].shape for n in ctx.original.nodes if n.name in after and len(n.inputs) > 1}
    for name in after - set(inputs):
        width = _input_width(sizes.get(name))
        if width:
            inputs[name] = [width, width]
    return [(n.name, *inputs[n.name], outputs.get(n.name)) for n in ctx.original.nodes
            if n.name in inputs and n.name not in gone]


def _after_removed_blocks(blocks, removed: set[int]) -> set[str]:
    """The projections of the first kept block after each removed one (graph order)."""
    names, pending = set(), False
    for block in blocks:
        if block.id in removed:
            pending = True
        elif pending:
            names.update(block.projection)
            pending = False
    return names


def _input_width(weight_shape) -> int | None:
    """Input rows of a layer's weight as the reconstruction counts them (only reported)."""
    if not weight_shape or len(weight_shape) < 2:
        return None
    return int(weight_shape[1] if len(weight_shape) > 2 else weight_shape[0])


def default_passes(options=None, log=None, work_dir=None) -> list[Pass]:
    """The standard pipeline; with a target in ``options``, a search replaces the ratio selection,
    and with ``quantize`` a quantize pass follows verify (its temporary files in ``work_dir``)."""
    from .benchmark import Benchmark
    from .quantize import Quantize
    from .search import Search
    from .verify import Verify

    options = options.validate() if options is not None else None  # target_flops="50%" is a target too
    select = Search(log, work_dir) if options is not None and options.target is not None else Select()
    passes = [Normalize(), Analyze(), Calibrate(), Score(), select, Rewrite(), Reconstruct(), Verify()]
    if options is not None and options.quantize is not None:
        passes.append(Quantize(work_dir))
    if options is not None and options.benchmark:
        passes.append(Benchmark())
    return passes


def _providers() -> dict[str, str]:
    from .benchmark import Benchmark
    from .quantize import Quantize
    from .search import Search
    from .verify import Verify

    out: dict[str, str] = {}
    for cls in (Normalize, Analyze, Calibrate, Score, Select, Search, Rewrite, Reconstruct, Verify, Quantize,
                Benchmark):
        for name in cls.provides:
            out.setdefault(name, cls.__name__)
    return out


#: context field -> the built-in pass that first provides it (for PipelineError's message)
PROVIDERS = _providers()
