"""One weight layer at reduced widths: its shapes, its cost, and a one-node model to time it.

A layer's widths change when groups touching it lose channels: the weight's sliced axes shrink,
and with them the input activation's channel axis and, for grouped convolutions, the ``group``
attribute. What that means per op is the ``probe`` of its spec (:class:`Probe`); its cost is the
spec's ``flops``, the formula the metrics count with. The model is only built here; timing it
is the runtime's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from .registry import REGISTRY

#: the weight is input 1 of every layer type the analysis slices
WEIGHT_INPUT = 1


@dataclass
class LayerSpec:
    """A layer's shapes: enough to count its cost or build a one-node model of it."""

    op: str
    x_shape: list[int]
    w_shape: list[int]
    attrs: dict = field(default_factory=dict)
    has_bias: bool = False
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    #: the output's spatial size where known (it does not depend on channel counts)
    y_spatial: list[int] | None = None

    @property
    def params(self) -> int:
        w = int(np.prod(self.w_shape, dtype=np.int64))
        return w + (self.out_channels if self.has_bias else 0)

    @property
    def out_channels(self) -> int:
        return REGISTRY[self.op].probe.out_channels(self)

    @property
    def flops(self) -> int:
        spec = REGISTRY[self.op]
        return spec.flops(FixedShapes(self.x_shape, self.w_shape, spec.probe.out_shape(self), self.attrs))


@dataclass(frozen=True)
class Probe:
    """How one op type's input shape follows its weight, its output channels and output shape."""

    #: (spec with the new weight shape, original spec) -> spec with input shape and attrs fixed up
    resize: Callable[[LayerSpec, LayerSpec], LayerSpec]
    out_channels: Callable[[LayerSpec], int]
    #: the output's shape, for the FLOP formula (None where the formula does not read it)
    out_shape: Callable[[LayerSpec], "list[int] | None"] = lambda spec: None
    #: the layer's output spatial size is recorded (it does not follow the channel counts)
    keeps_out_spatial: bool = False


@dataclass
class FixedShapes:
    """:class:`onnxprune.ops.registry.Shapes` from known shapes."""

    x_shape: list[int] | None
    w_shape: list[int] | None
    y_shape: list[int] | None
    attrs: dict

    def x(self) -> list[int] | None:
        return self.x_shape

    def w(self) -> list[int] | None:
        return self.w_shape

    def y(self) -> list[int] | None:
        return self.y_shape


def has_probe(node: gs.Node) -> bool:
    spec = REGISTRY.get(node.op)
    return spec is not None and spec.probe is not None


def base_spec(node: gs.Node, x_shape: list[int], y_shape: list[int] | None = None) -> LayerSpec:
    """The layer as it is, with its input's (and, where known, output's) concrete shape."""
    w = node.inputs[WEIGHT_INPUT]
    attrs = {k: v for k, v in node.attrs.items() if isinstance(v, (int, float, str, list))}
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
    y_spatial = [int(d) for d in y_shape[2:]] if REGISTRY[node.op].probe.keeps_out_spatial and y_shape else None
    return LayerSpec(node.op, [int(d) for d in x_shape], [int(d) for d in w.shape], attrs, has_bias,
                     np.dtype(w.dtype), y_spatial)


def resized(spec: LayerSpec, new_w_shape: list[int]) -> LayerSpec:
    """The layer with its weight at ``new_w_shape`` (input shape and attributes follow)."""
    return REGISTRY[spec.op].probe.resize(replace(spec, w_shape=list(new_w_shape)), spec)


_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
               np.dtype(np.float64): TensorProto.DOUBLE}


def probe_model(spec: LayerSpec, opset: int, seed: int = 0) -> onnx.ModelProto:
    """A one-node model of the layer with random weights, input ``x`` of the spec's shape."""
    rng = np.random.default_rng(seed)
    elem = _ONNX_TYPES.get(spec.dtype, TensorProto.FLOAT)
    dtype = spec.dtype if spec.dtype in _ONNX_TYPES else np.dtype(np.float32)
    inits = [onnx.numpy_helper.from_array((rng.standard_normal(spec.w_shape) * 0.05).astype(dtype), "w")]
    inputs = ["x", "w"]
    if spec.has_bias:
        inits.append(onnx.numpy_helper.from_array(np.zeros(spec.out_channels, dtype), "b"))
        inputs.append("b")
    node = helper.make_node(spec.op, inputs, ["y"], **spec.attrs)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", elem, spec.x_shape)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8) if opset <= 17 else model.ir_version
    return model
