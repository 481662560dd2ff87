"""Quantization after pruning, by ONNX Runtime's own tools (``onnxruntime.quantization``).

- ``int8`` with calibration batches: static QDQ (``quantize_static``: int8 weights per channel,
  int8 activations whose ranges come from the batches);
- ``int8`` without, and ``int8-dynamic``: dynamic (``quantize_dynamic``: int8 weights,
  activations quantized at run time by ``DynamicQuantizeLinear``). Transformers keep much more
  of their outputs this way than with static activation ranges (all-MiniLM-L6-v2: mean
  embedding cosine 0.993 dynamic, 0.935 static QDQ of :data:`WEIGHT_OPS` on 256 calibration
  sentences);
- ``int4``: weight-only, MatMul weights in blocks of :data:`INT4_BLOCK` (``MatMulNBits``).

The tools read and write files and make temporary folders of their own. All of them go in one
private folder made inside ``work_dir`` (the output's folder; the system's temporary folder
without one), removed afterwards or when the run is stopped. The model given is never handed to
them (they convert a ``ModelProto`` they are given to external data in place): they get a copy
on disk. They also configure the root logger when imported and log to it; that is undone, and
what they log is kept out of the run's output.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import onnx

from ..errors import BadInputError, OnnxPruneError
from ..ops.registry import REGISTRY
from ..tempfiles import temp_folder
from .session import onnxruntime

METHODS = ("int8", "int8-dynamic", "int4")
#: the 4-bit quantizer's block along K (the GenAI model builder's default)
INT4_BLOCK = 32
#: MatMulNBits' accuracy level 4: int8 activations inside the kernel (what the GenAI builder uses on CPU)
INT4_ACCURACY_LEVEL = 4
#: ops whose presence marks a transformer-like graph: static QDQ then quantizes only the ops of
#: :data:`WEIGHT_OPS`. ORT's default op set also quantizes the attention-mask Add, the residual
#: Adds into LayerNorm, Softmax and LayerNorm with one per-tensor int8 range each; on
#: all-MiniLM-L6-v2 that gives embedding cosine 0.824 against 0.935 with the weight ops only (same
#: 23.0 MB; 0.361 against 0.933 when the calibration sentences are padded, as the mask's range then
#: swamps the scores)
ATTENTION_OPS = frozenset({"Softmax", "LayerNormalization"})
#: what static QDQ quantizes in such a graph: weight layers (activations at their inputs) and
#: embedding tables
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather")
#: calibration samples of a model quantized only to be timed (a search candidate): the ranges set
#: the scales, not the graph, so they change no latency
TIMING_SAMPLES = 16


class QuantizeError(OnnxPruneError):
    """ONNX Runtime's quantizer failed or wrote a model that cannot stand in for its input (exit 1)."""


@dataclass(frozen=True)
class Quantized:
    """A quantized model and how it was made."""

    model: onnx.ModelProto
    method: str
    #: "static QDQ", "dynamic" or "MatMulNBits"
    scheme: str
    #: layers whose weights the tool quantized
    layers: int
    #: calibration samples the activation ranges came from (static only)
    samples: int | None = None


def check_available(method: str) -> None:
    """Before any work: ONNX Runtime, and for int4 the package its 4-bit quantizer imports."""
    onnxruntime()
    if method == "int4":
        try:
            import onnx_ir  # noqa: F401
        except ImportError:
            raise BadInputError("--quantize int4 needs onnx-ir (ONNX Runtime's 4-bit quantizer imports it): "
                                "pip install 'onnxprune[quantize]'") from None


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """The op types of ``model`` that already compute on or decode quantized values (the specs'
    ``integer_layer``, ``decode`` and ``packed_params``): quantizing again is refused."""
    found = set()
    for node in model.graph.node:
        spec = _spec(node)
        if spec is not None and (spec.integer_layer or spec.decode is not None or spec.packed_params is not None):
            found.add(node.op_type)
    return sorted(found)


def _spec(node: onnx.NodeProto):
    """The op spec of a node of a ``ModelProto`` (``ops.registry.spec_key`` reads graphsurgeon nodes)."""
    return REGISTRY.get(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}")


def quantize(model: onnx.ModelProto, method: str, batches: Iterable[dict] | None = None,
             work_dir: str | Path | None = None, max_samples: int | None = None) -> Quantized:
    """``model`` quantized by ``method`` (``batches``: calibration input dicts, for static int8;
    at most ``max_samples`` samples of them), checked to load in ONNX Runtime with the same inputs
    and outputs."""
    if method not in METHODS:
        raise BadInputError(f"unknown quantization '{method}' (choose from {', '.join(METHODS)})")
    check_available(method)
    with _tool_scope(work_dir) as folder:
        src, dst = folder / "model.onnx", folder / "quantized.onnx"
        onnx.save(model, str(src))
        samples, scheme = None, "dynamic"
        try:
            if method == "int4":
                scheme = "MatMulNBits"
                _int4(src, dst)
            elif batches is not None and method == "int8":
                scheme = "static QDQ"
                samples = _static(src, dst, batches, {i.name for i in model.graph.input}, max_samples,
                                  static_op_types(model))
            else:
                _dynamic(src, dst)
            out = onnx.load(str(dst))
        except OnnxPruneError:
            raise
        except Exception as exc:  # the tool's own errors: ValueError, onnxruntime's pybind errors, ...
            raise QuantizeError(f"ONNX Runtime's quantizer failed ({method}, {scheme}): {type(exc).__name__}: "
                                f"{_first_line(exc)}") from exc
    _check_stands_in(model, out)
    return Quantized(out, method, scheme, quantized_layers(out), samples)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


@contextlib.contextmanager
def _tool_scope(work_dir: str | Path | None) -> Iterator[Path]:
    """A private folder for the tools' files (theirs too: ``tempfile.tempdir`` points there while
    they run), with their logging muted and the root logger given back as it was."""
    ort = onnxruntime()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    previous_tempdir = tempfile.tempdir
    parent = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    with temp_folder(parent, "onnxprune-quantize") as folder:
        logging.disable(logging.WARNING)
        ort.set_default_logger_severity(3)
        tempfile.tempdir = str(folder)
        try:
            yield folder
        finally:
            tempfile.tempdir = previous_tempdir
            ort.set_default_logger_severity(2)  # ONNX Runtime's default (warnings)
            logging.disable(logging.NOTSET)
            for h in [h for h in root.handlers if h not in handlers]:  # basicConfig() of the tools
                root.removeHandler(h)
            root.setLevel(level)


#: int8 weights on 7 bits. ONNX Runtime's x86 kernels multiply unsigned 8-bit activations by signed
#: 8-bit weights with an instruction (VPMADDUBSW) that saturates on CPUs without VNNI (AVX2 only):
#: with full-range weights, outputs there are off by 20% and more (models/mlp.onnx, dynamic int8:
#: 0.22 relative error on an AVX2-only CPU, 0.019 with 7-bit weights). ONNX Runtime's quantization
#: guide gives reduce_range for such CPUs; the model built here may run on any of them.
REDUCE_RANGE = True


def _static(src: Path, dst: Path, batches: Iterable[dict], inputs: set[str], max_samples: int | None,
            op_types: list[str] | None) -> int:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = 0
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            if max_samples is not None and self.samples >= max_samples:
                return None
            batch = next(self._batches, None)
            if batch is None:
                return None
            feeds = {k: v for k, v in batch.items() if k in inputs}
            n = len(next(iter(feeds.values()))) if feeds else 1
            if max_samples is not None and self.samples + n > max_samples:
                feeds = {k: v[:max_samples - self.samples] for k, v in feeds.items()}
                n = max_samples - self.samples
            self.samples += n
            return feeds

    reader = Reader()
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=op_types, reduce_range=REDUCE_RANGE)
    if reader.samples == 0:
        raise BadInputError("--quantize int8: the calibration data holds no sample")
    return reader.samples


def static_op_types(model: onnx.ModelProto) -> list[str] | None:
    """The op types static QDQ quantizes: :data:`WEIGHT_OPS` in a graph with Softmax or
    LayerNormalization (see :data:`ATTENTION_OPS`), else None (ONNX Runtime's default set, whose
    QDQ pairs around Relu, pooling and Add let it fuse integer kernels, e.g. in CNNs)."""
    if any(n.op_type in ATTENTION_OPS for n in model.graph.node):
        return list(WEIGHT_OPS)
    return None


def _dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=REDUCE_RANGE)


def _int4(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    tool: Any = getattr(nbits, "MatMulNBitsQuantizer", None) or nbits.MatMul4BitsQuantizer  # the older name
    quantizer = tool(onnx.load(str(src)), block_size=INT4_BLOCK, is_symmetric=True,
                     accuracy_level=INT4_ACCURACY_LEVEL)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)


def quantized_layers(model: onnx.ModelProto) -> int:
    """Layers computing on quantized weights: integer layers (MatMulInteger, ConvInteger,
    MatMulNBits, ...) and weight layers whose weight is decoded from a constant (the specs'
    ``decode``: a DequantizeLinear of either domain)."""
    constants = {t.name for t in model.graph.initializer}
    dequantized = {o for n in model.graph.node
                   if (spec := _spec(n)) is not None and spec.decode is not None and n.input and n.input[0] in constants
                   for o in n.output}
    count = 0
    for node in model.graph.node:
        spec = _spec(node)
        if spec is None:
            continue
        if spec.integer_layer or spec.packed_params is not None or \
                (spec.weight_layer and len(node.input) > 1 and node.input[1] in dequantized):
            count += 1
    return count


def _check_stands_in(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """The quantized model has the same graph inputs and outputs and loads in ONNX Runtime."""
    def io(m: onnx.ModelProto) -> tuple:
        constants = {t.name for t in m.graph.initializer}
        return ([i.name for i in m.graph.input if i.name not in constants], [o.name for o in m.graph.output])

    if io(model) != io(out):
        raise QuantizeError(f"ONNX Runtime's quantizer changed the graph's inputs or outputs ({io(model)} -> "
                            f"{io(out)}); nothing was written")
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise QuantizeError(f"the quantized model does not load in ONNX Runtime ({_first_line(exc)}); "
                            "nothing was written") from exc
