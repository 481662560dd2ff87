"""Sessions and inputs for a chosen provider.

``cpu`` uses the CPUExecutionProvider; ``cuda`` uses the CUDAExecutionProvider with IOBinding,
inputs copied to the device once, so host-device copies are not part of what is timed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError, MissingRuntimeError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def onnxruntime():
    """Import onnxruntime, or say which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingRuntimeError(
            "ONNX Runtime is not installed: pip install 'onnxprune[cpu]' (or 'onnxprune[gpu]' for CUDA)") from exc
    return ort


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, list[int]]:
    """``NAME:1x3x224x224`` (several allowed) -> {NAME: [1, 3, 224, 224]}."""
    shapes = {}
    for spec in specs:
        m = re.fullmatch(r"(.+):(\d+(?:[x,]\d+)*)", spec.strip())
        if not m:
            raise BadInputError(f"--input-shape '{spec}': expected NAME:DIMS, e.g. input:1x3x224x224")
        dims = [int(d) for d in re.split(r"[x,]", m.group(2))]
        if 0 in dims:
            raise BadInputError(f"--input-shape '{spec}': dimensions must be positive")
        shapes[m.group(1)] = dims
    return shapes


def check_input_shapes(declared: dict[str, list], shapes: dict[str, list[int]]) -> None:
    """Refuse an ``--input-shape`` that names no model input, has the wrong rank, or contradicts
    a fixed dimension: ONNX Runtime would refuse such inputs, and counts at them would be wrong.
    ``declared`` maps each model input to its dims (ints where fixed, anything else where dynamic)."""
    unknown = set(shapes) - set(declared)
    if unknown:
        raise BadInputError(f"--input-shape names unknown input(s): {', '.join(sorted(unknown))} "
                            f"(model inputs: {', '.join(declared)})")
    for name, shape in shapes.items():
        dims = declared[name]
        if len(shape) != len(dims):
            raise BadInputError(f"--input-shape {name}: rank {len(shape)}, model expects {len(dims)}")
        fixed = [(i, d) for i, d in enumerate(dims) if isinstance(d, int) and d > 0 and shape[i] != d]
        if fixed:
            i, d = fixed[0]
            raise BadInputError(f"--input-shape {name}: dimension {i} is {shape[i]}, the model fixes it at {d}")


def graph_input_dims(graph) -> dict[str, list]:
    """Each real input of an ONNX graph (not an initializer) with its dims: ints where fixed, else None."""
    initializers = {t.name for t in graph.initializer}
    return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in graph.input if vi.name not in initializers}


@dataclass
class Runner:
    """One model on one provider, ready to run on fixed inputs."""

    session: object
    provider: str
    feeds: dict
    binding: object | None = None

    def run(self) -> None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
        else:
            self.session.run(None, self.feeds)


def make_runner(model_bytes: bytes, provider: str = "cpu", threads: int | None = None,
                shapes: dict[str, list[int]] | None = None, seed: int = 0, feeds: dict | None = None) -> Runner:
    """A ready session; inputs are ``feeds`` if given, else random of the model's (or ``shapes``') shapes."""
    ort = onnxruntime()
    if provider not in PROVIDERS:
        raise BadInputError(f"unknown provider '{provider}' (choose from {', '.join(PROVIDERS)})")
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise BadInputError(f"provider '{provider}' is not available in this ONNX Runtime "
                            f"(available: {', '.join(ort.get_available_providers())}); "
                            "CUDA needs 'onnxprune[gpu]' and an NVIDIA GPU")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=[name])
    if name not in session.get_providers():
        raise BadInputError(f"provider '{provider}' could not be initialised")
    if feeds is None:
        feeds = make_feeds(session, shapes or {}, seed)
    else:
        feeds = {i.name: _fit_static(feeds[i.name], i.shape) for i in session.get_inputs()}
    binding = None
    if provider == "cuda":
        binding = session.io_binding()
        for k, v in feeds.items():
            binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda")
    return Runner(session, provider, feeds, binding)


def _fit_static(value: np.ndarray, dims: list) -> np.ndarray:
    """The original's timing input for a pruned model: where the model fixes a dim smaller than
    the array's (a KV-cache input that lost heads), its leading indices (the values do not
    matter for timing)."""
    if not hasattr(value, "ndim") or value.ndim != len(dims):
        return value
    for axis, d in enumerate(dims):
        if isinstance(d, int) and 0 < d < value.shape[axis]:
            value = np.take(value, np.arange(d), axis=axis)
    return value


#: Inputs onnxprune makes up (random inputs for timing, synthetic calibration batches) stay
#: under this many bytes together: declared dimensions past it are refused, not allocated.
MAX_GENERATED_INPUT_BYTES = 4 << 30


def check_input_memory(inputs: dict[str, tuple[list[int], np.dtype]]) -> None:
    """Refuse (exit 2, naming the input) inputs whose declared shapes are too large to allocate."""
    sizes = {name: math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
             for name, (shape, dtype) in inputs.items()}
    if sum(sizes.values()) <= MAX_GENERATED_INPUT_BYTES:
        return
    name = max(sizes, key=sizes.get)
    raise BadInputError(f"input '{name}' would need {sizes[name] / 1e9:.1f} GB (shape {list(inputs[name][0])}, "
                        f"{np.dtype(inputs[name][1]).name}), over the {MAX_GENERATED_INPUT_BYTES / 1e9:.1f} GB "
                        "onnxprune allocates for generated inputs: declare smaller dimensions (or give "
                        "dynamic ones with --input-shape)")


def make_feeds(session, shapes: dict[str, list[int]], seed: int = 0) -> dict:
    """Random inputs; dynamic dimensions come from ``shapes`` or are an error naming them."""
    rng = np.random.default_rng(seed)
    check_input_shapes({i.name: list(i.shape) for i in session.get_inputs()}, shapes)
    planned = {}
    for inp in session.get_inputs():
        if inp.name in shapes:
            shape = shapes[inp.name]
        else:
            if any(not isinstance(d, int) or d <= 0 for d in inp.shape):
                raise BadInputError(f"input '{inp.name}' has dynamic shape {inp.shape}: "
                                    f"give it with --input-shape {inp.name}:1x...")
            shape = list(inp.shape)
        dtype = _NP_TYPES.get(inp.type)
        if dtype is None:
            raise BadInputError(f"input '{inp.name}' has unsupported type {inp.type}")
        planned[inp.name] = (shape, dtype)
    check_input_memory(planned)
    feeds = {}
    for name, (shape, dtype) in planned.items():
        if dtype == np.bool_:
            feeds[name] = rng.random(shape) > 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds
