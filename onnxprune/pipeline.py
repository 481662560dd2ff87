"""Pipeline: runs passes in order over one PruningContext; ``prune()`` is the default pipeline."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import onnx

from .context import PruningContext
from .errors import BadInputError
from .io import LAZY_LOAD_THRESHOLD, copy_file, load_model, save_model, uses_external_data
from .memory import current_rss, peak_rss
from .ops.registry import runtime_extensions
from .options import PruneOptions, default_of
from .passes.base import PassLike, check_pipeline, run_pass
from .passes.builtin import PROVIDERS, default_passes
from .runtime.session import check_input_shapes, graph_input_dims


class Pipeline:
    """An ordered list of passes. ``run`` checks that each pass's ``requires`` are provided by
    an earlier one (``PipelineError`` otherwise, before anything runs), then runs them in order
    and returns the context they filled in."""

    def __init__(self, passes: Iterable[PassLike] | None = None):
        self.passes = list(passes) if passes is not None else None
        if self.passes is not None:
            check_pipeline(self.passes, PROVIDERS)

    def run(self, model: onnx.ModelProto | str | os.PathLike, options: PruneOptions | None = None) -> PruningContext:
        options = (options or PruneOptions()).validate()  # the caller's object is not changed
        passes = self.passes if self.passes is not None else default_passes(options)
        check_pipeline(passes, PROVIDERS)  # again: a pass may have been added to ``self.passes`` since
        source = None
        if not isinstance(model, onnx.ModelProto):
            from .model_config import model_in_folder

            model = model_in_folder(model) or model  # a model folder (genai_config.json names the model)
            source, model = model, load_model(model, runtime_extensions())
        ctx = PruningContext(model=model, options=options, source=source)
        check_weights_only(model, ctx.options)
        check_quantizable(model, ctx.options)
        check_input_shapes(graph_input_dims(model.graph), ctx.options.input_shapes or {})
        start = current_rss()
        for p in passes:
            run_pass(p, ctx)
        ctx.report["memory"] = {"peak_rss": peak_rss(at_least=start), "rss_at_start": start,
                                "weights_in_files": external_bytes(model) if uses_external_data(model) else 0}
        return ctx


def check_weights_only(model: onnx.ModelProto, options: PruneOptions) -> None:
    """Models left in their files (over :data:`io.LAZY_LOAD_THRESHOLD`) run in ONNX Runtime from
    their files (calibration, activation criteria, reconstruction, FLOPs and params targets:
    weights handed over by reference, trials never serialized). A latency target times whole
    candidate models, and ``--quantize`` runs ONNX Runtime's quantizer, which loads the model
    whole: both are refused."""
    if not uses_external_data(model):
        return
    target = getattr(options, "target", None)
    latency = target is not None and target.kind == "latency"
    if latency or getattr(options, "quantize", None) is not None:
        size = external_bytes(model)
        what = "a latency target times whole models" if latency else "--quantize loads the model whole"
        raise BadInputError(f"model has {size / 1e9:.1f} GB of weights, over the {LAZY_LOAD_THRESHOLD / 1e9:.1f} GB "
                            f"onnxprune loads whole: {what} (prune it with a ratio, --target-flops or "
                            "--target-params; calibration data and activation criteria work)")


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's weights left in their files."""
    return sum(int(e.value) for t in model.graph.initializer for e in t.external_data if e.key == "length")


def check_quantizable(model: onnx.ModelProto, options: PruneOptions) -> None:
    """``--quantize``, before any work: its tools are installed, and the model is not quantized already."""
    method = getattr(options, "quantize", None)
    if method is None:
        return
    from .runtime.quantize import check_available, quantized_ops

    check_available(method)
    found = quantized_ops(model)
    if found:
        raise BadInputError(f"--quantize {method}: the model is quantized already ({', '.join(found)}); prune it "
                            "without --quantize (its quantized weights are pruned as they are)")


@dataclass
class PruneResult:
    """The pruned model and what was done to it."""

    model: onnx.ModelProto
    context: PruningContext
    #: the file the model was read from, if any
    source: str | os.PathLike | None = None

    @property
    def report(self) -> dict:
        return self.context.report

    @property
    def unchanged(self) -> bool:
        """Nothing was removed and nothing quantized: the output is the input model as it is."""
        selection = self.context.selection
        return (selection is None or not selection.changes) and self.context.quantized is None

    def save(self, path: str | os.PathLike) -> list:
        """Write the pruned model; an unchanged model read from one file (no external data) is
        written as a byte copy of that file. Returns the files written (the model, and its data file if any)."""
        if self.model is self.context.model and self.source is not None:
            copy_file(self.source, path)
            written = [Path(path)]
        elif self.model is self.context.quantized:
            written = save_model(self.model, path)
        else:
            written = save_model(self.model, path, graph=self.context.pruned_graph)  # weights may wait in the graph
        try:
            return written + self._save_configs(path)
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise

    def _save_configs(self, path: str | os.PathLike) -> list[Path]:
        """The config files beside the input (``model_config``), updated, beside the output; not
        where that is the input's own file (a warning says so)."""
        from .model_config import config_outputs, same_file, write_config

        written: list[Path] = []
        for config, target in config_outputs(self.context.model_configs, path):
            if same_file(target, config.path):
                self.context.warnings.append(f"{config.file_name} not updated: the output is in the input's folder; "
                                             f"write the model to another folder (-o) to get its updated {config.file_name}")
                continue
            try:
                written.extend(write_config(config, target))  # with its companions (tokenizer files)
            except BaseException:
                for p in written:
                    p.unlink(missing_ok=True)
                raise
        return written


def prune(model: onnx.ModelProto | str | os.PathLike, options: PruneOptions | None = None, *,
          log: Callable[[str], None] | None = None, work_dir: str | os.PathLike | None = None,
          **values: Any) -> PruneResult:
    """Prune MODEL; the input is never modified.

    The keyword arguments are ``PruneOptions``' fields (the CLI's prune flags by their field
    names; they override ``options``). Either ``ratio`` (default 0.3): that fraction of every
    prunable group's channels; or one target: ``target_latency`` ("50ms", or a number of ms)
    measured on ``provider`` with ``threads`` (or predicted from ``latency_table``, a profile of
    the target device), ``target_flops`` / ``target_params`` (a fraction of the original such as
    0.5, or a count such as "2G"). A target search raises ``TargetUnreachable`` when even the most
    pruning it allows misses; when the model already meets the target,
    ``report["search"]["status"]`` is ``"already_met"`` and nothing is removed.

    ``calibration`` (a .npz path, a folder of .npz or images, a .py defining ``load_data()``, or an
    iterable of input dicts) enables activation criteria (default ``obs``), reconstruction
    (default ``lstsq``; ``"bias"`` or ``"none"`` to change it) and the fidelity report.
    ``benchmark=True`` times the original and the pruned model side by side at the end
    (``report["benchmark"]``). ``quantize="int8"``, ``"int8-dynamic"`` or ``"int4"`` then quantizes the pruned model
    with ONNX Runtime's quantizer (``result.model`` is the quantized one; ``report["quantization"]``),
    its temporary files in ``work_dir`` (default: the system's temporary folder). ``log``
    receives progress lines of a latency search.
    """
    unknown = sorted(set(values) - {f.name for f in fields(PruneOptions)})
    if unknown:
        raise TypeError(f"prune() got an unexpected keyword argument '{unknown[0]}'")
    options = replace(options, **values) if options is not None else PruneOptions(**values)
    options = options.validate()
    from .passes.builtin import default_passes

    ctx = Pipeline(default_passes(options, log, work_dir)).run(model, options)
    shipped = ctx.quantized if ctx.quantized is not None else ctx.pruned
    return PruneResult(shipped, ctx, None if isinstance(model, onnx.ModelProto) else model)


def _signature() -> inspect.Signature:
    """prune()'s signature as ``help()`` and editors show it: one keyword per option field."""
    base = inspect.signature(prune)
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [p for p in base.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(f.name, keyword, default=default_of(f.name), annotation=f.type)
               for f in fields(PruneOptions)]
    return base.replace(parameters=params)


prune.__signature__ = _signature()
