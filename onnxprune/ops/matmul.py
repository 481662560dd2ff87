"""Matrix products (MatMul, Gemm): an activation times a constant weight creates and consumes
features; between two activations (attention) channels pass where they do not meet."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.provenance import aligned, broadcast, dim_of, rank_of
from ..analysis.state import State, UnsupportedPattern, const, rank
from .common import zero_by_parameters
from .conv import bias_site
from .linear_view import LinearView, store
from .probe import LayerSpec, Probe
from .registry import Shapes, dims, register, rule


@rule("Gemm", channel_inputs=(0,))
def gemm(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    weight = const(node.inputs[1])
    if weight is None or weight.ndim != 2:
        if tr is not None:
            state.block(tr.atoms, "Gemm with weights computed at run time")
        return
    trans_b = int(node.attrs.get("transB", 0))
    if tr is not None:
        if int(node.attrs.get("transA", 0)) or tr.axis != 1:
            raise UnsupportedPattern("Gemm with a transposed activation input")
        if len(tr.atoms) != weight.shape[1 if trans_b else 0]:
            raise UnsupportedPattern("Gemm weight does not match its input's features")
        state.site(node, 1, 1 if trans_b else 0, tr.atoms, "weight_in")
    out = state.fresh(weight.shape[0] if trans_b else weight.shape[1], node)
    state.site(node, 1, 0 if trans_b else 1, out, "weight_out")
    bias_site(node, 2, out, state)
    state.set_track(node.outputs[0], 1, out, 2)


@rule("MatMul")
def matmul(node: gs.Node, state: State) -> None:
    """Activation @ constant 2-D weight: the last axis is contracted in and created out.

    Between two activations (attention), see :func:`matmul_activations`.
    """
    a, b = node.inputs[0], node.inputs[1]
    tr = state.track(a)
    weight = const(b)
    if weight is None:
        matmul_activations(node, state)
        return
    if weight.ndim != 2 or const(a) is not None:
        if tr is not None:
            reason = "MatMul between two activations" if weight is None else "MatMul with a batched constant"
            state.block(tr.atoms, reason)
        return
    r = rank(state, a)
    if r is None:
        if tr is not None:
            state.block(tr.atoms, "MatMul input of unknown rank")
        return
    if tr is not None:
        if tr.axis != r - 1:
            raise UnsupportedPattern("MatMul input carries channels on a non-feature axis")
        if len(tr.atoms) != weight.shape[0]:
            raise UnsupportedPattern("MatMul weight does not match its input's features")
        state.site(node, 1, 0, tr.atoms, "weight_in")
    out = state.fresh(weight.shape[1], node)
    state.site(node, 1, 1, out, "weight_out")
    state.set_track(node.outputs[0], r - 1, out, r)


def matmul_activations(node: gs.Node, state: State, operands: tuple[int, int] = (0, 1)) -> None:
    """``A @ B`` where B is computed: channels pass through where they do not meet each other.
    ``operands``: the inputs holding A and B (QLinearMatMul: 0 and 3).

    A's rows (axis -2) become the output's rows and B's columns (axis -1) its columns, each
    output row/column depending on that one input row/column only; a batch axis (attention
    heads, after a Reshape split the channels into heads) is computed independently per index,
    so the heads of A and B are tied like an element-wise op ties channels. Channels on the
    contracted axis (A's -1, B's -2) are refused: removing one would change every output.
    """
    a, b = node.inputs[operands[0]], node.inputs[operands[1]]
    ta, tb = state.track(a), state.track(b)
    if ta is None and tb is None:
        return
    ra, rb = rank(state, a), rank(state, b)
    if ra is None or rb is None:
        raise UnsupportedPattern("MatMul between two activations of unknown rank")
    if ra < 2 or rb < 2:
        raise UnsupportedPattern("MatMul between two activations with a 1-D operand")
    out_rank = max(ra, rb)
    mapped = []  # (kind, output axis, atoms)
    for tr, r, contracted, own in ((ta, ra, ra - 1, ra - 2), (tb, rb, rb - 2, rb - 1)):
        if tr is None:
            continue
        if tr.axis == contracted:
            raise UnsupportedPattern("MatMul between two activations contracts over the channel axis")
        if tr.axis == own:
            mapped.append(("matrix", out_rank - (2 if own == r - 2 else 1), tr.atoms))
        else:
            mapped.append(("batch", tr.axis + out_rank - r, tr.atoms))
    kinds = {m[0] for m in mapped}
    axes = {m[1] for m in mapped}
    if len(mapped) == 2 and (kinds != {"batch"} or len(axes) != 1):
        raise UnsupportedPattern("MatMul between two activations with channels on different axes")
    kind, axis, atoms = mapped[0]
    if kind == "batch":
        if len(mapped) == 2:
            if len(mapped[1][2]) != len(atoms):
                raise UnsupportedPattern("MatMul broadcasts a channel axis")
            state.union(atoms, mapped[1][2])
        else:  # the other operand must broadcast over the heads, or be tracked with them
            other, r = (b, rb) if ta is not None else (a, ra)
            in_axis = axis - (out_rank - r)
            if in_axis >= 0 and dim_of(other, in_axis, state.dims_cache) != 1:
                raise UnsupportedPattern(
                    f"MatMul combines channels with non-prunable tensor '{other.name}' on a batch axis")
    state.set_track(node.outputs[0], axis, atoms, out_rank)


@dims("MatMul")
def matmul_dim(w, node: gs.Node, axis: int, r: int, d: int, operands: tuple[int, int] = (0, 1)):
    """Rows from A, columns from B, batch axes broadcast (the two matrix axes take no part)."""
    a, b = node.inputs[operands[0]], node.inputs[operands[1]]
    ra, rb = rank_of(a), rank_of(b)
    if ra is None or rb is None or ra < 2 or rb < 2:
        return None
    if axis == r - 2:
        return w.dim(a, ra - 2, d)
    if axis == r - 1:
        return w.dim(b, rb - 1, d)
    return broadcast([aligned(w, a, axis, r, d, 2), aligned(w, b, axis, r, d, 2)])


# --- cost, probe, linear view -------------------------------------------------------------------


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def gemm_flops(s: Shapes) -> int:
    """A multiply-add per output element and contracted feature."""
    out, a = s.y(), s.x()
    if not out or not a:
        return 0
    return 2 * _prod(out) * (a[0] if int(s.attrs.get("transA", 0)) else a[-1])


def matmul_flops(s: Shapes) -> int:
    out, a = s.y(), s.x()
    return 2 * _prod(out) * a[-1] if out and a else 0


def _gemm_resize(spec: LayerSpec, old: LayerSpec) -> LayerSpec:
    k = spec.w_shape[1] if int(old.attrs.get("transB", 0)) else spec.w_shape[0]
    x = list(old.x_shape)
    x[0 if int(old.attrs.get("transA", 0)) else 1] = k
    return replace(spec, x_shape=x, attrs=dict(old.attrs))


def _gemm_out(spec: LayerSpec) -> int:
    return spec.w_shape[0] if int(spec.attrs.get("transB", 0)) else spec.w_shape[1]


def _gemm_out_shape(spec: LayerSpec) -> list[int]:
    return [spec.x_shape[1] if int(spec.attrs.get("transA", 0)) else spec.x_shape[0], _gemm_out(spec)]


def _matmul_resize(spec: LayerSpec, old: LayerSpec) -> LayerSpec:
    x = list(old.x_shape)
    x[-1] = spec.w_shape[0]
    return replace(spec, x_shape=x, attrs={})


class MatrixView(LinearView):
    """Gemm (transA=0, alpha=beta=1) and MatMul with a 2-D constant weight; bias via Gemm C or
    the Add that follows the MatMul (one is inserted where there is none)."""

    def supported(self) -> str | None:
        if self.node.op == "Gemm":
            if int(self.node.attrs.get("transA", 0)) or float(self.node.attrs.get("alpha", 1.0)) != 1.0 \
                    or float(self.node.attrs.get("beta", 1.0)) != 1.0:
                return "Gemm with transA, alpha or beta"
        return None

    def n_rows(self, x: np.ndarray) -> int:
        return int(np.prod(x.shape[:-1]))

    def rows(self, x: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
        flat = x.reshape(-1, x.shape[-1])
        return flat if pick is None else flat[pick]

    def weight(self) -> np.ndarray:
        w = const(self.node.inputs[1])
        return w.T if self.node.op == "Gemm" and int(self.node.attrs.get("transB", 0)) else w

    def stored_weight(self, w: np.ndarray) -> np.ndarray:
        old = const(self.node.inputs[1])
        new = w.T if self.node.op == "Gemm" and int(self.node.attrs.get("transB", 0)) else w
        return np.ascontiguousarray(new).astype(old.dtype)

    def _bias_add(self) -> gs.Node | None:
        out = self.node.outputs[0]
        if len(out.outputs) == 1 and out.outputs[0].op == "Add":
            add = out.outputs[0]
            other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
            b = const(other)
            if b is not None and b.size == self.weight().shape[1] and b.shape[-1] == b.size:
                return add
        return None

    @property
    def out_axis(self) -> int:
        return 0 if self.node.op == "Gemm" and int(self.node.attrs.get("transB", 0)) else 1

    def bias_slot(self):
        if self.node.op == "Gemm":
            return (self.node, 2) if len(self.node.inputs) > 2 and self.node.inputs[2].name else None
        add = self._bias_add()
        return None if add is None else (add, 1 if add.inputs[0] is self.node.outputs[0] else 0)

    rows_are_positions = True

    def output_after_bias(self) -> gs.Variable:
        add = None if self.node.op == "Gemm" else self._bias_add()
        return (add or self.node).outputs[0]

    def bias(self) -> np.ndarray:
        n = self.weight().shape[1]
        if self.node.op == "Gemm":
            c = const(self.node.inputs[2]) if len(self.node.inputs) > 2 and self.node.inputs[2].name else None
            return np.zeros(n) if c is None else np.broadcast_to(c, (1, n))[0].astype(np.float64)
        add = self._bias_add()
        if add is None:
            return np.zeros(n)
        other = add.inputs[1] if add.inputs[0] is self.node.outputs[0] else add.inputs[0]
        return const(other).reshape(-1).astype(np.float64)

    def set_bias(self, b: np.ndarray, graph: gs.Graph) -> None:
        dtype = const(self.node.inputs[1]).dtype
        b = b.astype(dtype)
        if self.node.op == "Gemm":
            if len(self.node.inputs) > 2 and self.node.inputs[2].name:
                store(self.node, 2, b, factor=getattr(self, "widened", None))
            else:
                self.node.inputs.append(gs.Constant(f"{self.node.name}__input2", b))
            return
        add = self._bias_add()
        if add is not None:
            i = 1 if add.inputs[0] is self.node.outputs[0] else 0
            store(add, i, b.reshape(const(add.inputs[i]).shape), factor=getattr(self, "widened", None))
            return
        out = self.node.outputs[0]
        raw = gs.Variable(f"{out.name}__unbiased", dtype=out.dtype)
        self.node.outputs[0] = raw
        graph.nodes.append(gs.Node("Add", f"{self.node.name}__bias", inputs=[raw, gs.Constant(f"{self.node.name}__bias", b)],
                                   outputs=[out]))


def _matrix_view() -> type:
    return MatrixView


register("Gemm", zero_out=zero_by_parameters(1, 2))
register("MatMul", zero_out=zero_by_parameters(1))
register("Gemm", weight_layer=True, flops=gemm_flops, linear_view=_matrix_view, parameter_inputs=(0, 1, 2),
         probe=Probe(_gemm_resize, _gemm_out, _gemm_out_shape))
register("MatMul", weight_layer=True, flops=matmul_flops, linear_view=_matrix_view, parameter_inputs=(0, 1),
         probe=Probe(_matmul_resize, lambda s: s.w_shape[1], lambda s: [*s.x_shape[:-1], s.w_shape[1]]))
