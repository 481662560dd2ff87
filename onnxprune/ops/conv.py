"""Convolutions (Conv, ConvTranspose): weight layers whose weight creates output channels and
consumes input channels; grouped ones lose whole conv groups."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.edits import SetAttrToKeptCount
from ..analysis.state import State, UnsupportedPattern, const, has_input
from .common import zero_by_parameters
from .linear_view import LinearView, store
from .probe import LayerSpec, Probe
from .registry import Shapes, register, rule


@rule("Conv", channel_inputs=(0,))
def conv(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    weight = const(node.inputs[1])
    if weight is None:
        if tr is not None:
            state.block(tr.atoms, "Conv with weights computed at run time")
        return
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    groups = int(node.attrs.get("group", 1))
    out_rank = weight.ndim
    if tr is not None and tr.axis != 1:
        raise UnsupportedPattern("Conv input carries channels on a non-channel axis")
    if tr is not None and len(tr.atoms) != c_in_per_group * groups:
        raise UnsupportedPattern("Conv weight does not match its input's channels")
    if groups == 1:
        if tr is not None:
            state.site(node, 1, 1, tr.atoms, "weight_in")
        out = state.fresh(c_out, node)
        state.site(node, 1, 0, out, "weight_out")
    elif tr is not None and len(tr.atoms) == groups * c_in_per_group and c_out % groups == 0:
        out = _whole_conv_groups(node, state, tr.atoms, groups, c_out // groups)
        state.site(node, 1, 0, out, "weight_out")
    else:
        out = state.fresh(c_out, node)
        state.block(out, f"grouped Conv (group={groups}) on a non-prunable input")
        state.site(node, 1, 0, out, "weight_out")
    bias_site(node, 2, out, state)
    state.set_track(node.outputs[0], 1, out, out_rank)


@rule("ConvTranspose", channel_inputs=(0,))
def conv_transpose(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    weight = const(node.inputs[1])  # (C_in, C_out / group, k...)
    if weight is None:
        if tr is not None:
            state.block(tr.atoms, "ConvTranspose with weights computed at run time")
        return
    if tr is not None and tr.axis != 1:
        raise UnsupportedPattern("ConvTranspose input carries channels on a non-channel axis")
    groups = int(node.attrs.get("group", 1))
    if groups == 1:
        if tr is not None:
            state.site(node, 1, 0, tr.atoms, "weight_in")
        out = state.fresh(weight.shape[1], node)
        state.site(node, 1, 1, out, "weight_out")
    elif tr is not None and len(tr.atoms) == weight.shape[0] and weight.shape[0] % groups == 0:
        out = _whole_conv_groups(node, state, tr.atoms, groups, weight.shape[1])
        state.site(node, 1, 0, tr.atoms, "weight_out")
    else:
        out = state.fresh(weight.shape[1] * groups, node)
        state.block(out, f"grouped ConvTranspose (group={groups}) on a non-prunable input")
    bias_site(node, 2, out, state)
    state.set_track(node.outputs[0], 1, out, weight.ndim)


def _whole_conv_groups(node: gs.Node, state: State, in_atoms: np.ndarray, groups: int, per_group_out: int
                       ) -> np.ndarray:
    """Grouped and depthwise convs: a conv group's inputs and outputs go together.

    Channels can only leave a grouped conv a whole conv group at a time (every group must keep
    the same width), so the input channels of each conv group are tied into one channel and the
    group's outputs repeat it. Depthwise is the case of one input channel per group. Returns
    the output atoms; the ``group`` attribute becomes the number of conv groups kept.
    """
    blocks = in_atoms.reshape(groups, -1)
    for j in range(1, blocks.shape[1]):
        state.union(blocks[:, 0], blocks[:, j])
    state.edit(SetAttrToKeptCount(node, "group", blocks[:, 0]))
    return np.repeat(blocks[:, 0], per_group_out)


def bias_site(node: gs.Node, index: int, out: np.ndarray, state: State) -> None:
    if not has_input(node, index):
        return
    bias = const(node.inputs[index])
    if bias is None:
        state.block(out, f"{node.op} bias computed at run time")
    elif bias.ndim >= 1 and bias.shape[-1] == len(out) and len(out) > 1:
        state.site(node, index, bias.ndim - 1, out, "bias")
    elif bias.size != 1:
        state.block(out, f"{node.op} bias of unexpected shape {list(bias.shape)}")



# --- cost, probe, linear view -------------------------------------------------------------------


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def conv_flops(s: Shapes) -> int:
    """A multiply-add per output element and weight element of one output channel."""
    out, w = s.y(), s.w()
    return 2 * _prod(out) * _prod(w[1:]) if out and w else 0


def conv_transpose_flops(s: Shapes) -> int:
    inp, w = s.x(), s.w()
    return 2 * _prod(inp) * _prod(w[1:]) if inp and w else 0


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


def _conv_out_shape(spec: LayerSpec) -> list[int]:
    # output spatial size does not depend on channel counts: take it from the input's, scaled by strides
    spatial = spec.y_spatial
    if spatial is None:
        strides = spec.attrs.get("strides") or [1] * (len(spec.x_shape) - 2)
        spatial = [max(1, -(-d // s)) for d, s in zip(spec.x_shape[2:], strides)]
    return [spec.x_shape[0], spec.w_shape[0], *spatial]


def _conv_transpose_resize(spec: LayerSpec, old: LayerSpec) -> LayerSpec:
    groups = _conv_groups(spec.w_shape[0], old, old.w_shape[0])
    x = list(old.x_shape)
    x[1] = spec.w_shape[0]
    return replace(spec, x_shape=x, attrs={**old.attrs, "group": groups})


class ConvView(LinearView):
    def supported(self) -> str | None:
        w = const(self.node.inputs[1])
        if w is None or w.ndim != 4:
            return "only 2-D convolutions are refit"
        if int(self.node.attrs.get("group", 1)) != 1:
            return "grouped convolution"
        if self.node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "auto_pad"
        return None

    def _geometry(self):
        w = const(self.node.inputs[1])
        kh, kw = w.shape[2:]
        pads = list(self.node.attrs.get("pads", [0, 0, 0, 0]))
        strides = list(self.node.attrs.get("strides", [1, 1]))
        dil = list(self.node.attrs.get("dilations", [1, 1]))
        return kh, kw, pads, strides, dil

    def _out_hw(self, x: np.ndarray) -> tuple[int, int]:
        kh, kw, pads, (sh, sw), (dh, dw) = self._geometry()
        h = (x.shape[2] + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
        w = (x.shape[3] + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
        return h, w

    def rows_per_input(self) -> int:
        kh, kw = const(self.node.inputs[1]).shape[2:]
        return int(kh * kw)

    def out_rows(self, y: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
        return super().out_rows(np.moveaxis(y, 1, -1), pick)

    def n_rows(self, x: np.ndarray) -> int:
        h, w = self._out_hw(x)
        return x.shape[0] * h * w

    def rows(self, x: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
        """The picked patches, gathered from ``x`` itself (padding as zeros, no padded copy of
        a whole feature map per layer), one kernel offset at a time: a single fancy index over
        (row, channel, ky, kx) would build index arrays as large as the patches themselves.
        The map is read channels-last (one copy of it), so that each patch position's channels
        are one contiguous read instead of one per channel (the same values; ResNet-50, 64 images:
        6.4 s in all before, 5.4 s after)."""
        kh, kw, pads, (sh, sw), (dh, dw) = self._geometry()
        ho, wo = self._out_hw(x)
        idx = np.arange(x.shape[0] * ho * wo) if pick is None else pick
        n, rest = np.divmod(idx, ho * wo)
        oy, ox = np.divmod(rest, wo)
        c, h, w = x.shape[1:]
        last = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, c)  # (n, y, x) rows of channels
        patches = np.empty((len(idx), c, kh, kw), x.dtype)
        taken = np.empty((len(idx), c), x.dtype)
        for i in range(kh):
            ys = oy * sh - pads[0] + i * dh
            y_in = (ys >= 0) & (ys < h)
            at = (n * h + np.clip(ys, 0, h - 1)) * w
            for j in range(kw):
                xs = ox * sw - pads[1] + j * dw
                np.take(last, at + np.clip(xs, 0, w - 1), axis=0, out=taken, mode="clip")
                taken[~(y_in & (xs >= 0) & (xs < w))] = 0  # padding
                patches[:, :, i, j] = taken
        return patches.reshape(len(idx), -1)

    def weight(self) -> np.ndarray:
        w = const(self.node.inputs[1])
        return w.reshape(w.shape[0], -1).T

    def stored_weight(self, w: np.ndarray) -> np.ndarray:
        old = const(self.node.inputs[1])
        return w.T.reshape(old.shape).astype(old.dtype)

    def bias(self) -> np.ndarray:
        n = const(self.node.inputs[1]).shape[0]
        b = const(self.node.inputs[2]) if len(self.node.inputs) > 2 and self.node.inputs[2].name else None
        return np.zeros(n) if b is None else np.broadcast_to(b, (n,)).astype(np.float64)

    def bias_slot(self):
        return (self.node, 2) if len(self.node.inputs) > 2 and self.node.inputs[2].name else None

    def set_bias(self, b: np.ndarray, graph: gs.Graph) -> None:
        dtype = const(self.node.inputs[1]).dtype
        if self.bias_slot():
            store(self.node, 2, b.astype(dtype), factor=getattr(self, "widened", None))
        else:
            self.node.inputs.append(gs.Constant(f"{self.node.name}__input2", b.astype(dtype)))


def _conv_view() -> type:
    return ConvView


register("Conv", "ConvTranspose", zero_out=zero_by_parameters(1, 2))
register("Conv", weight_layer=True, flops=conv_flops, linear_view=_conv_view, parameter_inputs=(1, 2),
         probe=Probe(_conv_resize, lambda s: s.w_shape[0], _conv_out_shape, keeps_out_spatial=True))
register("ConvTranspose", weight_layer=True, flops=conv_transpose_flops, parameter_inputs=(1, 2),
         probe=Probe(_conv_transpose_resize, lambda s: s.w_shape[1] * int(s.attrs.get("group", 1))))
