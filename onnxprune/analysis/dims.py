"""Dimensions that shape inference leaves unknown, derived from how the graph computes them.

Attention masks are built from the input's shape at run time (Shape, Gather, Range, Unsqueeze,
Expand to a shape vector whose -1 entries are swapped for 1 with Equal/Where...), and ONNX shape
inference loses track of them at the first computed shape. Whether the mask broadcasts over the
heads (its head dim is 1) is what the rules need to know; :func:`dim_of` works it out by walking
back through the ops that compute shapes and through broadcasting ops, and answers None when it
cannot tell — a rule then refuses, as it would for any unknown dim.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .state import const, symbolic_shape

_DEPTH = 48

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
                "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift", "PRelu"}
_UNARY = {"Cast", "CastLike", "Not", "Neg", "Abs", "Identity", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt",
          "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Softmax", "LogSoftmax", "Erf", "IsNaN", "IsInf", "Clip",
          "Dropout"}


def _producer(tensor) -> gs.Node | None:
    if isinstance(tensor, gs.Constant) or tensor is None or not tensor.inputs:
        return None
    return tensor.inputs[0]


def _rank(tensor) -> int | None:
    dims = symbolic_shape(tensor)
    return None if dims is None else len(dims)


def dim_of(tensor, axis: int, cache: dict | None = None) -> int | str | None:
    """See :func:`_dim_of`. ``cache``: answers kept across calls on one unchanged graph, so that
    deep graphs are walked a little further each time rather than from their end every time."""
    return _Walk(cache).dim(tensor, axis, _DEPTH)


def value_of(tensor, cache: dict | None = None) -> list | None:
    """See :func:`_value_of`."""
    return _Walk(cache).value(tensor, _DEPTH)


class _Walk:
    """One walk back through the graph, remembering what it has worked out. An answer that met
    the depth limit is remembered for this walk only, never in the shared cache."""

    def __init__(self, cache: dict | None = None):
        self.cache = cache if cache is not None else {}
        self.local: dict = {}
        self.cut = 0

    def _get(self, key, compute, depth: int):
        if key in self.cache:
            return self.cache[key]
        if key in self.local:
            return self.local[key]
        if depth <= 0:
            self.cut += 1
            return None
        self.local[key] = None  # cycles (none in a valid graph) end here
        before = self.cut
        result = compute()
        self.local[key] = result
        if self.cut == before:
            self.cache[key] = result
        return result

    def dim(self, tensor, axis: int, depth: int):
        return self._get(("dim", id(tensor), axis), lambda: _dim_of(self, tensor, axis, depth), depth)

    def value(self, tensor, depth: int):
        return self._get(("value", id(tensor)), lambda: _value_of(self, tensor, depth), depth)


def _dim_of(w: _Walk, tensor, axis: int, depth: int) -> int | str | None:
    """The size of ``tensor`` along ``axis``: an int, a dim name (equal names are equal dims;
    names are followed back to where the dim comes from, so that two names shape inference
    gave the same dim on different paths become one), or None when it cannot be told."""
    dims = symbolic_shape(tensor)
    if dims is None or not 0 <= axis < len(dims):
        return None
    own = dims[axis]
    if isinstance(own, int):
        return own
    derived = _derive(w, tensor, axis, dims, depth)
    if derived is not None:
        return derived
    return own if isinstance(own, str) else None


def _derive(w: _Walk, tensor, axis: int, dims: list, depth: int) -> int | str | None:
    node = _producer(tensor)
    if node is None:
        return None
    r, op, d = len(dims), node.op, depth - 1
    if op in ("LayerNormalization", "Softmax", "LogSoftmax", "BatchNormalization", "InstanceNormalization"):
        return w.dim(node.inputs[0], axis, d)
    if op.startswith("Reduce") and int(node.attrs.get("keepdims", 1)):
        axes = _axes(node) if op == "ReduceSum" or "axes" not in node.attrs else [int(a) for a in node.attrs["axes"]]
        if axes is None:
            return None
        return 1 if axis in [a + r if a < 0 else a for a in axes] else w.dim(node.inputs[0], axis, d)
    if op in ("Slice", "Split"):  # dims other than the sliced/split axes pass
        if op == "Split":
            axes = [int(node.attrs.get("axis", 0))]
        elif "axes" in node.attrs:
            axes = [int(a) for a in node.attrs["axes"]]
        else:
            v = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
            axes = None if v is None else [int(a) for a in np.atleast_1d(v)]
        if axes is None or axis in [a + r if a < 0 else a for a in axes]:
            return None
        return w.dim(node.inputs[0], axis, d)
    if op == "Concat":
        c = int(node.attrs.get("axis", 0))
        c = c + r if c < 0 else c
        parts = [w.dim(t, axis, d) for t in node.inputs]
        if axis == c:
            return sum(parts) if all(isinstance(p, int) for p in parts) else None
        named = [p for p in parts if p is not None]  # every input has this dim
        ints = [p for p in named if isinstance(p, int)]
        return ints[0] if ints else (named[0] if named else None)
    if op == "Gather":
        data, indices = node.inputs[0], node.inputs[1]
        ri, rd = _rank(indices), _rank(data)
        if ri is None or rd is None:
            return None
        g = int(node.attrs.get("axis", 0))
        g = g + rd if g < 0 else g
        if axis < g:
            return w.dim(data, axis, d)
        if axis < g + ri:
            return w.dim(indices, axis - g, d)
        return w.dim(data, axis - ri + 1, d)
    if op == "Range":
        start, delta, limit = const(node.inputs[0]), const(node.inputs[2]), w.value(node.inputs[1], d)
        if start is None or delta is None or limit is None or len(limit) != 1:
            return None
        if np.ravel(start).tolist() == [0] and np.ravel(delta).tolist() == [1]:
            return limit[0]  # a name, or an int (a negative count is empty, not handled)
        return None
    if op == "MatMul":
        a, b = node.inputs[0], node.inputs[1]
        ra, rb = _rank(a), _rank(b)
        if ra is None or rb is None or ra < 2 or rb < 2:
            return None
        if axis == r - 2:
            return w.dim(a, ra - 2, d)
        if axis == r - 1:
            return w.dim(b, rb - 1, d)
        return _broadcast([_aligned(w, a, axis, r, d, 2), _aligned(w, b, axis, r, d, 2)])
    if op in _UNARY:
        return w.dim(node.inputs[0], axis, d)
    if op in _ELEMENTWISE:
        return _broadcast([_aligned(w, t, axis, r, d) for t in node.inputs if t is not None and t.name])
    if op == "Unsqueeze":
        axes = _axes(node)
        if axes is None:
            return None
        axes = [a + r if a < 0 else a for a in axes]
        if axis in axes:
            return 1
        return w.dim(node.inputs[0], axis - sum(a < axis for a in axes), d)
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return None if perm is None else w.dim(node.inputs[0], int(perm[axis]), d)
    if op == "Expand":
        vector = w.value(node.inputs[1], d)
        if vector is None:
            return None
        j = axis - (r - len(vector))
        own = _aligned(w, node.inputs[0], axis, r, d)
        entry = vector[j] if j >= 0 else 1
        return _broadcast([own, entry])
    if op in ("Reshape", "ConstantOfShape"):
        vector = w.value(node.inputs[1] if op == "Reshape" else node.inputs[0], d)
        if vector is None or len(vector) != r:
            return None
        v = vector[axis]
        if op == "Reshape" and isinstance(v, int) and v <= 0:
            return None  # 0 and -1 depend on the input; not needed so far
        return v
    return None


def _aligned(w: _Walk, tensor, axis: int, out_rank: int, depth: int, matrix: int = 0) -> int | str | None:
    """The dim of a broadcast input at output axis ``axis`` (1 where it has no such axis);
    ``matrix`` trailing axes (MatMul's) take no part in broadcasting."""
    r = _rank(tensor)
    if r is None:
        return None
    j = axis - (out_rank - r)
    return 1 if j < 0 or (matrix and r - matrix <= 0) else w.dim(tensor, j, depth)


def _broadcast(dims: list) -> int | str | None:
    """The broadcast of dims (ints, names, None for unknown): None unless it is certain."""
    known = [d for d in dims if d is not None]
    big = {d for d in known if d != 1}
    ints = {d for d in big if isinstance(d, int)}
    if len(ints) > 1:
        return None
    if ints:
        return ints.pop()  # every other input is 1 or this
    if len(big) == 1:
        return big.pop()  # an unknown input is 1 or this
    if big:
        return None  # two names: either may be 1
    return 1 if len(known) == len(dims) else None


def _axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1:
        v = const(node.inputs[1])
        if v is not None:
            return [int(a) for a in np.atleast_1d(v)]
    return None


def _value_of(w: _Walk, tensor, depth: int) -> list | None:
    """Entries of a small integer (or bool) vector computed from shapes: ints where known, dim
    names (see :func:`dim_of`) for dims read at run time, else None. Scalars are one-entry
    lists. None when even the length is unknown."""
    v = const(tensor)
    if v is not None:
        if v.ndim > 1 or v.size > 64 or v.dtype.kind not in "iub":
            return None
        return [int(x) for x in np.atleast_1d(v)]
    node = _producer(tensor)
    if node is None or depth <= 0:
        return None
    op, d = node.op, depth - 1
    if op == "Shape":
        r = _rank(node.inputs[0])
        if r is None:
            return None
        start = int(node.attrs.get("start", 0))
        end = node.attrs.get("end")
        start = max(0, min(r, start + r if start < 0 else start))
        end = r if end is None else max(0, min(r, int(end) + r if int(end) < 0 else int(end)))
        return [w.dim(node.inputs[0], i, d) for i in range(start, end)]
    if op == "Concat":
        out = []
        for t in node.inputs:
            part = w.value(t, d)
            if part is None:
                return None
            out.extend(part)
        return out
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape"):
        inner = w.value(node.inputs[0], d)
        r = _rank(tensor)
        if inner is None or r is None or r > 1:
            return None
        return inner
    if op == "Gather":
        src, idx = w.value(node.inputs[0], d), const(node.inputs[1])
        if src is None or idx is None or int(node.attrs.get("axis", 0)) != 0:
            return None
        try:
            return [src[int(i)] for i in np.atleast_1d(idx)]
        except IndexError:
            return None
    if op == "Slice" and len(node.inputs) >= 3:  # opset >= 10: bounds are inputs
        src = w.value(node.inputs[0], d)
        bounds = [const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None
                  for i in range(1, 5)]
        starts, ends, axes, steps = bounds
        if src is None or starts is None or ends is None or np.size(starts) != 1 or np.size(ends) != 1:
            return None
        if len(node.inputs) > 3 and node.inputs[3].name and (axes is None or np.ravel(axes).tolist() != [0]):
            return None
        if len(node.inputs) > 4 and node.inputs[4].name and (steps is None or np.ravel(steps).tolist() != [1]):
            return None
        return src[slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0]))]
    if op == "ConstantOfShape":
        shape = w.value(node.inputs[0], d)
        fill = node.attrs.get("value")
        fill = 0 if fill is None else np.asarray(fill.values if hasattr(fill, "values") else fill).reshape(-1)
        if shape is None or len(shape) > 1 or any(s is None for s in shape):
            return None
        if np.size(fill) != 1 or np.asarray(fill).dtype.kind not in "iub":
            return None
        n = shape[0] if shape else 1
        return [int(np.ravel(fill)[0])] * n
    if op in ("Equal", "Where", "Mul", "Add", "Sub", "Max", "Min"):
        args = [w.value(t, d) for t in node.inputs]
        if any(a is None for a in args):
            return None
        n = max(len(a) for a in args)
        if any(len(a) not in (1, n) for a in args):
            return None
        args = [a * n if len(a) == 1 else a for a in args]
        out = []
        for vals in zip(*args):
            if op == "Where":
                c, x, y = vals
                out.append(None if not isinstance(c, int) else (x if c else y))
            elif any(not isinstance(v, int) for v in vals):
                out.append(None)
            else:
                a, b = vals
                out.append({"Equal": int(a == b), "Mul": a * b, "Add": a + b, "Sub": a - b,
                            "Max": max(a, b), "Min": min(a, b)}[op])
        return out
    return None
