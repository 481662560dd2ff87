"""The prune options, defined once: ``PruneOptions`` and, on each field, how the CLI spells it.

The CLI's prune flags (and their grouped ``--help``), ``prune()``'s keyword arguments and the
TOML config keys are all derived from these fields, and all three paths call the one
:meth:`PruneOptions.validate`, so a new option appears everywhere and fails the same way everywhere.
The module knows nothing of click: ``cli_options`` turns the specs into click options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import BadInputError

#: ``--help`` headings of the prune command, in the order a first-time user needs them
INPUT = "Input"
WHAT = "What to prune"
CALIBRATION = "Calibration (keeps accuracy: without it the pruned model is not accurate)"
RECONSTRUCTION = "Reconstruction"
QUANTIZATION = "Quantization (after pruning)"
TARGETS = "Targets (instead of --ratio) and timing"
OUTPUT = "Output and reports"
SECTIONS = (INPUT, WHAT, CALIBRATION, RECONSTRUCTION, QUANTIZATION, TARGETS, OUTPUT)

#: reconstruction modes; "none" is spelled --no-reconstruct on the command line
RECONSTRUCT_MODES = ("none", "bias", "lstsq", "nonlinear")
DEFAULT_RATIO = 0.3
#: ``--quantize`` methods (``runtime/quantize.py`` applies them)
QUANTIZE_METHODS = ("int8", "int8-dynamic", "int4")


@dataclass(frozen=True)
class Flag:
    """How one option is spelled on the command line (and, without the dashes, in TOML).

    ``kind`` is the value's type on the command line: "float", "int", "text", "path", "file",
    "flag", or a tuple of choices (a callable returning them when they live in another module);
    ``cli_default`` the default --help shows where the field's own default is not how the CLI
    spells it; ``alias`` a second flag (name, value it sets, help)."""

    flag: str
    help: str
    group: str
    kind: Any = "text"
    metavar: str | None = None
    show_default: bool = False
    cli_default: Any = None
    multiple: bool = False
    case_sensitive: bool = True
    alias: tuple[str, Any, str] | None = None

    @property
    def key(self) -> str:
        """The TOML key: the long flag without its dashes (``round-to``)."""
        return self.flag[2:]

    def choices(self) -> tuple[str, ...] | None:
        if callable(self.kind):
            return tuple(self.kind())
        return self.kind if isinstance(self.kind, tuple) else None


def _opt(default: Any = None, *, factory: Callable[[], Any] | None = None, **flag: Any) -> Any:
    meta = {"flag": Flag(**flag)} if flag else {}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _criteria() -> tuple[str, ...]:
    from .scoring import CRITERIA

    return tuple(CRITERIA)


def _kinds() -> tuple[str, ...]:
    from .analysis import KINDS

    return tuple(KINDS)


@dataclass(frozen=True)
class PruneOptions:
    """Settings shared by the CLI, the Python API and the TOML config (same names, same defaults).

    Frozen: a resolved or validated form is a copy (``dataclasses.replace``); the caller's object
    never changes. Strings are accepted where the CLI gives them (``prune="heads"``,
    ``input_shapes=["x:1x8"]``, ``calib_size="224x320"``); :meth:`validate` turns them into values.
    """

    input_shapes: dict[str, list[int]] = _opt(
        factory=dict, flag="--input-shape", group=INPUT, metavar="NAME:DIMS", multiple=True,
        help="Shape for an input with dynamic dimensions, e.g. input:1x3x224x224 (repeatable).")
    #: None: 0.3 without a target
    ratio: float | None = _opt(
        flag="--ratio", group=WHAT, kind="float",
        help="Fraction of each prunable group's channels to remove, in [0, 1) [default: 0.3 without a target].")
    #: which kinds of group to prune: "heads" (whole attention heads), "channels" (everything else)
    prune: tuple[str, ...] = _opt(
        ("heads", "channels"), flag="--prune", group=WHAT, metavar="KINDS", show_default=True,
        cli_default="heads,channels",
        help="What to remove, comma-separated: heads (whole attention heads), channels (conv channels, MLP "
        "units), blocks (whole residual branches: attention or MLP sub-blocks, ResNet blocks).")
    #: None: "l1" without calibration data, "obs" with it ("fluctuation" without reconstruction)
    #: "uniform": ``ratio`` of every group; "global": per-group ratios from measured sensitivities
    allocate: str = _opt(
        "uniform", flag="--allocate", group=WHAT, kind=("uniform", "global"), show_default=True,
        help="uniform: --ratio of every group; global: the same parameters removed, spread by each group's "
        "measured sensitivity (needs --calib; see 'onnxprune sensitivity').")
    #: None: ``ratio`` of the removable blocks (rounded) when ``prune`` names "blocks"
    blocks: int | None = _opt(
        flag="--blocks", group=WHAT, kind="int", metavar="N",
        help="With --prune blocks: remove N residual blocks (a branch joining the stream through an Add) "
        "[default: --ratio of the removable blocks].")
    criterion: str | None = _opt(
        flag="--criterion", group=WHAT, kind=_criteria,
        help="Channel importance [default: l1; obs with --calib (fluctuation with --no-reconstruct)]. l1/l2: "
        "weight norms; bn: BatchNorm |gamma|; activation: mean |x|; apoz: 1 - zero fraction; wanda: |W|·‖X‖; "
        "fluctuation: Var(X)·‖W‖² (FLAP); obs: error left after a least-squares refit (structured OBS).")
    round_to: int = _opt(
        1, flag="--round-to", group=WHAT, kind="int", show_default=True,
        help="Keep channel counts multiples of N (groups narrower than N are left whole).")
    #: KV-cache graph inputs/outputs (past_key_values.N.key -> present.N.key, see analysis.cache_io)
    #: keep their shapes: the heads they carry are then not pruned
    keep_io_shapes: bool = _opt(
        False, flag="--keep-io-shapes", group=WHAT, kind="flag",
        help="Keep the shapes of KV-cache inputs/outputs (past_key_values.*, present.*): their K/V heads are "
        "then kept [default: heads are pruned and the cache shapes change with them].")
    #: a .npz file, a folder of .npz files or images, a .py file defining load_data(), or an iterable of dicts
    calibration: Any = _opt(
        flag="--calib", group=CALIBRATION, kind="path",
        help="Calibration data: .npz keyed by input names, a folder of .npz or of images, or a .py defining "
        "load_data().")
    calib_samples: int | None = _opt(flag="--calib-samples", group=CALIBRATION, kind="int",
                                     help="Use at most N calibration samples.")
    #: input rows per layer and calibration sample for Gram matrices (conv patches beyond it are subsampled)
    calib_rows: int = _opt(
        256, flag="--calib-rows", group=CALIBRATION, kind="int", show_default=True,
        help="Input rows per layer and sample for the refit's statistics (conv patches beyond it are subsampled).")
    #: for a folder of images: (height, width), layout, channel order, scale, mean, std
    calib_size: tuple[int, int] | None = _opt(
        flag="--calib-size", group=CALIBRATION, metavar="HxW",
        help="Images: height and width (224 or 224x320) [default: the input's static size].")
    calib_layout: str | None = _opt(
        flag="--calib-layout", group=CALIBRATION, kind=("NCHW", "NHWC"), metavar="NCHW|NHWC", case_sensitive=False,
        help="Images: layout [default: NCHW or NHWC, whichever axis of the input holds 1 or 3 channels].")
    calib_bgr: bool = _opt(
        False, flag="--calib-bgr", group=CALIBRATION, kind="flag",
        help="Images: BGR channel order (OpenCV-trained models) [default: RGB; grayscale for a 1-channel input].")
    calib_scale: float | None = _opt(
        flag="--calib-scale", group=CALIBRATION, metavar="S",
        help="Images: multiply pixels (0-255) by S before mean and std [default: 1/255]; 1 keeps 0-255.")
    calib_mean: float | list[float] | None = _opt(
        flag="--calib-mean", group=CALIBRATION, metavar="M[,M,M]",
        help="Images: subtract per channel, after scaling [default: ImageNet 0.485,0.456,0.406; 0.449 for "
        "grayscale].")
    calib_std: float | list[float] | None = _opt(
        flag="--calib-std", group=CALIBRATION, metavar="S[,S,S]",
        help="Images: divide by per channel, after the mean [default: ImageNet 0.229,0.224,0.225; 0.226 for "
        "grayscale]; --calib-mean 0.5 --calib-std 0.5 gives [-1, 1].")
    #: None: "lstsq" with calibration data, "none" without; or "none", "bias", "lstsq"
    reconstruct: str | None = _opt(
        flag="--reconstruct", group=RECONSTRUCTION, kind=("lstsq", "bias", "nonlinear"),
        help="How to repair the layers that lost inputs [default with --calib: lstsq]. nonlinear: lstsq, "
        "then each MLP's two projections fitted together through its activation where that does better "
        "on held-out calibration rows (slower).",
        alias=("--no-reconstruct", "none", "Do not repair layers, even with --calib."))
    #: None: chosen per layer on held-out calibration rows
    ridge: float | None = _opt(
        flag="--ridge", group=RECONSTRUCTION, kind="float", metavar="STRENGTH",
        help="Ridge strength of the least-squares refit [default: chosen per layer on held-out calibration rows].")
    #: after pruning and reconstruction: "int8" (static QDQ with calibration data, dynamic without),
    #: "int8-dynamic" (dynamic whatever the data) or "int4"
    quantize: str | None = _opt(
        flag="--quantize", group=QUANTIZATION, kind=QUANTIZE_METHODS, metavar="int8|int8-dynamic|int4",
        help="Then quantize with ONNX Runtime's quantizer: int8 (static QDQ on the --calib data, dynamic without "
        "it), int8-dynamic (dynamic even with --calib: better for transformers) or int4 (MatMul weights in "
        "blocks of 32, MatMulNBits); a latency target is then met by the quantized model.")
    #: one target instead of ``ratio``: latency ("50ms", or ms), FLOPs or params (a fraction or a count)
    target_latency: str | float | None = _opt(
        flag="--target-latency", group=TARGETS, metavar="TIME",
        help="Prune until the measured p50 latency is at most TIME (50ms, 0.05s, 500us; a bare number is ms).")
    target_flops: str | float | None = _opt(
        flag="--target-flops", group=TARGETS, metavar="AMOUNT",
        help="Prune to at most AMOUNT FLOPs: a fraction of the original (0.5, 50%) or a count (2G, 1.5e9).")
    target_params: str | float | None = _opt(
        flag="--target-params", group=TARGETS, metavar="AMOUNT",
        help="Prune to at most AMOUNT parameters: a fraction of the original (0.5, 50%) or a count (10M).")
    #: a latency table profiled on the target device (``onnxprune profile``) instead of measuring here
    latency_table: Any = _opt(
        flag="--latency-table", group=TARGETS, kind="file",
        help="Use a latency table from 'onnxprune profile' on the target device instead of measuring here.")
    #: where latency is measured (and reconstruction runs): ONNX Runtime provider and intra-op threads
    provider: str = _opt("cpu", flag="--provider", group=TARGETS, kind=("cpu", "cuda"), show_default=True,
                         help="ONNX Runtime execution provider.")
    threads: int | None = _opt(flag="--threads", group=TARGETS, kind="int",
                               help="Intra-op threads [default: ONNX Runtime's choice].")
    #: time the original and the pruned model side by side at the end (the benchmark pass)
    benchmark: bool = _opt(
        False, flag="--bench", group=OUTPUT, kind="flag",
        help="Time the original and the pruned model side by side at the end (--provider, --threads).")
    #: the parsed target (a ``search.Target``); set it directly, or give one ``target_*`` value
    target: Any = None

    def validate(self) -> PruneOptions:
        """Check every value; return the validated copy (parsed values, the target, the default
        ratio). Idempotent. Raises ``BadInputError`` naming the option by its flag."""
        from .search.targets import parse_target

        values = {f.name: check(getattr(self, f.name)) for f in fields(self) if (check := _CHECKS.get(f.name))}
        opts = replace(self, **values)
        target = parse_target(opts.target_latency, opts.target_flops, opts.target_params)
        if target is not None and opts.target is not None and target != opts.target:
            raise BadInputError(f"give one target: target={opts.target.describe()} and --target-{target.kind}")
        target = target or opts.target
        if target is not None and opts.ratio is not None:
            raise BadInputError(f"--ratio and --target-{target.kind} are alternatives: give one")
        if opts.latency_table is not None and (target is None or target.kind != "latency"):
            raise BadInputError("--latency-table needs --target-latency")
        if opts.latency_table is not None and opts.quantize is not None:
            raise BadInputError("--latency-table predicts the float model's latency, not a quantized one's: "
                                "give --target-latency without it to measure the quantized candidates here")
        _check_images(opts)
        if opts.allocate == "global" and (target is not None or opts.calibration is None):
            raise BadInputError("--allocate global spreads --ratio by sensitivities measured on calibration data: "
                                "give --calib and a ratio (not a target)")
        if target is not None and "blocks" in opts.prune and opts.latency_table is not None:
            raise BadInputError("--latency-table predicts channel widths, not residual blocks removed: give "
                                "--target-latency without it to measure candidates with blocks removed here")
        if opts.blocks is not None and "blocks" not in opts.prune:
            raise BadInputError("--blocks needs --prune blocks (with any other kinds: --prune blocks,channels)")
        return replace(opts, target=target, ratio=DEFAULT_RATIO if target is None and opts.ratio is None else opts.ratio)

    def image_options(self) -> dict[str, Any]:
        """The ``calib_*`` image preprocessing values that were set."""
        names = ("calib_size", "calib_layout", "calib_bgr", "calib_scale", "calib_mean", "calib_std")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None and getattr(self, n) is not False}

    def calibration_source(self) -> Any:
        """``calibration`` as given, or an ``ImageFolder`` when a ``calib_*`` image option is set."""
        given = self.image_options()
        if not given:
            return self.calibration
        from .calibration.images import DEFAULT_SCALE, ImageFolder

        return ImageFolder(self.calibration, size=self.calib_size, layout=self.calib_layout, bgr=self.calib_bgr,
                           scale=DEFAULT_SCALE if self.calib_scale is None else self.calib_scale,
                           mean=self.calib_mean, std=self.calib_std)


def option_fields() -> Iterator[tuple[str, Flag]]:
    """(field name, flag) of every option the CLI and TOML expose, in ``--help`` order."""
    for f in fields(PruneOptions):
        if "flag" in f.metadata:
            yield f.name, f.metadata["flag"]


def default_of(name: str) -> Any:
    f = next(f for f in fields(PruneOptions) if f.name == name)
    return f.default_factory() if callable(f.default_factory) else f.default


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ratio(ratio: Any) -> float | None:
    if ratio is None:
        return None
    if not _is_number(ratio) or not 0 <= ratio < 1:  # NaN fails the comparison
        raise BadInputError(f"--ratio must be in [0, 1), got {ratio}")
    return float(ratio)


def check_round_to(round_to: Any) -> int:
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise BadInputError(f"--round-to must be a positive integer, got {round_to}")
    return round_to


def check_threads(threads: Any) -> int | None:
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise BadInputError(f"--threads must be positive, got {threads}")
    return threads


def _check_calib_samples(n: Any) -> int | None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise BadInputError(f"--calib-samples must be a positive integer, got {n}")
    return n


def _check_blocks(n: Any) -> int | None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise BadInputError(f"--blocks must be a non-negative integer, got {n}")
    return n


def _check_calib_rows(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BadInputError(f"--calib-rows must be positive, got {n}")
    return n


def _check_ridge(ridge: Any) -> float | None:
    if ridge is not None and (not _is_number(ridge) or not 0 < ridge < math.inf):
        raise BadInputError(f"--ridge must be a positive number, got {ridge}")
    return None if ridge is None else float(ridge)


def _check_prune(value: Any) -> tuple[str, ...]:
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in _kinds()]
    if bad or not kinds:
        raise BadInputError(f"--prune: unknown kind '{','.join(bad) or text}' (choose from {', '.join(_kinds())})")
    return kinds


def _check_choice(name: str, noun: str, choices: Callable[[], tuple[str, ...]]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is not None and value not in choices():
            raise BadInputError(f"unknown {noun} '{value}' (choose from {', '.join(choices())})")
        return value
    check.__name__ = f"check_{name}"
    return check


def _check_input_shapes(value: Any) -> dict[str, list[int]]:
    if value is None:  # prune(input_shapes=None), as before
        return {}
    if isinstance(value, dict):
        return {str(k): [int(d) for d in v] for k, v in value.items()}
    from .runtime.session import parse_input_shapes

    return parse_input_shapes([value] if isinstance(value, str) else list(value))


def numbers(value: Any, flag: str, kind: type, sep: str, counts: tuple[int, int]) -> Any:
    """``224x320`` / ``0.5,0.5,0.5`` / ``1/255`` (a quotient), or the numbers themselves -> numbers;
    None stays None. One number for int sizes is returned as a list of one."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            values = [kind(v) for v in value.replace(" ", "").split(sep)]
        except ValueError:
            values = []
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        values = [v for v in items if _is_number(v) and (kind is float or isinstance(v, int))]
        values = values if len(values) == len(items) else []
        if sep == "/":  # a quotient only as text
            sep, counts = ",", (1, 1)
    if not counts[0] <= len(values) <= counts[1] or (kind is int and min(values) < 1):
        raise BadInputError(f"{flag} '{value}': expected {counts[0]} to {counts[1]} "
                            f"{'positive integers' if kind is int else 'numbers'} separated by '{sep}'")
    if sep == "/":
        if len(values) == 2 and values[1] == 0:
            raise BadInputError(f"{flag} '{value}': division by zero")
        return values[0] / values[1] if len(values) == 2 else values[0]
    return [kind(v) for v in values] if len(values) > 1 or kind is int else kind(values[0])


def _check_size(value: Any) -> tuple[int, int] | None:
    dims = numbers(value, "--calib-size", int, "x", (1, 2))
    return None if dims is None else tuple(dims * (3 - len(dims)))  # 224: 224x224


def _check_layout(value: Any) -> str | None:
    if value is not None and str(value).upper() not in ("NCHW", "NHWC"):
        raise BadInputError(f"--calib-layout must be NCHW or NHWC, got {value}")
    return None if value is None else str(value).upper()


def _check_images(opts: PruneOptions) -> None:
    """The ``calib_*`` image options describe a folder of images given as ``calibration``."""
    if not opts.image_options():
        return
    if opts.calibration is None:
        raise BadInputError("--calib-size, --calib-layout, --calib-bgr, --calib-scale, --calib-mean and "
                            "--calib-std describe a --calib folder of images: give --calib")
    from .calibration.images import image_files

    folder = opts.calibration
    if not isinstance(folder, (str, Path)) or not Path(folder).is_dir() or not image_files(Path(folder)) \
            or any(Path(folder).glob("*.npz")):
        raise BadInputError(f"--calib {folder}: the --calib-* image options need a folder of images (no .npz)")
    opts.calibration_source()  # its own checks (std not zero, ...) now, before any work


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "input_shapes": _check_input_shapes,
    "ratio": check_ratio,
    "prune": _check_prune,
    "criterion": _check_choice("criterion", "criterion", _criteria),
    "round_to": check_round_to,
    "blocks": _check_blocks,
    "allocate": _check_choice("allocate", "allocation", lambda: ("uniform", "global")),
    "calib_samples": _check_calib_samples,
    "calib_rows": _check_calib_rows,
    "calib_size": _check_size,
    "calib_layout": _check_layout,
    "calib_bgr": bool,
    "calib_scale": lambda v: numbers(v, "--calib-scale", float, "/", (1, 2)),
    "calib_mean": lambda v: numbers(v, "--calib-mean", float, ",", (1, 3)),
    "calib_std": lambda v: numbers(v, "--calib-std", float, ",", (1, 3)),
    "reconstruct": _check_choice("reconstruct", "reconstruction", lambda: RECONSTRUCT_MODES),
    "ridge": _check_ridge,
    "quantize": _check_choice("quantize", "quantization", lambda: QUANTIZE_METHODS),
    "provider": _check_choice("provider", "provider", lambda: ("cpu", "cuda")),
    "threads": check_threads,
}

__all__ = ["Flag", "PruneOptions", "RECONSTRUCT_MODES", "SECTIONS", "option_fields"]
