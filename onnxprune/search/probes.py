"""One weight layer at reduced widths: its cost, and a one-node model to time it.

A layer's widths change when groups touching it lose channels: the weight's sliced axes shrink,
and with them the input activation's channel axis and, for grouped convolutions, the ``group``
attribute. What that means is op knowledge, so it lives here in one rule per op type
(:data:`PROBES`); a layer whose op has no rule is not modelled (its time counts in the rest of
the model, which scales with the modelled part).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from ..analysis import Analysis

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
        return PROBES[self.op].out_channels(self)

    @property
    def flops(self) -> int:
        return PROBES[self.op].flops(self)


@dataclass(frozen=True)
class Probe:
    """How one op type's input shape follows its weight, what it costs, and its output channels."""

    #: (spec with the new weight shape, original spec) -> spec with input shape and attrs fixed up
    resize: Callable[[LayerSpec, LayerSpec], LayerSpec]
    flops: Callable[[LayerSpec], int]
    out_channels: Callable[[LayerSpec], int]


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def _conv_groups(new_out: int, old: LayerSpec, old_out: int) -> int:
    groups = int(old.attrs.get("group", 1))
    if groups == 1:
        return 1
    # grouped convolutions lose whole conv groups (the analysis ties a group's channels)
    return max(1, round(groups * new_out / old_out))


def _conv_resize(spec: LayerSpec, old: LayerSpec) -> LayerSpec:
    groups = _conv_groups(spec.w_shape[0], old, old.w_shape[0])
    x = list(old.x_shape)
    x[1] = spec.w_shape[1] * groups
    return replace(spec, x_shape=x, attrs={**old.attrs, "group": groups})


def _conv_flops(spec: LayerSpec) -> int:
    # output spatial size does not depend on channel counts: take it from the input's, scaled by strides
    spatial = spec.y_spatial
    if spatial is None:
        strides = spec.attrs.get("strides") or [1] * (len(spec.x_shape) - 2)
        spatial = [max(1, -(-d // s)) for d, s in zip(spec.x_shape[2:], strides)]
    return 2 * spec.x_shape[0] * spec.w_shape[0] * _prod(spatial) * _prod(spec.w_shape[1:])


def _conv_transpose_resize(spec: LayerSpec, old: LayerSpec) -> LayerSpec:
    groups = _conv_groups(spec.w_shape[0], old, old.w_shape[0])
    x = list(old.x_shape)
    x[1] = spec.w_shape[0]
    return replace(spec, x_shape=x, attrs={**old.attrs, "group": groups})


def _conv_transpose_flops(spec: LayerSpec) -> int:
    return 2 * _prod(spec.x_shape) * _prod(spec.w_shape[1:])


def _gemm_resize(spec: LayerSpec, old: LayerSpec) -> LayerSpec:
    k = spec.w_shape[1] if int(old.attrs.get("transB", 0)) else spec.w_shape[0]
    x = list(old.x_shape)
    x[0 if int(old.attrs.get("transA", 0)) else 1] = k
    return replace(spec, x_shape=x, attrs=dict(old.attrs))


def _gemm_out(spec: LayerSpec) -> int:
    return spec.w_shape[0] if int(spec.attrs.get("transB", 0)) else spec.w_shape[1]


def _gemm_flops(spec: LayerSpec) -> int:
    return 2 * _prod(spec.x_shape) * _gemm_out(spec)


def _matmul_resize(spec: LayerSpec, old: LayerSpec) -> LayerSpec:
    x = list(old.x_shape)
    x[-1] = spec.w_shape[0]
    return replace(spec, x_shape=x, attrs={})


def _matmul_flops(spec: LayerSpec) -> int:
    return 2 * _prod(spec.x_shape) * spec.w_shape[1]


PROBES: dict[str, Probe] = {
    "Conv": Probe(_conv_resize, _conv_flops, lambda s: s.w_shape[0]),
    "ConvTranspose": Probe(_conv_transpose_resize, _conv_transpose_flops,
                           lambda s: s.w_shape[1] * int(s.attrs.get("group", 1))),
    "Gemm": Probe(_gemm_resize, _gemm_flops, _gemm_out),
    "MatMul": Probe(_matmul_resize, _matmul_flops, lambda s: s.w_shape[1]),
}


def layer_nodes(analysis: Analysis) -> dict[str, gs.Node]:
    """The weight layers that prunable groups touch and that have a probe, by node name."""
    prunable = {r for g in analysis.prunable_groups for r in g.classes}
    found: dict[str, gs.Node] = {}
    for site in analysis.sites:
        if site.role in ("weight_out", "weight_in") and site.input_index == WEIGHT_INPUT \
                and site.node.op in PROBES and not prunable.isdisjoint(analysis.root[site.atoms].tolist()):
            found[site.node.name] = site.node
    return found


def base_spec(node: gs.Node, x_shape: list[int], y_shape: list[int] | None = None) -> LayerSpec:
    """The layer as it is, with its input's (and, where known, output's) concrete shape."""
    w = node.inputs[WEIGHT_INPUT]
    attrs = {k: v for k, v in node.attrs.items() if isinstance(v, (int, float, str, list))}
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
    y_spatial = [int(d) for d in y_shape[2:]] if node.op == "Conv" and y_shape else None
    return LayerSpec(node.op, [int(d) for d in x_shape], [int(d) for d in w.shape], attrs, has_bias,
                     np.dtype(w.dtype), y_spatial)


def resized(spec: LayerSpec, new_w_shape: list[int]) -> LayerSpec:
    """The layer with its weight at ``new_w_shape`` (input shape and attributes follow)."""
    return PROBES[spec.op].resize(replace(spec, w_shape=list(new_w_shape)), spec)


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
