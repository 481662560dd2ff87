"""The ``onnxprune`` command. ``onnxprune MODEL ...`` prunes; ``onnxprune analyze MODEL`` explains.

Errors are one line on stderr and a non-zero exit code (2: bad input); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import BadInputError, OnnxPruneError
from .scoring import CRITERIA

class DefaultToPrune(click.Group):
    """A group whose default command is ``prune``: ``onnxprune MODEL`` means ``onnxprune prune MODEL``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """Usage errors (a bad option value, a directory for MODEL) are one line too, exit code 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        from .tempfiles import Interrupted, signals_handled

        try:
            with signals_handled():  # SIGTERM/SIGINT: temporary files removed, then exit 128 + signal
                rv = super().main(*args, standalone_mode=False, **kwargs)
        except Interrupted as exc:
            click.echo(f"error: {exc}; temporary files removed", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            click.echo(f"error: {exc.format_message().rstrip('.')} (see --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(exc: Exception, debug: bool) -> None:
    if debug:
        raise exc
    code = exc.exit_code if isinstance(exc, OnnxPruneError) else 1
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, OnnxPruneError):
        message = f"internal error: {type(exc).__name__}: {message} (rerun with --debug for details)"
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _nothing_to_prune(ctx, model: Path) -> str:
    groups = ctx.analysis.groups
    if groups:
        return (f"nothing to prune: every channel group ({len(groups)}) is blocked (`onnxprune analyze {model}` "
                "says why); the output is the same model")
    from .analysis.rules import WEIGHT_LAYERS, quantized_weight

    quantized = sum(1 for n in ctx.graph.nodes if quantized_weight(n))
    if quantized:
        return (f"nothing to prune: the weights of {quantized} layers are quantized (DequantizeLinear), and "
                "quantized weights are not pruned; the output is the same model")
    return (f"nothing to prune: no {', '.join(WEIGHT_LAYERS[:-1])} or {WEIGHT_LAYERS[-1]} layer with constant "
            "weights; the output is the same model")


@click.group(cls=DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxprune")
def main() -> None:
    """Structured pruning of ONNX models: remove whole channels and neurons.

    \b
    onnxprune MODEL --ratio 0.3 [-o OUT]   prune 30% of every prunable group
    onnxprune analyze MODEL                list channel groups and why some are blocked
    onnxprune MODEL --target-latency 50ms  prune until the measured latency meets the target
    onnxprune bench MODEL [MODEL ...]      measure latency, side by side
    onnxprune profile MODEL -o table.json  time layers at every width, for --latency-table
    """
    from .report.progress import enable

    enable(True)  # progress lines on a terminal; commands with --quiet turn them off


_CONFIG_FILE = "onnxprune.config_file"


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """``--config FILE.toml``: option values by their long names (``target-latency = "50ms"``);
    flags on the command line win."""
    if value is None:
        return None
    ctx.meta[_CONFIG_FILE] = value  # an input of the run: no output may replace it
    try:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        data = tomllib.loads(Path(value).read_text())
    except FileNotFoundError:
        _fail(BadInputError(f"--config {value}: file not found"), False)
    except RecursionError:
        _fail(BadInputError(f"--config {value}: not valid TOML (nested too deeply)"), False)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _fail(BadInputError(f"--config {value}: not valid TOML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"),
              False)
    names = {}
    for p in ctx.command.params:
        for opt in getattr(p, "opts", []):
            if opt.startswith("--") and p.name not in ("config", "debug"):
                names[opt[2:]] = p.name
    defaults = {}
    for key, item in data.items():
        if key not in names:
            _fail(BadInputError(f"--config {value}: unknown option '{key}' (use the long flag names, e.g. "
                                "target-latency)"), False)
        defaults[names[key]] = [str(v) for v in item] if isinstance(item, list) else item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _log_to_tty(message: str) -> None:
    if sys.stderr.isatty():
        click.echo(message, err=True)


_provider_option = click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                                help="ONNX Runtime execution provider.")
_threads_option = click.option("--threads", type=int, default=None,
                               help="Intra-op threads [default: ONNX Runtime's choice].")
_input_shape_option = click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
                                   help="Shape for an input with dynamic dimensions, e.g. input:1x3x224x224 "
                                   "(repeatable).")


def _prune_kinds(value: str) -> tuple[str, ...]:
    from .analysis import KINDS

    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise BadInputError(f"--prune: unknown kind '{','.join(bad) or value}' (choose from {', '.join(KINDS)})")
    return kinds


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise BadInputError(f"--threads must be positive, got {threads}")


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output path [default: MODEL.pruned.onnx beside the input].")
@click.option("--ratio", type=float, default=None,
              help="Fraction of each prunable group's channels to remove, in [0, 1) [default: 0.3 without a target].")
@click.option("--target-latency", metavar="TIME",
              help="Prune until the measured p50 latency is at most TIME (50ms, 0.05s, 500us; a bare number is ms).")
@click.option("--target-flops", metavar="AMOUNT",
              help="Prune to at most AMOUNT FLOPs: a fraction of the original (0.5, 50%) or a count (2G, 1.5e9).")
@click.option("--target-params", metavar="AMOUNT",
              help="Prune to at most AMOUNT parameters: a fraction of the original (0.5, 50%) or a count (10M).")
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path),
              help="Use a latency table from 'onnxprune profile' on the target device instead of measuring here.")
@_provider_option
@_threads_option
@_input_shape_option
@click.option("--criterion", type=click.Choice(CRITERIA),
              default=None, help="Channel importance [default: l1; obs with --calib (fluctuation with "
              "--no-reconstruct)]. l1/l2: weight norms; "
              "bn: BatchNorm |gamma|; activation: mean |x|; apoz: 1 - zero fraction; wanda: |W|·‖X‖; "
              "fluctuation: Var(X)·‖W‖² (FLAP); obs: error left after a least-squares refit (structured OBS).")
@click.option("--prune", "prune_kinds", default="heads,channels", show_default=True, metavar="KINDS",
              help="What to remove: heads (whole attention heads), channels (conv channels, MLP units), or both.")
@click.option("--round-to", type=int, default=1, show_default=True,
              help="Keep channel counts multiples of N (groups narrower than N are left whole).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Calibration data: .npz keyed by input names, a folder of .npz, or a .py defining load_data().")
@click.option("--calib-samples", type=int, default=None, help="Use at most N calibration samples.")
@click.option("--calib-rows", type=int, default=256, show_default=True,
              help="Input rows per layer and sample for the refit's statistics (conv patches beyond it are subsampled).")
@click.option("--reconstruct", "reconstruct", type=click.Choice(["lstsq", "bias"]), default=None,
              help="How to repair the layers that lost inputs [default with --calib: lstsq].")
@click.option("--no-reconstruct", is_flag=True, help="Do not repair layers, even with --calib.")
@click.option("--force", is_flag=True, hidden=True,
              help="Accepted for old scripts: an earlier output is replaced anyway, and an input never is.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON report (groups, params, FLOPs, latency, fidelity, settings, versions).")
@click.option("--bench", "benchmark", is_flag=True,
              help="Time the original and the pruned model side by side at the end (--provider, --threads).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page with the report's plots.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True, expose_value=False,
              callback=_load_config, help="TOML file of option values by long name; flags override it.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def prune_cmd(model: Path, output: Path | None, ratio: float | None, target_latency: str | None,
              target_flops: str | None, target_params: str | None, latency_table: Path | None, provider: str,
              threads: int | None, input_shapes: tuple[str, ...], criterion: str | None, prune_kinds: str, round_to: int,
              calib: Path | None, calib_samples: int | None, calib_rows: int, reconstruct: str | None, no_reconstruct: bool,
              force: bool, benchmark: bool, report_path: Path | None, html_path: Path | None, quiet: bool,
              debug: bool) -> None:
    """Prune MODEL and write the smaller model: a ratio of every group, or to a latency/FLOPs/params target."""
    try:
        if quiet:
            from .report.progress import enable

            enable(False)
        from .pipeline import prune
        from .report.summary import prune_summary
        from .runtime.session import parse_input_shapes
        from .search.targets import parse_target

        if ratio is not None and not 0 <= ratio < 1:
            raise BadInputError(f"--ratio must be in [0, 1), got {ratio}")
        if round_to < 1:
            raise BadInputError(f"--round-to must be a positive integer, got {round_to}")
        if no_reconstruct and reconstruct:
            raise BadInputError("--reconstruct and --no-reconstruct contradict each other")
        _check_threads(threads)
        target = parse_target(target_latency, target_flops, target_params)
        if target is not None and ratio is not None:
            raise BadInputError(f"--ratio and --target-{target.kind} are alternatives: give one")
        if latency_table is not None and (target is None or target.kind != "latency"):
            raise BadInputError("--latency-table needs --target-latency")
        out = output or model.with_name(model.stem + ".pruned.onnx")
        _run_files(model, calib=calib, latency_table=latency_table).write_model(out) \
            .write("--report", report_path).write("--html", html_path).check()
        result = prune(model, ratio=ratio, target_latency=target_latency, target_flops=target_flops,
                       target_params=target_params, criterion=criterion, round_to=round_to, calibration=calib,
                       calib_samples=calib_samples, calib_rows=calib_rows, reconstruct="none" if no_reconstruct else reconstruct,
                       provider=provider, threads=threads, input_shapes=parse_input_shapes(input_shapes),
                       latency_table=latency_table, log=None if quiet else _log_to_tty, benchmark=benchmark,
                       prune=_prune_kinds(prune_kinds))
        say = (lambda text: None) if quiet else click.echo
        for warning in result.context.warnings:
            if not quiet:
                click.echo(f"warning: {warning}", err=True)
        search = result.report.get("search")
        written = not (search and search["status"] == "already_met")
        if written:
            _save_loadable(result, out, model, quiet)
        if report_path is not None or html_path is not None:
            _write_reports(result.context, report_path, html_path, model, out, written)
        say(prune_summary(result.context))
        if not result.context.analysis.prunable_groups:
            say(_nothing_to_prune(result.context, model))
        say(f"wrote {out}" if written else "nothing written: the model already meets the target")
    except Exception as exc:  # one line, right exit code
        _fail(exc, debug)


def _run_files(*models: Path, calib: Path | None = None, latency_table: Path | None = None):
    """What this run reads (see paths.RunFiles): the models with their data, calibration data,
    a latency table, the --config file; the command adds what it writes and checks."""
    from .paths import RunFiles

    files = RunFiles()
    for m in models:
        files.read_model(m, "the input model" if len(models) == 1 else f"input model {m}")
    files.read_data("the calibration data", calib).read("the latency table", latency_table)
    return files.read("the --config file", click.get_current_context().meta.get(_CONFIG_FILE))


def _save_loadable(result, out: Path, model: Path, quiet: bool) -> None:
    """Write the pruned model, then load it in ONNX Runtime; a model it refuses is removed."""
    from .runtime.load_check import check_loads

    written = result.save(out)
    try:
        warning = check_loads(written, model)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    if warning:
        result.context.warnings.append(warning)  # in the report too
        if not quiet:
            click.echo(f"warning: {warning}", err=True)


def _write_reports(ctx, json_path: Path | None, html_path: Path | None, model: Path, out: Path,
                   written: bool) -> None:
    import json

    from .io import atomic_write_text
    from .report.html import render_html
    from .report.json_report import build_report, to_json

    text = to_json(build_report(ctx, str(model), str(out), written))
    if json_path is not None:
        atomic_write_text(json_path, text)
    if html_path is not None:
        atomic_write_text(html_path, render_html(json.loads(text)))


@main.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="Do not shorten node lists and reasons.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def analyze_cmd(model: Path, verbose: bool, debug: bool) -> None:
    """List MODEL's channel groups: channels, nodes, params, FLOPs, and why blocked ones are."""
    try:
        from .passes.builtin import Analyze, Normalize
        from .pipeline import Pipeline
        from .report.summary import analysis_table

        ctx = Pipeline([Normalize(), Analyze()]).run(model)
        before = ctx.report["before"]
        click.echo(analysis_table(ctx.analysis, before["params"], before["flops"], verbose))
    except Exception as exc:
        _fail(exc, debug)


@main.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_provider_option
@_threads_option
@_input_shape_option
@click.option("--rounds", type=int, default=50, show_default=True, help="At most this many interleaved rounds.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def bench_cmd(models: tuple[Path, ...], provider: str, threads: int | None, input_shapes: tuple[str, ...],
              rounds: int, json_path: Path | None, debug: bool) -> None:
    """Measure latency (p50/p90/p99, throughput); with several models, interleaved with ratios."""
    try:
        from .bench import bench_models, format_bench

        _check_threads(threads)
        _run_files(*models).write("--json", json_path).check()
        result = bench_models(models, provider=provider, threads=threads, input_shapes=input_shapes,
                              max_rounds=rounds)
        click.echo(format_bench(result))
        if json_path:
            import json

            from .io import atomic_write_text

            atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    except Exception as exc:
        _fail(exc, debug)


@main.command("profile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the latency table (JSON).")
@_provider_option
@_threads_option
@_input_shape_option
@click.option("--round-to", type=int, default=1, show_default=True, help="Only time widths that are multiples of N.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def profile_cmd(model: Path, output: Path, provider: str, threads: int | None, input_shapes: tuple[str, ...],
                round_to: int, debug: bool) -> None:
    """Time MODEL's layers at every candidate width on this device, for --latency-table elsewhere."""
    try:
        from .io import atomic_write_text
        from .runtime.session import parse_input_shapes
        from .search.latency_table import profile_model

        _check_threads(threads)
        if round_to < 1:
            raise BadInputError(f"--round-to must be a positive integer, got {round_to}")
        _run_files(model).write("-o", output).check()
        table = profile_model(model, provider, threads, parse_input_shapes(input_shapes), round_to,
                              progress=lambda i, n: _log_to_tty(f"profiled {i}/{n} layers"))
        atomic_write_text(output, table.to_json())
        click.echo(f"profiled {len(table.layers)} layers on {provider} (baseline p50 {table.baseline_ms:.3f} ms); "
                   f"wrote {output}")
    except Exception as exc:
        _fail(exc, debug)


if __name__ == "__main__":  # pragma: no cover
    main()
