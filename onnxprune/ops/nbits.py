"""ONNX Runtime's ``MatMulNBits``: block-wise 2/4/8-bit weights, as its quantizer and the GenAI
model builder write them for ``-p int4``.

Its output units prune by slicing the packed weight, scales, zero points and bias along N; its
input units along K only in whole quantization blocks (a block shares one scale and zero point
per output, so part of a block cannot be removed without requantizing). Scores read the
dequantized weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.edits import SetAttrToKeptCount, _freeze
from ..analysis.state import Edit, KeepFn, State, UnsupportedPattern, const, has_input, rank, set_const_input
from .registry import Shapes, register, rule

#: MatMulNBits inputs: 0 A, 1 B (uint8, (N, blocks, block_size x bits / 8)), 2 scales, 3 zero points,
#: 4 g_idx, 5 bias
_B, _SCALES, _ZP, _GIDX, _BIAS = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class NBits:
    """The layout of one MatMulNBits node."""

    k: int
    n: int
    bits: int
    block: int

    @property
    def blocks(self) -> int:
        return -(-self.k // self.block)

    @classmethod
    def of(cls, node: gs.Node) -> "NBits":
        a = node.attrs
        return cls(int(a.get("K", 0)), int(a.get("N", 0)), int(a.get("bits", 4)), int(a.get("block_size", 0)))


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` ``bits``-wide unsigned values packed little-endian in each row of
    ``packed`` (uint8, last axis), as uint8."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`unpack` (rows padded with zeros to whole bytes)."""
    per_byte = 8 // bits
    pad = -values.shape[-1] % per_byte
    v = np.concatenate([values, np.zeros((*values.shape[:-1], pad), np.uint8)], axis=-1).astype(np.uint8)
    v = v.reshape(*values.shape[:-1], -1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(v << shifts, axis=-1).astype(np.uint8)


def _zero_points(node: gs.Node, lay: NBits) -> np.ndarray:
    """Zero points as (N, blocks) floats (2^(bits-1) when the input is left out)."""
    if not has_input(node, _ZP):
        return np.full((lay.n, lay.blocks), float(1 << (lay.bits - 1)))
    zp = const(node.inputs[_ZP])
    if zp.dtype == np.uint8:
        return unpack(zp.reshape(lay.n, -1), lay.bits, lay.blocks).astype(np.float64)
    return zp.reshape(lay.n, lay.blocks).astype(np.float64)


def dequantized(node: gs.Node, index: int = _B) -> np.ndarray | None:
    """The float weight of a MatMulNBits node in its packed weight's layout, (N, blocks,
    block_size), padding past K as zeros (what scores read, :attr:`OpSpec.weight_values`)."""
    if index != _B:
        return None
    lay = NBits.of(node)
    b, scales = const(node.inputs[_B]), const(node.inputs[_SCALES])
    q = unpack(b.reshape(lay.n, lay.blocks, -1), lay.bits, lay.block).astype(np.float64)
    w = (q - _zero_points(node, lay)[..., None]) * scales.reshape(lay.n, lay.blocks, 1).astype(np.float64)
    w.reshape(lay.n, -1)[:, lay.k:] = 0.0
    return w


def _check_layout(node: gs.Node, lay: NBits) -> None:
    b, scales = const(node.inputs[_B]), const(node.inputs[_SCALES]) if has_input(node, _SCALES) else None
    if b is None or scales is None:
        raise UnsupportedPattern("MatMulNBits with weights or scales computed at run time")
    if lay.bits not in (2, 4, 8) or lay.block < 1 or lay.k < 1 or lay.n < 1:
        raise UnsupportedPattern("MatMulNBits with unexpected bits, block_size, K or N")
    if b.shape != (lay.n, lay.blocks, lay.block * lay.bits // 8):
        raise UnsupportedPattern("MatMulNBits packed weight not shaped (N, blocks, block bytes)")
    if scales.shape != (lay.n, lay.blocks):
        raise UnsupportedPattern("MatMulNBits scales not shaped (N, blocks)")
    if has_input(node, _ZP):
        zp = const(node.inputs[_ZP])
        if zp is None or zp.ndim != 2 or zp.shape[0] != lay.n:
            raise UnsupportedPattern("MatMulNBits zero points computed at run time or not shaped (N, ...)")


@rule("com.microsoft:MatMulNBits", channel_inputs=(0,))
def matmul_nbits(node: gs.Node, state: State) -> None:
    """``A @ dequantize(B)ᵀ``: the last axis of A (K) is contracted, N output units created.

    Output units slice B, scales, zero points and bias along N (``N`` becomes the kept count).
    Input units tie the K channels of each quantization block into one unit, removed as a whole
    (B and scales lose the block, packed zero points are repacked; ``K`` becomes the kept
    count); with ``g_idx`` (rows mapped to arbitrary groups) they are refused.
    """
    tr, lay = state.track(node.inputs[0]), NBits.of(node)
    try:
        _check_layout(node, lay)
    except UnsupportedPattern:
        if tr is None:
            return
        raise
    r = rank(state, node.inputs[0])
    if r is None:
        if tr is not None:
            raise UnsupportedPattern("MatMulNBits input of unknown rank")
        return
    if tr is not None:
        _input_blocks(node, state, tr, lay, r)
    out = state.fresh(lay.n, node)
    state.site(node, _B, 0, out, "weight_out")
    state.site(node, _SCALES, 0, out, "channel_const")
    if has_input(node, _ZP):
        state.site(node, _ZP, 0, out, "channel_const")
    if has_input(node, _BIAS):
        if const(node.inputs[_BIAS]) is None or const(node.inputs[_BIAS]).shape != (lay.n,):
            raise UnsupportedPattern("MatMulNBits bias computed at run time or not shaped (N,)")
        state.site(node, _BIAS, 0, out, "bias")
    state.edit(SetAttrToKeptCount(node, "N", out))
    state.set_track(node.outputs[0], r - 1, out, r)


def _input_blocks(node: gs.Node, state: State, tr, lay: NBits, r: int) -> None:
    if tr.axis != r - 1 or len(tr.atoms) != lay.k:
        raise UnsupportedPattern("MatMulNBits input carries channels on a non-feature axis")
    if has_input(node, _GIDX):
        raise UnsupportedPattern("MatMulNBits with g_idx: input units go in whole quantization blocks only")
    firsts = tr.atoms[::lay.block]
    for j in range(1, lay.block):
        part = tr.atoms[j::lay.block]
        state.union(firsts[:len(part)], part)
    state.site(node, _B, 1, firsts, "weight_in", unit=lay.block)
    state.site(node, _SCALES, 1, firsts, "channel_const")
    if has_input(node, _ZP):
        if const(node.inputs[_ZP]).dtype == np.uint8 and lay.bits < 8:
            state.edit(RepackZeroPoints(node, firsts, lay.bits))
        else:
            state.site(node, _ZP, 1, firsts, "channel_const")
    state.edit(SetAttrToKeptCount(node, "K", tr.atoms))


@dataclass(frozen=True, eq=False)
class RepackZeroPoints(Edit):
    """Packed MatMulNBits zero points (several blocks per byte) lose the removed blocks."""

    node: str
    atoms: np.ndarray  # one per block
    bits: int

    def __post_init__(self) -> None:
        _freeze(self, nodes=("node",), atoms=("atoms",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        node, mask = nodes[self.node], keep(self.atoms)
        if mask.all():
            return
        zp = const(node.inputs[_ZP])
        values = unpack(zp, self.bits, len(mask))[:, mask]
        set_const_input(node, _ZP, pack(values, self.bits))


def _nbits_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    a = shapes[0] if shapes else None
    return [None if not a else [*a[:-1], int(attrs.get("N", 0))]]


def _nbits_flops(s: Shapes) -> int:
    y = s.y()
    return 2 * int(np.prod(y, dtype=np.int64)) * int(s.attrs.get("K", 0)) if y else 0


def _nbits_params(node: gs.Node) -> dict[int, int]:
    """The packed weight holds K x N parameters."""
    lay = NBits.of(node)
    return {_B: lay.k * lay.n}


def _zero_through(index: int, axis: int) -> tuple[int, int]:
    """A block's weights are zero where its scale is (whatever its packed values and zero point)."""
    return (_SCALES, axis) if index == _B else (index, axis)


def _zero_out(node: gs.Node):
    """The output is zero with every scale (and the bias) zero: a residual branch's output
    projection (block removal's oracle zeroes it so)."""
    from .registry import ZeroPath

    wanted = tuple(i for i in (_SCALES, _BIAS) if has_input(node, i))
    if not all(isinstance(node.inputs[i], gs.Constant) for i in wanted) or _SCALES not in wanted:
        return None
    return ZeroPath(zeroed=wanted)


register("com.microsoft:MatMulNBits", infer=_nbits_shapes, flops=_nbits_flops, weight_values=dequantized,
         packed_params=_nbits_params, zero_through=_zero_through, zero_out=_zero_out)
