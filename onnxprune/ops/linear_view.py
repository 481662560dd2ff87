"""A weight layer as ``rows @ W + b``: the view reconstruction refits. Each weight layer's op spec
names its subclass (``OpSpec.linear_view``): ``ConvView`` in ``ops/conv.py``, ``MatrixView`` in
``ops/matmul.py``."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.state import set_const_input

#: Rows sampled per layer and calibration sample (conv patches can be many), on average over a
#: batch: keeps memory and time bounded, and the same whatever batch the samples came in.
MAX_ROWS_PER_SAMPLE = 256


class LinearView:
    """A consuming layer as ``rows @ W + b``; subclasses know one op type."""

    def __init__(self, node: gs.Node, out_mask: np.ndarray | None = None):
        self.node = node
        #: on the original layer: the outputs the pruned layer still has
        self.out_mask = out_mask

    def target_weight(self) -> tuple[np.ndarray, np.ndarray]:
        """Weight and bias restricted to the kept outputs (the refit's target)."""
        w, b = self.weight(), self.bias()
        if self.out_mask is not None:
            w, b = w[:, self.out_mask], b[self.out_mask]
        return w.astype(np.float64), b

    def supported(self) -> str | None:
        """None if the layer can be refit, else why not."""
        return None

    def rows(self, x: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def pick(self, x: np.ndarray, rng: np.random.Generator, samples: int,
             rows_per_sample: int = MAX_ROWS_PER_SAMPLE) -> np.ndarray | None:
        """Row indices to use from one batch of ``samples`` samples: all of them (None), or
        ``rows_per_sample`` per sample drawn from the whole batch, so statistics over conv
        patches stay bounded in time and memory (a 736x1952 map has 1.4 M rows per image)."""
        n_rows, limit = self.n_rows(x), int(rows_per_sample) * max(int(samples), 1)
        return None if n_rows <= limit else np.sort(rng.choice(n_rows, limit, replace=False))

    def rows_per_input(self) -> int:
        """Rows of ``weight()`` per index of the layer's input channel axis (a conv's kernel
        area; 1 for a matrix): input channel ``c`` owns rows ``c*k .. c*k+k-1``."""
        return 1

    def n_rows(self, x: np.ndarray) -> int:
        raise NotImplementedError

    def out_rows(self, y: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
        """A tensor shaped like the layer's output, as rows aligned with ``rows``."""
        flat = y.reshape(-1, y.shape[-1])
        return flat if pick is None else flat[pick]

    def weight(self) -> np.ndarray:
        raise NotImplementedError

    def stored_weight(self, w: np.ndarray) -> np.ndarray:
        """A ``weight()``-shaped matrix in the layout (and dtype) of the layer's weight constant."""
        raise NotImplementedError

    #: the axis of the weight constant that holds the layer's outputs
    out_axis = 0
    #: each row is one position of the input, one input channel per column, and the output's
    #: rows are the same positions in the same order (a matrix; not a conv's patches): a layer
    #: feeding this one through an element-wise activation computes its rows position by position
    rows_are_positions = False

    def set_weight(self, w: np.ndarray) -> None:
        #: a quantized weight's scales widened for the refit (the bias follows them), or None
        self.widened = store(self.node, 1, self.stored_weight(w), widen_axis=self.out_axis)

    def bias_slot(self) -> tuple[gs.Node, int] | None:
        """The (node, input) holding the bias constant, None when there is none yet."""
        return None

    def output_after_bias(self) -> gs.Variable:
        """The layer's output with its bias added (what an activation after it reads)."""
        return self.node.outputs[0]

    def refit_refused(self, w: np.ndarray) -> str | None:
        """Why a refit weight ``w`` cannot be stored, or None. A quantized weight (a folded
        DequantizeLinear's codec) is requantized on its scales, widened per channel where the
        refit needs it, and a quantized bias then follows them (see ``Dequantized.snap``)."""
        codec = getattr(self.node.inputs[1], "codec", None)
        if codec is None:
            return None
        _, new, why = codec.snap(self.stored_weight(w), widen_axis=self.out_axis)
        slot = self.bias_slot()
        bias_codec = getattr(slot[0].inputs[slot[1]], "codec", None) if slot else None
        if why is None and new.factor is not None and bias_codec is not None:
            why = bias_codec.snap(np.asarray(slot[0].inputs[slot[1]].values), factor=new.factor)[2]
        return why

    def bias(self) -> np.ndarray:
        raise NotImplementedError

    def set_bias(self, b: np.ndarray, graph: gs.Graph) -> None:
        raise NotImplementedError


def store(node: gs.Node, index: int, values: np.ndarray, widen_axis: int | None = None, factor=None):
    """Set a layer parameter; a quantized one (its codec) is requantized (``Dequantized.snap``),
    the float values rounded to what the written model holds. Returns how its scales widened."""
    codec = getattr(node.inputs[index], "codec", None)
    if codec is not None:
        values, codec, why = codec.snap(values, widen_axis=widen_axis, factor=factor)
        if why:
            raise ValueError(why)  # refit_refused says so first
    set_const_input(node, index, values)
    if codec is not None:
        node.inputs[index].codec = codec
        return codec.factor
    return None
