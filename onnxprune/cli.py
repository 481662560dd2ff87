"""The ``onnxprune`` command. ``onnxprune MODEL ...`` prunes; ``onnxprune analyze MODEL`` explains.

Errors are one line on stderr and a non-zero exit code (2: bad input); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_args import field_option, help_sections, options_from_cli, prune_options
from .errors import BadInputError, OnnxPruneError, PassError
from .options import INPUT, OUTPUT, check_round_to, check_threads


class GroupedHelp(click.Command):
    """A command whose ``--help`` lists its options under headings (``sections``: title, option
    names), in the order a first-time user needs them; options not named go under "Other"."""

    def __init__(self, *args, sections: tuple[tuple[str, tuple[str, ...]], ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter, own_help: bool = True) -> None:
        shown = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        if not own_help:  # shown inside the group's help, which has its own --help
            shown = [p for p in shown if p is not self.get_help_option(ctx)]
        records = {p.name: p.get_help_record(ctx) for p in shown}
        named = {name for _, names in self.sections for name in names}
        groups = [(title, [records[n] for n in names if records.get(n)]) for title, names in self.sections]
        groups.append(("Other options", [r for n, r in records.items() if r and n not in named]))
        for title, rows in groups:
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


#: ``onnxprune MODEL --help`` and ``onnxprune --help``: the prune options by what they are for (the
#: fields' own headings), with the command's own options placed among them
PRUNE_HELP_SECTIONS = help_sections({INPUT: ("*", "config"),
                                     OUTPUT: ("output", "force", "report_path", "html_path", "*", "quiet", "debug")})


class DefaultToPrune(click.Group):
    """A group whose default command is ``prune``: ``onnxprune MODEL`` means ``onnxprune prune MODEL``.
    Its ``--help`` shows the prune options too (the command most users want), then the others."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "MODEL [OPTIONS]")
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="   or: ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        prune = self.commands["prune"]
        prune.format_options(click.Context(prune, info_name="prune", parent=ctx), formatter, own_help=False)
        self.format_commands(ctx, formatter)
        with formatter.section("Options of onnxprune itself"):
            formatter.write_dl([r for p in self.get_params(ctx) if (r := p.get_help_record(ctx))])
        formatter.write_paragraph()
        formatter.write_text("Each command has its own --help (onnxprune analyze --help).")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands with their first sentence whole (click cuts them at 45 characters)."""
        rows = [(name, self.commands[name].get_short_help_str(limit=200)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl([(name, "Prune MODEL; the default command (onnxprune MODEL means onnxprune prune MODEL)."
                                 if name == "prune" else text) for name, text in rows])

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
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `onnxprune`: the help, not an error
            click.echo(exc.format_message())
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


def _debug_log(debug: bool) -> None:
    """``--debug``: the library's debug records too, with their tracebacks."""
    if debug:
        from .report.log import install

        install(debug=True)


def _fail(exc: Exception, debug: bool) -> None:
    if debug:
        raise exc
    code = exc.exit_code if isinstance(exc, OnnxPruneError) else 1
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, OnnxPruneError):
        message = f"internal error: {type(exc).__name__}: {message} (rerun with --debug for details)"
    elif isinstance(exc, PassError) and exc.__cause__ is not None:  # a bug inside a pass: its traceback helps
        message += " (rerun with --debug for details)"
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _nothing_to_prune(ctx, model: Path) -> str:
    """Why the output is the input: no prunable group (and why), or nothing selected."""
    from .analysis.explain import nothing_to_prune

    why = nothing_to_prune(ctx.analysis)
    if why:
        return f"nothing to prune: {why} (`onnxprune analyze {model}` says more); the output is the same model"
    return "nothing removed at these settings; the output is the same model"


@click.group(cls=DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxprune")
def main() -> None:
    """Structured pruning of ONNX models: remove whole channels and neurons.

    \b
    onnxprune MODEL --calib DATA [-o OUT]  prune 30% of every prunable group, keeping accuracy
                                           (DATA: .npz keyed by input names, a folder of images)
    onnxprune MODEL --ratio 0.5            from the weights alone: smaller, but not accurate
    onnxprune analyze MODEL                list channel groups and why some are blocked
    onnxprune sensitivity MODEL --calib D  output error of cutting each group or block alone
    onnxprune MODEL --target-latency 50ms  prune until the measured latency meets the target
    onnxprune bench MODEL [MODEL ...]      measure latency, side by side
    onnxprune profile MODEL -o table.json  time layers at every width, for --latency-table
    """
    from .report.log import install
    from .report.progress import enable

    enable(True)  # progress lines on a terminal; commands with --quiet turn them off
    install()  # the library's log records: one line each on stderr


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
        from .paths import check_regular

        check_regular("the --config file", Path(value))  # a FIFO would block the read forever
        data = tomllib.loads(Path(value).read_text())
    except BadInputError as exc:
        _fail(exc, False)
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
        param = next(p for p in ctx.command.params if p.name == names[key])
        _check_config_type(value, key, item, param)
        if isinstance(item, list):  # a list for an option that takes one value: comma-separated (calib-mean)
            item = [str(v) for v in item] if param.multiple else ",".join(str(v) for v in item)
        elif param.multiple:  # one value for an option given several times (input-shape = "x:1x3x8x8")
            item = [item]
        defaults[names[key]] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _check_config_type(config: Path, key: str, item, param: click.Parameter) -> None:
    """TOML values are typed: click would take ``true`` as 1 and ``8.5`` as 8 for an integer
    option, so a value whose type does not fit the option is refused, naming it."""
    flag = getattr(param, "is_flag", False)
    integer = isinstance(param.type, (click.types.IntParamType, click.IntRange))
    if isinstance(item, bool) != flag or (integer and isinstance(item, float)):
        wanted = "true or false" if flag else "an integer" if integer else "a value, not true/false"
        _fail(BadInputError(f"--config {config}: '{key}' must be {wanted}, got {item!r}"), False)


def _log_to_tty(message: str) -> None:
    if sys.stderr.isatty():
        from .report.progress import write

        write(message)  # above a progress bar, if one is shown


_provider_option = field_option("provider")
_threads_option = field_option("threads")
_input_shape_option = field_option("input_shapes")


@main.command("prune", cls=GroupedHelp, sections=PRUNE_HELP_SECTIONS)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output path [default: MODEL.pruned.onnx beside the input]; for a model folder (an ONNX Runtime "
              "GenAI folder), the output folder [default: MODEL.pruned].")
@prune_options
@click.option("--force", is_flag=True, hidden=True,
              help="Accepted for old scripts: an earlier output is replaced anyway, and an input never is.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON report (groups, params, FLOPs, latency, fidelity, settings, versions).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page with the report's plots.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True, expose_value=False,
              callback=_load_config, help="TOML file of option values by long name; flags override it.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def prune_cmd(model: Path, output: Path | None, force: bool, report_path: Path | None, html_path: Path | None,
              quiet: bool, debug: bool, **values) -> None:
    """Prune MODEL and write the smaller model: a ratio of every group, or to a latency/FLOPs/params target."""
    try:
        _debug_log(debug)
        if quiet:
            from .report.progress import enable

            enable(False)
        from .pipeline import prune

        options = options_from_cli(values).validate()
        model, out, made = _model_and_output(model, output)
        try:
            _run_files(model, calib=options.calibration, latency_table=options.latency_table).write_model(out) \
                .write("--report", report_path).write("--html", html_path).check()
            result = prune(model, options, log=None if quiet else _log_to_tty, work_dir=_existing_folder(out.parent))
            _print_result(result, model, out, report_path, html_path, quiet)
        except BaseException:
            if made is not None and not any(made.iterdir()):  # the output folder this run made, left empty
                made.rmdir()
            raise
    except Exception as exc:  # one line, right exit code
        _fail(exc, debug)


def _existing_folder(folder: Path) -> Path:
    """The output's folder, or its nearest existing parent (the output's folder may not exist
    yet): where temporary files of the run go (``--quantize``'s)."""
    folder = folder.absolute()
    while not folder.is_dir() and folder.parent != folder:
        folder = folder.parent
    return folder


def _model_and_output(model: Path, output: Path | None) -> tuple[Path, Path, Path | None]:
    """(the model file, the output file, the output folder this run made or None). MODEL may be
    a model folder (``model_config.model_in_folder``): the output is then a folder, holding the
    pruned model under its own name and the folder's updated config and tokenizer files."""
    from .model_config import folder_output, model_in_folder

    inner = model_in_folder(model)
    if inner is None:
        return model, output or model.with_name(model.stem + ".pruned.onnx"), None
    out = folder_output(model, inner, output)
    made = None
    if out.parent.exists() and not out.parent.is_dir():
        raise BadInputError(f"output {out.parent}: is not a directory (MODEL is a folder: -o names a folder)")
    if not out.parent.exists() and out.parent.parent.is_dir():
        out.parent.mkdir()
        made = out.parent
    return inner, out, made


def _print_result(result, model: Path, out: Path, report_path: Path | None, html_path: Path | None,
                  quiet: bool) -> None:
    """Write the model and the reports, then say what was done: warnings, summary, what was written."""
    from .report.summary import prune_summary

    say = (lambda text: None) if quiet else click.echo
    for warning in result.context.warnings:
        if not quiet:
            click.echo(f"warning: {warning}", err=True)
    search = result.report.get("search")
    written = not (search and search["status"] == "already_met")
    files = _save_loadable(result, out, model, quiet) if written else []
    if report_path is not None or html_path is not None:
        try:
            _write_reports(result.context, report_path, html_path, model, out, written)
        except BaseException:  # all or nothing: no model left behind without the reports asked for
            for path in files:
                path.unlink(missing_ok=True)
            raise
    say(prune_summary(result.context))
    if written and result.unchanged:
        say(_nothing_to_prune(result.context, model))
    if result.context.options.calibration is None and not quiet and _removed_any(result.context):
        click.echo(NO_CALIBRATION_WARNING, err=True)  # last but one: where it is read
    say(f"wrote {out}" if written else "nothing written: the model already meets the target")


def _run_files(*models: Path, calib: Path | None = None, latency_table: Path | None = None):
    """What this run reads (see paths.RunFiles): the models with their data, calibration data,
    a latency table, the --config file; the command adds what it writes and checks."""
    from .paths import RunFiles

    files = RunFiles()
    for m in models:
        files.read_model(m, "the input model" if len(models) == 1 else f"input model {m}")
    files.read_data("the calibration data", calib).read("the latency table", latency_table)
    return files.read("the --config file", click.get_current_context().meta.get(_CONFIG_FILE))


def _save_loadable(result, out: Path, model: Path, quiet: bool) -> list[Path]:
    """Write the pruned model, then load it in ONNX Runtime; a model it refuses is removed.
    Returns the files written."""
    from .runtime.load_check import check_loads

    known = len(result.context.warnings)
    written = result.save(out)
    for warning in result.context.warnings[known:]:  # what saving found (a config file left alone)
        if not quiet:
            click.echo(f"warning: {warning}", err=True)
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
    return written


NO_CALIBRATION_WARNING = (
    "warning: pruned without calibration data: accuracy is not preserved; give --calib DATA (a few hundred real "
    "inputs: .npz keyed by input names, a folder of images or .npz, or a .py with load_data())")


def _removed_any(ctx) -> bool:
    return ctx.selection is not None and (bool(ctx.selection.blocks)
                                          or any(kept < total for kept, total in ctx.selection.kept.values()))


def _write_reports(ctx, json_path: Path | None, html_path: Path | None, model: Path, out: Path,
                   written: bool) -> None:
    import json

    from .io import atomic_write_text
    from .report.html import render_html
    from .report.json_report import build_report, to_json

    text = to_json(build_report(ctx, str(model), str(out), written))
    page = render_html(json.loads(text)) if html_path is not None else None  # both made before either is written
    if json_path is not None:
        atomic_write_text(json_path, text)
    if html_path is not None:
        try:
            atomic_write_text(html_path, page)
        except BaseException:
            if json_path is not None:
                json_path.unlink(missing_ok=True)
            raise


@main.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="Do not shorten node lists and reasons.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def analyze_cmd(model: Path, verbose: bool, debug: bool) -> None:
    """List MODEL's channel groups: channels, nodes, params, FLOPs, and why blocked ones are."""
    try:
        _debug_log(debug)
        from .passes.builtin import Analyze, Normalize
        from .pipeline import Pipeline
        from .report.summary import analysis_table

        ctx = Pipeline([Normalize(), Analyze()]).run(model)
        before = ctx.report["before"]
        click.echo(analysis_table(ctx.analysis, before["params"], before["flops"], verbose))
        extra = _uncovered_and_why(ctx.analysis, verbose)
        if extra:
            click.echo(extra)
    except Exception as exc:
        _fail(exc, debug)


def _uncovered_and_why(analysis, verbose: bool, shown: int = 5) -> str:
    """The weights no group covers and the constants pruning can un-share (all with -v, else the
    first few), and why nothing is prunable."""
    from .analysis.explain import nothing_to_prune, uncovered_weights

    weights = uncovered_weights(analysis)
    lines = [""]
    if weights:
        lines.append(f"weights no group covers ({len(weights)}; they are kept as they are):")
        lines.extend(f"  {w}" for w in (weights if verbose else weights[:shown]))
        if not verbose and len(weights) > shown:
            lines.append(f"  ... and {len(weights) - shown} more (-v lists all)")
    shared = [p for p in analysis.plans if p.diverges]
    if shared:
        lines.append(f"constants that pruning can un-share ({len(shared)}; a group is kept whole where the copy "
                     "would hold more than its removal frees):")
        for plan in shared if verbose else shared[:shown]:
            groups = sorted(plan.groups)
            listed = ", ".join(str(g) for g in (groups if verbose else groups[:8]))
            more = f" (+{len(groups) - 8})" if not verbose and len(groups) > 8 else ""
            lines.append(f"  {plan.tensor.name} ({plan.elements} params, read {len(plan.cuts)} times; groups "
                         f"{listed}{more})")
        if not verbose and len(shared) > shown:
            lines.append(f"  ... and {len(shared) - shown} more (-v lists all)")
    why = nothing_to_prune(analysis)
    if why:
        lines.append(f"nothing to prune: {why}")
    return "\n".join(lines) if len(lines) > 1 else ""


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

        check_threads(threads)
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


@main.command("sensitivity")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", type=click.Path(path_type=Path), required=True, help="Calibration data, as for pruning.")
@click.option("--calib-samples", type=int, help="Use at most N calibration samples for the scores.")
@click.option("--criterion", help="Channel importance that orders each group's cut [default: fluctuation].")
@click.option("--prune", "kinds", default="heads,channels,blocks", show_default=True,
              help="What to sweep: heads, channels, blocks.")
@click.option("--fractions", default="0.9,0.75,0.5,0.25", show_default=True, help="Kept fractions to sweep.")
@click.option("--samples", type=int, default=64, show_default=True, help="Calibration samples each point is measured on.")
@click.option("--reconstruct", type=click.Choice(["none", "bias", "lstsq"]), default="none", show_default=True,
              help="Refit each point as a prune would before measuring it (one reconstruction per point: slower).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the table as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a page with one curve per group.")
@_threads_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sensitivity_cmd(model: Path, calib: Path, calib_samples: int | None, criterion: str | None, kinds: str,
                    fractions: str, samples: int, reconstruct: str, json_path: Path | None,
                    html_path: Path | None, threads: int | None, debug: bool) -> None:
    """Measure, per group and block, the output error of cutting it alone to each kept fraction."""
    try:
        _debug_log(debug)
        from .io import atomic_write_text
        from .options import PruneOptions, numbers
        from .report.sensitivity_page import render_sensitivity
        from .sensitivity import sensitivity, text_table

        kept = numbers(fractions, "--fractions", float, ",", (1, 20))
        kept = kept if isinstance(kept, list) else [kept]
        if samples < 1:
            raise BadInputError(f"--samples must be positive, got {samples}")
        options = PruneOptions(calibration=calib, calib_samples=calib_samples, criterion=criterion, prune=kinds,
                               threads=threads, reconstruct=reconstruct).validate()
        _run_files(model, calib=calib).write("--json", json_path).write("--html", html_path).check()
        result = sensitivity(model, options, tuple(kept), samples, progress=None)
        for warning in result["warnings"]:
            click.echo(f"warning: {warning}", err=True)
        click.echo(text_table(result))
        if json_path is not None:
            import json

            atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
            click.echo(f"wrote {json_path}")
        if html_path is not None:
            atomic_write_text(html_path, render_sensitivity(result, str(model)))
            click.echo(f"wrote {html_path}")
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

        check_threads(threads)
        check_round_to(round_to)
        _run_files(model).write("-o", output).check()
        table = profile_model(model, provider, threads, parse_input_shapes(input_shapes), round_to)  # a bar on a TTY
        atomic_write_text(output, table.to_json())
        click.echo(f"profiled {len(table.layers)} layers on {provider} (baseline p50 {table.baseline_ms:.3f} ms); "
                   f"wrote {output}")
    except Exception as exc:
        _fail(exc, debug)


if __name__ == "__main__":  # pragma: no cover
    main()
