"""Quantized graphs: QDQ (QuantizeLinear / DequantizeLinear) and the QOperator layers of ONNX
Runtime's quantizer.

**QDQ weights.** A DequantizeLinear whose inputs are all constants computes a float weight (or
bias). ``normalize`` folds it into that float constant (:func:`decode_dequantize`, this op's
``decode`` part) and attaches a :class:`Dequantized` codec to it: the analysis, the scores, the
calibration and reconstruction's views all read the dequantized values; the rewrite slices the
codec with the values (the integer weight, and per-channel scales and zero points along the
pruned axis; per-tensor ones stay), and the export writes the DequantizeLinear back, with the
original integer tensors where nothing changed. A float constant quantized in the graph
(QuantizeLinear -> DequantizeLinear, as ONNX Runtime's quantizer writes some constant inputs) is
evaluated into its integer form first and stored that way (the same values, no larger). A blocked-quantized weight (``block_size``) loses
entries along its block axis only in whole blocks (:meth:`Dequantized.constrain` ties each
block's channels into one), else the channels are refused. A weight that reconstruction refits
is requantized on its own scales and zero points (:meth:`Dequantized.snap`), or the layer is
not refit when a refit value falls outside their range.

**QDQ activations.** QuantizeLinear / DequantizeLinear on an activation pass its channels;
per-channel scales and zero points along the channel axis are sliced with them.

**QOperator layers** (:data:`QLAYERS`): ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul
and ONNX Runtime's QGemm, MatMulIntegerToFloat, DynamicQuantizeMatMul create and consume
channels like Conv and MatMul: their integer weight, per-channel weight scale and zero point, and
bias are sliced; DynamicQuantizeLinear passes its input's channels (its scale is computed from
the tensor at run time, so the kept channels' quantization grid may change with pruning). Scores
read their weights dequantized (:class:`IntegerWeight`); they are not refit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis.state import State, UnsupportedPattern, const, has_input, rank, static_shape
from .common import norm_axis, pass_through, same_dim, shape_of_input, zero_by_parameters
from .conv import bias_site
from .elementwise import broadcast_dim, elementwise
from .inference import ABSENT
from .registry import Typed, ZeroPath, dims, register, rule, spec_key

#: integer types a folded DequantizeLinear may hold (int4, float8... stay unfolded: not pruned)
_CODED = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32)
_DQ = ("DequantizeLinear", "com.microsoft:DequantizeLinear")
_Q = ("QuantizeLinear", "com.microsoft:QuantizeLinear")


# --- QDQ weights: the codec a folded DequantizeLinear leaves on its float constant --------------

@dataclass(eq=False)
class Dequantized:
    """How a float constant is stored: ``(q - zero_point) * scale``, per tensor, per axis or per
    block, as the DequantizeLinear ``node`` computed it. ``originals`` are that node's input
    constants, written back as they are while their part is unchanged."""

    node: str
    output: str
    domain: str
    attrs: dict
    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    #: the float values ``q`` decodes to (what the constant held when this codec was made)
    values: np.ndarray
    originals: tuple
    #: which of q, scale, zero point still equal the originals
    same: tuple = (True, True, True)
    #: after :meth:`snap` widened the scales for a refit: new scale / old (per tensor or per axis)
    factor: object = None

    @property
    def block(self) -> int:
        return int(self.attrs.get("block_size", 0) or 0)

    @property
    def axis(self) -> int | None:
        """The quantization axis (per axis or per block), None per tensor."""
        if not self.block and self.scale.size == 1:
            return None
        return norm_axis(int(self.attrs.get("axis", 1)), self.q.ndim)

    def _expand(self, part: np.ndarray) -> np.ndarray:
        """A scale or zero point broadcast to the shape of ``q``."""
        axis = self.axis
        if axis is None:
            return part.reshape(())
        if not self.block:
            shape = [1] * self.q.ndim
            shape[axis] = -1
            return part.reshape(shape)
        return np.repeat(part, self.block, axis=axis).take(np.arange(self.q.shape[axis]), axis=axis)

    def decode(self, q: np.ndarray) -> np.ndarray:
        zero = 0 if self.zero is None else self._expand(self.zero).astype(np.int64)
        scale = self._expand(self.scale)
        return ((q.astype(np.int64) - zero).astype(scale.dtype) * scale).astype(self.values.dtype)

    def constrain(self, state: State, site) -> None:
        """A weight site on this constant: along the block axis of a blocked quantization,
        channels go in whole blocks (each block's channels are tied into one), or not at all."""
        if not self.block or site.axis != self.axis:
            return
        n = self.q.shape[site.axis]
        if n % self.block or len(site.atoms) != n:
            state.block(site.atoms, f"'{self.output}' is quantized in blocks of {self.block} along axis "
                                    f"{site.axis}, which do not divide its {n} entries")
            return
        blocks = site.atoms.reshape(-1, self.block)
        for j in range(1, self.block):
            state.union(blocks[:, 0], blocks[:, j])

    def sliced(self, cuts: list[tuple[int, np.ndarray]], values: np.ndarray) -> "Dequantized":
        """This codec after the rewrite kept ``mask`` along ``axis`` for each cut; ``values``: the
        sliced float constant."""
        q, scale, zero = self.q, self.scale, self.zero
        same = list(self.same)
        for axis, mask in cuts:
            q, same[0] = np.compress(mask, q, axis=axis), False
            part_mask, part_axis = self._part_cut(axis, mask)
            if part_mask is not None:
                scale, same[1] = np.compress(part_mask, scale, axis=part_axis), False
                if zero is not None and zero.ndim:
                    zero, same[2] = np.compress(part_mask, zero, axis=part_axis), False
        return replace(self, q=q, scale=scale, zero=zero, values=values, same=tuple(same))

    def _part_cut(self, axis: int, mask: np.ndarray) -> tuple[np.ndarray | None, int]:
        """How a cut of ``q`` along ``axis`` cuts the scale and zero point (None: they stay)."""
        qaxis = self.axis
        if qaxis is None:
            return None, 0
        if not self.block:
            return (mask, 0) if axis == qaxis else (None, 0)
        if axis != qaxis:
            return mask, axis
        rows = mask.reshape(-1, self.block)
        if not (rows == rows[:, :1]).all():  # the analysis ties blocks: this is a bug, not a model
            raise ValueError(f"'{self.output}' cut inside a quantization block")
        return rows[:, 0], axis

    def _range(self) -> tuple[int, int]:
        info = np.iinfo(self.q.dtype)
        return int(info.min), int(info.max)

    def _quantize(self, values: np.ndarray) -> np.ndarray:
        zero = 0 if self.zero is None else self._expand(self.zero).astype(np.float64)
        return np.rint(values.astype(np.float64) / self._expand(self.scale).astype(np.float64)) + zero

    def snap(self, values: np.ndarray, widen_axis: int | None = None, factor=None
             ) -> tuple[np.ndarray | None, "Dequantized | None", str | None]:
        """New (refit) float values stored on this codec: the values rounded to its grid and the
        codec storing them, or a reason they cannot be stored. Values outside the range of the
        scales widen them (per tensor, or per channel along ``widen_axis``; the new codec's
        ``factor`` says by how much); ``factor`` given (a bias following its weight's scales,
        as ONNX Runtime's quantizer makes them: bias scale = input scale x weight scale)
        multiplies the scales first."""
        codec = self
        if factor is not None:
            codec = self._rescaled(factor)
            if codec is None:
                return None, None, f"'{self.output}''s quantization cannot follow its weight's new scales"
        lo, hi = codec._range()
        q = codec._quantize(values)
        grown = None
        if not np.isfinite(q).all() or q.min() < lo or q.max() > hi:
            codec, grown = codec._widened(values, widen_axis) if widen_axis is not None else (None, None)
            if codec is None:
                return None, None, (f"the refit values fall outside the {np.dtype(self.q.dtype).name} range of "
                                    f"'{self.output}''s quantization scales, which cannot be widened")
            q = codec._quantize(values)
        q = np.clip(q, lo, hi).astype(self.q.dtype)
        snapped = codec.decode(q)
        same = (False, codec.same[1] and grown is None and factor is None, codec.same[2])
        return snapped, replace(codec, q=q, values=snapped, same=same, factor=grown), None

    def _widened(self, values: np.ndarray, axis: int) -> tuple["Dequantized | None", object]:
        """This codec with scales just wide enough for ``values`` (never narrower), and the factor."""
        if self.block or self.axis not in (None, axis):
            return None, None
        lo, hi = self._range()
        zero = 0.0 if self.zero is None else self._expand(self.zero).astype(np.float64)
        v = values.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(v > 0, v / (hi - zero), np.where(v < 0, v / (lo - zero), 0.0))
        if not np.isfinite(need).all():
            return None, None
        if self.axis is None:
            need = np.asarray(need.max())
        else:
            need = np.moveaxis(need, self.axis, 0).reshape(need.shape[self.axis], -1).max(axis=1)
        old = self.scale.astype(np.float64).reshape(need.shape)
        scale = np.maximum(old, need * (1 + 1e-6)).astype(self.scale.dtype).reshape(self.scale.shape)
        return replace(self, scale=scale), scale.astype(np.float64).reshape(need.shape) / old

    def _rescaled(self, factor) -> "Dequantized | None":
        """This (1-D bias) codec with its scales multiplied by ``factor`` (one, or one per entry)."""
        factor = np.asarray(factor, dtype=np.float64)
        if factor.size > 1 and (self.block or self.axis is None or self.scale.shape != factor.shape):
            return None
        return replace(self, scale=(self.scale.astype(np.float64) * factor).astype(self.scale.dtype))

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The integer tensor storing ``values`` (they must be on this codec's grid)."""
        if values is self.values or np.array_equal(values, self.values):
            return self.q
        q = self._quantize(values)
        lo, hi = self._range()
        if q.min() < lo or q.max() > hi:
            raise ValueError(f"'{self.output}' changed outside its quantization range")
        return q.astype(self.q.dtype)

    def computation(self, tensor: gs.Constant, existing: dict) -> tuple[gs.Node, gs.Variable]:
        """The DequantizeLinear computing ``tensor``, with its integer input and parameters;
        ``existing``: the graph's tensors by name (an unchanged parameter that other nodes also
        read, such as a scale an activation's QuantizeLinear shares, is that same tensor)."""
        name = tensor.name
        q = self.encode(np.asarray(tensor.values))
        parts = []
        for i, (values, tag) in enumerate(((q, "quantized"), (self.scale, "scale"), (self.zero, "zero_point"))):
            if values is None:
                continue
            unchanged = self.same[i] and (i or q is self.q) and self.originals[i] is not None
            if unchanged:
                parts.append(existing.get(self.originals[i].name, self.originals[i]))
            else:
                parts.append(gs.Constant(f"{name}_{tag}", np.array(values, order="C")))
        node_name = self.node if name == self.output else f"{name}_DequantizeLinear"
        out = gs.Variable(name, dtype=tensor.dtype, shape=list(tensor.shape))
        return gs.Node("DequantizeLinear", node_name, dict(self.attrs), parts, [out], domain=self.domain), out


def decode_dequantize(node: gs.Node):
    """A DequantizeLinear of constants as (float values, :class:`Dequantized`), or None where it
    stays a computation (types other than 8-32-bit integers, parameters computed at run time)."""
    x, scale = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    zero = node.inputs[2] if has_input(node, 2) else None
    if not isinstance(x, gs.Constant) or not isinstance(scale, gs.Constant) or \
            (zero is not None and not isinstance(zero, gs.Constant)):
        return None
    q, s = const(x), const(scale)
    z = None if zero is None else const(zero)
    if q.dtype.type not in _CODED or s.dtype.kind != "f" or (z is not None and z.dtype != q.dtype):
        return None
    out_dtype = {None: None, 0: None, 1: np.float32, 10: np.float16, 11: np.float64}.get(node.attrs.get("output_dtype"), 0)
    if out_dtype == 0:  # bfloat16 or another type numpy has no float dtype for: left as it is
        return None
    codec = Dequantized(node.name, node.outputs[0].name, node.domain or "", dict(node.attrs), q, s, z,
                        np.zeros(0, s.dtype), (x, scale, zero))
    if codec.block and (codec.axis is None or s.ndim != q.ndim):
        return None
    if codec.axis is not None and not codec.block and (s.ndim != 1 or s.shape[0] != q.shape[codec.axis]):
        return None
    codec.values = np.zeros(0, out_dtype or s.dtype)
    values = codec.decode(q)
    codec.values = values
    return values, codec


register(*_DQ, decode=decode_dequantize)
def encode_quantize(node: gs.Node) -> np.ndarray | None:
    """A QuantizeLinear of constants evaluated as ONNX defines it, ``saturate(round(x / scale) +
    zero_point)`` (rounding half to even), per tensor or per axis; None for other forms (blocks,
    types other than 8-32-bit integers, parameters computed at run time): they stay computations.
    int32 is ONNX Runtime's extension (its quantizer writes int32 biases so)."""
    x, scale = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    zero = node.inputs[2] if has_input(node, 2) else None
    if not isinstance(x, gs.Constant) or not isinstance(scale, gs.Constant) or zero is None \
            or not isinstance(zero, gs.Constant) or int(node.attrs.get("block_size", 0) or 0):
        return None
    v, s, z = const(x), const(scale), const(zero)
    if v.dtype.kind != "f" or s.dtype != v.dtype or z.dtype.type not in _CODED or z.shape != s.shape \
            or node.attrs.get("output_dtype") not in (None, 0) or "saturate" in node.attrs:
        return None
    if s.ndim == 1 and s.size > 1 or s.ndim == 1 and v.ndim >= 1:
        axis = norm_axis(int(node.attrs.get("axis", 1)), v.ndim)
        if s.shape[0] != v.shape[axis]:
            return None
        shape = [-1 if i == axis else 1 for i in range(v.ndim)]
        s, z = s.reshape(shape), z.reshape(shape)
    elif s.size != 1:
        return None
    if not np.all(np.isfinite(s)) or np.any(s == 0) or not np.all(np.isfinite(v)):
        return None  # what the runtime makes of these is not ONNX's to say: left to it
    info = np.iinfo(z.dtype)
    q = np.rint(v / s).astype(np.float64) + z.astype(np.float64)
    return np.clip(q, info.min, info.max).astype(z.dtype)


# a float constant quantized in the graph (QuantizeLinear -> DequantizeLinear) is evaluated into
# its integer form first, then decoded like a stored one
register(*_Q, encode=encode_quantize)


# --- QDQ activations ----------------------------------------------------------------------------

@rule(*_Q, *_DQ, channel_inputs=(0,))
def quantize_activation(node: gs.Node, state: State) -> None:
    """Q/DQ on an activation: channels pass; per-channel parameters along them are sliced."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if int(node.attrs.get("block_size", 0) or 0):
        raise UnsupportedPattern(f"{node.op} quantizes an activation in blocks")
    parts = [(i, const(node.inputs[i])) for i in (1, 2) if has_input(node, i)]
    if any(v is None for _, v in parts):
        raise UnsupportedPattern(f"{node.op} scale or zero point computed at run time")
    scale = parts[0][1]
    if scale.ndim == 1 and scale.size > 1 or scale.ndim == 1 and len(tr.atoms) == 1:
        axis = norm_axis(int(node.attrs.get("axis", 1)), tr.rank)
        if axis == tr.axis:
            for i, values in parts:
                if values.ndim != 1 or len(values) != len(tr.atoms):
                    raise UnsupportedPattern(f"{node.op} per-channel parameters do not match the channels")
                state.site(node, i, 0, tr.atoms, "channel_const")
    elif scale.size != 1:
        raise UnsupportedPattern(f"{node.op} scale of shape {list(scale.shape)}")
    pass_through(node, state)


@rule("DynamicQuantizeLinear", channel_inputs=(0,))
def dynamic_quantize(node: gs.Node, state: State) -> None:
    """Channels pass to the quantized output; the scale and zero point are one per tensor,
    computed from all of it at run time (pruning may move the kept channels' grid a little)."""
    pass_through(node, state)


dims(*_Q, *_DQ, "DynamicQuantizeLinear")(same_dim)


def _zero_point(node: gs.Node) -> tuple | None:
    """(zero point values, axis) of a Q/DQ node; None where the zero point is computed at run time."""
    if not has_input(node, 2):
        return (b"", None)  # zero point 0
    z = const(node.inputs[2])
    if z is None:
        return None
    axis = node.attrs.get("axis", 1) if z.ndim else None
    return (z.tobytes() if np.any(z) else b"", axis)


def _pair_keeps_zero(q: gs.Node, dq: gs.Node) -> bool:
    """QuantizeLinear then DequantizeLinear with the same zero point: Q(0) is that zero point
    exactly (0 / scale rounds to 0) and DQ maps it back to 0, whatever the scales."""
    if spec_key(q) not in _Q or spec_key(dq) not in _DQ or int(q.attrs.get("block_size", 0) or 0):
        return False
    zq, zd = _zero_point(q), _zero_point(dq)
    return zq is not None and zq == zd


def _zero_quantize(node: gs.Node) -> ZeroPath | None:
    """A QuantizeLinear read only by DequantizeLinears of its zero point passes zeros to them
    (as codes: the zero point, which they decode to 0)."""
    readers = [r for o in node.outputs for r in o.outputs]
    if not readers or not all(_pair_keeps_zero(node, r) for r in readers):
        return None
    return ZeroPath(through=(0,))


def _zero_dequantize(node: gs.Node) -> ZeroPath | None:
    """A DequantizeLinear of a QuantizeLinear with its zero point: zero when the quantized input is."""
    producers = node.inputs[0].inputs if node.inputs and not isinstance(node.inputs[0], gs.Constant) else []
    if len(producers) != 1 or not _pair_keeps_zero(producers[0], node):
        return None
    return ZeroPath(through=(0,))


register(*_Q, zero_out=_zero_quantize)
register(*_DQ, zero_out=_zero_dequantize)


# --- QOperator layers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class QLayer:
    """Where a quantized layer keeps what the rewrite slices (input indices)."""

    #: "conv" (weight O x I x k...), "matmul" (K x N), "gemm" (N x K with transB, else K x N)
    kind: str
    weight: int
    scale: int | None
    zero: int | None
    bias: int | None
    #: inputs that must be one value per tensor (activation scales and zero points)
    per_tensor: tuple[int, ...] = ()
    #: the float output is rescaled by Mul(activation scale, weight scale) (dynamic quantization)
    rescaled: bool = False
    #: its "weight" may be a second activation (QLinearMatMul: attention's q·kᵀ and weights·v),
    #: multiplied as MatMul multiplies two activations
    two_activations: bool = False


QLAYERS = {
    "ConvInteger": QLayer("conv", 1, None, 3, None, per_tensor=(2,), rescaled=True),
    "QLinearConv": QLayer("conv", 3, 4, 5, 8, per_tensor=(1, 2, 6, 7)),
    "MatMulInteger": QLayer("matmul", 1, None, 3, None, per_tensor=(2,), rescaled=True),
    "QLinearMatMul": QLayer("matmul", 3, 4, 5, None, per_tensor=(1, 2, 6, 7), two_activations=True),
    "com.microsoft:QGemm": QLayer("gemm", 3, 4, 5, 6, per_tensor=(1, 2, 7, 8)),
    "com.microsoft:MatMulIntegerToFloat": QLayer("matmul", 1, 3, 5, 6, per_tensor=(2, 4)),
    "com.microsoft:DynamicQuantizeMatMul": QLayer("matmul", 1, 2, 3, 4),
}


@dataclass(frozen=True, eq=False)
class IntegerWeight:
    """A QOperator layer's integer weight as the scores see it, ``(w - zero) * scale`` (per
    output channel along ``out_axis``), and how the oracle zeroes part of it (to the zero point)."""

    out_axis: int
    zero: np.ndarray | None = None
    scale: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def _along(self, part, ndim: int):
        part = np.asarray(part, dtype=np.float64)
        if part.size <= 1:
            return part.reshape(())
        shape = [1] * ndim
        shape[self.out_axis] = -1
        return part.reshape(shape)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        values = raw.astype(np.float64)
        if self.zero is not None:
            values = values - self._along(self.zero, raw.ndim)
        return values if self.scale is None else values * self._along(self.scale, raw.ndim)

    def zeroed(self, raw: np.ndarray, axis: int, index: np.ndarray) -> np.ndarray:
        zero = np.broadcast_to(self._along(0 if self.zero is None else self.zero, raw.ndim), raw.shape)
        out = np.array(raw, copy=True)
        where = [slice(None)] * raw.ndim
        where[axis] = index
        out[tuple(where)] = zero[tuple(where)].astype(raw.dtype)
        return out


def _layout(layer: QLayer, node: gs.Node, weight: np.ndarray, state: State) -> tuple[int, int, int, int]:
    """(weight's input axis, output axis, output's channel axis, output rank)."""
    x = node.inputs[0]
    if layer.kind == "conv":
        if int(node.attrs.get("group", 1)) != 1:
            raise UnsupportedPattern(f"grouped {node.op} (group={node.attrs.get('group')})")
        return 1, 0, 1, weight.ndim
    if layer.kind == "gemm":
        if int(node.attrs.get("transA", 0)):
            raise UnsupportedPattern(f"{node.op} with a transposed activation input")
        trans_b = int(node.attrs.get("transB", 0))
        return (1, 0, 1, 2) if trans_b else (0, 1, 1, 2)
    r = rank(state, x)
    if r is None:
        raise UnsupportedPattern(f"{node.op} input of unknown rank")
    return 0, 1, r - 1, r


def _channel_parts(node: gs.Node, layer: QLayer, n_out: int) -> dict:
    """The weight scale and zero point (each one per tensor, or one per output channel), by
    kind and input index; refuses anything else, and activation parameters not one per tensor."""
    found = {}
    for kind, index in (("scale", layer.scale), ("zero", layer.zero)):
        if index is None or not has_input(node, index):
            continue
        values = const(node.inputs[index])
        if values is None:
            raise UnsupportedPattern(f"{node.op} weight {kind} computed at run time")
        if values.size != 1 and (values.ndim != 1 or len(values) != n_out):
            raise UnsupportedPattern(f"{node.op} weight {kind} of shape {list(values.shape)}")
        found[kind] = (index, values)
    for index in layer.per_tensor:
        if has_input(node, index) and static_shape(node.inputs[index]) is None or \
                has_input(node, index) and int(np.prod(static_shape(node.inputs[index]))) != 1:
            raise UnsupportedPattern(f"{node.op} input {index} is not one value per tensor")
    return found


def _rescale(node: gs.Node, out: np.ndarray, state: State) -> np.ndarray | None:
    """ONNX Runtime's dynamic quantization rescales the integer output by ``Cast`` then ``Mul``
    with ``Mul(activation scale, weight scale)``: a per-channel weight scale there is sliced with
    the channels, and that product carries them. Returns the weight scale (None: not found)."""
    users = node.outputs[0].outputs
    if len(users) != 1 or users[0].op != "Cast" or len(users[0].outputs[0].outputs) != 1:
        return None
    mul = users[0].outputs[0].outputs[0]
    if mul.op != "Mul":
        return None
    other = next((t for t in mul.inputs if t is not users[0].outputs[0]), None)
    if other is None or len(other.inputs) != 1 or other.inputs[0].op != "Mul" or len(other.outputs) != 1:
        return None
    product = other.inputs[0]
    for i, t in enumerate(product.inputs):
        values = const(t)
        if values is None:
            continue
        if values.ndim == 1 and len(values) == len(out) and len(out) > 1:
            state.site(product, i, 0, out, "channel_const")
            state.set_track(other, 0, out, 1)
        return values if values.size in (1, len(out)) else None
    return None


def _one_per_tensor(node: gs.Node, indices, what: str) -> None:
    """Refuse ``node`` unless its inputs ``indices`` (scales, zero points) are constants of one
    value each (or left out)."""
    for i in indices:
        values = const(node.inputs[i]) if has_input(node, i) else np.zeros(())
        if values is None or values.size != 1:
            raise UnsupportedPattern(f"{node.op} {what} with scales or zero points that are not one per tensor")


def _qlinear_matmul_activations(node: gs.Node, state: State, layer: QLayer) -> None:
    """QLinearMatMul of two activations (attention's q·kᵀ and weights·v): as MatMul's
    (:func:`~onnxprune.ops.matmul.matmul_activations`), with A at input 0 and B at the weight's
    input; every scale and zero point (the output's too) must be one per tensor."""
    from .matmul import matmul_activations

    _one_per_tensor(node, [i for i in range(1, len(node.inputs)) if i != layer.weight], "between two activations")
    matmul_activations(node, state, (0, layer.weight))


def quantized_layer(node: gs.Node, state: State) -> None:
    """A QOperator layer (see :data:`QLAYERS`): sites on its integer weight, per-channel weight
    scale and zero point, and bias; the output carries one new channel per output unit."""
    layer = QLAYERS[spec_key(node)]
    tr = state.track(node.inputs[0])
    weight = const(node.inputs[layer.weight])
    if weight is None and layer.two_activations:
        _qlinear_matmul_activations(node, state, layer)
        return
    if weight is None or weight.ndim < 2 or weight.dtype.kind not in "iu":
        if tr is not None:
            state.block(tr.atoms, f"{node.op} with weights computed at run time")
        return
    in_axis, out_axis, y_axis, y_rank = _layout(layer, node, weight, state)
    if layer.kind == "matmul" and weight.ndim != 2:
        raise UnsupportedPattern(f"{node.op} with a batched weight")
    if tr is not None:
        if tr.axis != (1 if layer.kind != "matmul" else y_axis):
            raise UnsupportedPattern(f"{node.op} input carries channels on a non-channel axis")
        if len(tr.atoms) != weight.shape[in_axis]:
            raise UnsupportedPattern(f"{node.op} weight does not match its input's channels")
    parts = _channel_parts(node, layer, weight.shape[out_axis])
    out = state.fresh(weight.shape[out_axis], node)
    for index, values in parts.values():
        if values.size > 1:
            state.site(node, index, 0, out, "channel_const")
    scale = parts["scale"][1] if "scale" in parts else None
    if layer.rescaled:
        scale = _rescale(node, out, state)
    decode = IntegerWeight(out_axis, parts["zero"][1] if "zero" in parts else None, scale)
    if tr is not None:
        state.site(node, layer.weight, in_axis, tr.atoms, "weight_in", decode=decode)
    state.site(node, layer.weight, out_axis, out, "weight_out", decode=decode)
    if layer.bias is not None:
        bias_site(node, layer.bias, out, state)
    state.set_track(node.outputs[0], y_axis, out, y_rank)


#: layers whose output is zero when their integer weight, its zero point and the bias are all
#: zero (w - zero point = 0); the QLinear ones requantize their output to a zero point instead
_ZERO_OUT = ("ConvInteger", "MatMulInteger", "com.microsoft:MatMulIntegerToFloat", "com.microsoft:DynamicQuantizeMatMul")

for _key, _layer in QLAYERS.items():
    rule(_key, channel_inputs=(0, _layer.weight) if _layer.two_activations else (0,))(quantized_layer)
    register(_key, integer_layer=True,
             parameter_inputs=tuple(i for i in (_layer.weight, _layer.bias) if i is not None),
             zero_out=zero_by_parameters(*(i for i in (_layer.weight, _layer.zero, _layer.bias) if i is not None))
             if _key in _ZERO_OUT else None)

#: quantized layers with no rule: they block the channels they touch (MatMulNBits: see ops/nbits.py)
register("com.microsoft:QAttention", "com.microsoft:QOrderedMatMul", integer_layer=True)


def _matrix_dim(w, node: gs.Node, axis: int, r: int, d: int):
    """A quantized matrix product's dims: the input's leading ones, the weight's columns last
    (between two activations, QLinearMatMul's as MatMul's)."""
    layer = QLAYERS[spec_key(node)]
    if const(node.inputs[layer.weight]) is None and layer.two_activations:
        from .matmul import matmul_dim

        return matmul_dim(w, node, axis, r, d, (0, layer.weight))
    if axis == r - 1:
        return w.dim(node.inputs[QLAYERS[spec_key(node)].weight], 1, d)
    return w.dim(node.inputs[0], axis, d)


dims(*(k for k, v in QLAYERS.items() if v.kind == "matmul"))(_matrix_dim)


# --- ONNX Runtime's other QOperator ops on activations (scales and zero points one per tensor) ---

#: element-wise on one quantized tensor, or pooling over its spatial axes (NCHW)
QLINEAR_CHANNELWISE = ("com.microsoft:QLinearSigmoid", "com.microsoft:QLinearLeakyRelu",
                       "com.microsoft:QLinearGlobalAveragePool", "com.microsoft:QLinearAveragePool")
#: broadcasting A (input 0) with B (input 3), each with its scale and zero point
QLINEAR_BROADCASTING = ("com.microsoft:QLinearAdd", "com.microsoft:QLinearMul")


@rule(*QLINEAR_CHANNELWISE, channel_inputs=(0,))
def qlinear_channelwise(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if int(node.attrs.get("channels_last", 0)) or ("Pool" in node.op and tr.axis != 1):
        raise UnsupportedPattern(f"{node.op} pools over the channel axis")
    if any(has_input(node, i) and (static_shape(node.inputs[i]) or [1]) != [1] and
           int(np.prod(static_shape(node.inputs[i]) or [2])) != 1 for i in range(1, len(node.inputs))):
        raise UnsupportedPattern(f"{node.op} with parameters that are not one per tensor")
    pass_through(node, state)


def _broadcast_shapes(a: list | None, b: list | None) -> list | None:
    """Numpy broadcasting of two shapes (None where a dimension cannot be told)."""
    if a is None or b is None:
        return None
    out = []
    for x, y in zip([1] * (len(b) - len(a)) + list(a), [1] * (len(a) - len(b)) + list(b)):
        out.append(y if x == 1 else x if y == 1 or x == y else None)
    return out


def _qlinear_broadcast_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """QLinearAdd / QLinearMul: A (input 0) broadcast with B (input 3), quantized like A."""
    return [_broadcast_shapes(shapes[0], shapes[3] if len(shapes) > 3 else None)]


def _qgemm_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """QGemm: (M, N) from A and B (transA/transB); a float output where it has no output scale."""
    a, b = shapes[0], shapes[3] if len(shapes) > 3 else None
    if not a or not b or len(a) != 2 or len(b) != 2:
        return [None]
    m = a[1] if attrs.get("transA", 0) else a[0]
    n = b[0] if attrs.get("transB", 0) else b[1]
    return [Typed([m, n], elem=None if len(shapes) > 7 and shapes[7] != ABSENT else onnx.TensorProto.FLOAT)]


def _qlinear_concat_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """QLinearConcat: inputs (Y_scale, Y_zero_point, then X, scale, zero point per tensor), along ``axis``."""
    xs = shapes[2::3]
    if not xs or any(x is None for x in xs) or len({len(x) for x in xs}) != 1:
        return [None]
    axis = int(attrs.get("axis", 0)) % len(xs[0])
    sizes = [x[axis] for x in xs]
    total = sum(sizes) if all(isinstance(d, int) for d in sizes) else None
    return [Typed([total if i == axis else xs[0][i] for i in range(len(xs[0]))], like=2)]


@rule("com.microsoft:QLinearSoftmax", channel_inputs=(0,))
def qlinear_softmax(node: gs.Node, state: State) -> None:
    """Softmax of a quantized tensor, as the ``opset`` it was quantized from defines Softmax;
    its scales and zero points must be one per tensor."""
    from .normalization import softmax_of

    if state.track(node.inputs[0]) is None:
        return
    _one_per_tensor(node, range(1, len(node.inputs)), "of a quantized tensor")
    softmax_of(node, state, int(node.attrs.get("opset", state.opset)))


dims("com.microsoft:QLinearSoftmax")(same_dim)
register(*QLINEAR_BROADCASTING, infer=_qlinear_broadcast_shapes)
register("com.microsoft:QGemm", infer=_qgemm_shapes)
register("com.microsoft:QLinearConcat", infer=_qlinear_concat_shapes)
register("com.microsoft:QLinearSigmoid", "com.microsoft:QLinearLeakyRelu", "com.microsoft:QLinearSoftmax",
         infer=shape_of_input(0))

rule(*QLINEAR_BROADCASTING)(elementwise)  # its scales and zero points are scalars: they take no part
dims(*QLINEAR_BROADCASTING)(broadcast_dim)
dims(*QLINEAR_CHANNELWISE[:2])(same_dim)
