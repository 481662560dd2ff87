"""A small builder for test graphs: each method adds nodes and returns the output tensor name.

Shapes are tracked so that tests and the graph generator can stack structures freely.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self, seed: int = 0, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.shapes: dict[str, list[int]] = {}
        self._n = 0

    # --- plumbing ----------------------------------------------------------------------
    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def input(self, shape: list[int], name: str = "x") -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        self.shapes[name] = list(shape)
        return name

    def const(self, values, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        self.shapes[name] = list(np.shape(values))
        return name

    def weight(self, *shape: int) -> str:
        return self.const(self.rng.standard_normal(shape).astype(np.float32) * 0.5)

    def node(self, op: str, inputs: list[str], shape: list[int], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        for o in outs:
            self.shapes[o] = list(shape) if not (shape and isinstance(shape[0], list)) else None
        return outs[0] if n_out == 1 else outs

    def output(self, name: str) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, self.shapes.get(name)))

    def model(self, domains: dict[str, int] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, initializer=self.inits)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    def channels(self, x: str) -> int:
        return self.shapes[x][1]

    # --- layers ------------------------------------------------------------------------
    def conv(self, x: str, c_out: int, k: int = 3, group: int = 1, bias: bool = True, stride: int = 1) -> str:
        n, c, h, w = self.shapes[x]
        ins = [x, self.weight(c_out, c // group, k, k)]
        if bias:
            ins.append(self.weight(c_out))
        ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
        return self.node("Conv", ins, [n, c_out, ho, wo], kernel_shape=[k, k], pads=[k // 2] * 4, group=group,
                         strides=[stride, stride])

    def conv_transpose(self, x: str, c_out: int) -> str:
        n, c, h, w = self.shapes[x]
        return self.node("ConvTranspose", [x, self.weight(c, c_out, 2, 2), self.weight(c_out)], [n, c_out, 2 * h, 2 * w],
                         kernel_shape=[2, 2], strides=[2, 2])

    def bn(self, x: str) -> str:
        c = self.channels(x)
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.standard_normal(c) * 0.1, r.standard_normal(c) * 0.1, r.uniform(0.5, 1.5, c)]
        return self.node("BatchNormalization", [x] + [self.const(p.astype(np.float32)) for p in params], self.shapes[x])

    def instance_norm(self, x: str) -> str:
        c = self.channels(x)
        return self.node("InstanceNormalization", [x, self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32)),
                                                   self.weight(c)], self.shapes[x])

    def act(self, x: str, op: str = "Relu", **attrs) -> str:
        if op == "SiLU":
            return self.node("Mul", [x, self.node("Sigmoid", [x], self.shapes[x])], self.shapes[x])
        if op == "GELU":
            s = self.node("Mul", [self.node("Add", [self.node("Erf", [self.node("Div", [x, self.const(np.float32(1.4142135))], self.shapes[x])], self.shapes[x]), self.const(np.float32(1.0))], self.shapes[x]), x], self.shapes[x])
            return self.node("Mul", [s, self.const(np.float32(0.5))], self.shapes[x])
        if op == "Clip":
            return self.node("Clip", [x, self.const(np.float32(0)), self.const(np.float32(6))], self.shapes[x])
        if op == "PRelu":
            shape = [self.channels(x)] + [1] * (len(self.shapes[x]) - 2)
            return self.node("PRelu", [x, self.const(self.rng.uniform(0, 0.3, shape).astype(np.float32))], self.shapes[x])
        return self.node(op, [x], self.shapes[x], **attrs)

    def channel_op(self, x: str, op: str = "Mul") -> str:
        """Element-wise with a per-channel constant, shaped (C, 1, 1) for NCHW inputs."""
        shape = [self.channels(x)] + [1] * (len(self.shapes[x]) - 2)
        return self.node(op, [x, self.const(self.rng.uniform(0.5, 1.5, shape).astype(np.float32))], self.shapes[x])

    def add(self, *xs: str, op: str = "Add") -> str:
        return self.node(op, list(xs), self.shapes[xs[0]])

    def concat(self, *xs: str, axis: int = 1) -> str:
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        return self.node("Concat", list(xs), shape, axis=axis)

    def split(self, x: str, sizes: list[int], as_attr: bool = False) -> list[str]:
        shapes = []
        for s in sizes:
            sh = list(self.shapes[x])
            sh[1] = s
            shapes.append(sh)
        if as_attr:
            outs = self.node("Split", [x], [shapes[0]], n_out=len(sizes), axis=1, split=sizes)
        else:
            outs = self.node("Split", [x, self.const(np.array(sizes, np.int64))], [shapes[0]], n_out=len(sizes), axis=1)
        for o, sh in zip(outs, shapes):
            self.shapes[o] = sh
        return outs

    def slice_channels(self, x: str, start: int, end: int) -> str:
        sh = list(self.shapes[x])
        sh[1] = len(range(sh[1])[start:end])
        ins = [x, self.const(np.array([start], np.int64)), self.const(np.array([end], np.int64)),
               self.const(np.array([1], np.int64))]
        return self.node("Slice", ins, sh)

    def maxpool(self, x: str, k: int = 2) -> str:
        n, c, h, w = self.shapes[x]
        return self.node("MaxPool", [x], [n, c, h // k, w // k], kernel_shape=[k, k], strides=[k, k])

    def avgpool(self, x: str, k: int = 2) -> str:
        n, c, h, w = self.shapes[x]
        return self.node("AveragePool", [x], [n, c, h // k, w // k], kernel_shape=[k, k], strides=[k, k])

    def gap(self, x: str) -> str:
        n, c = self.shapes[x][:2]
        return self.node("GlobalAveragePool", [x], [n, c, 1, 1])

    def resize2x(self, x: str) -> str:
        n, c, h, w = self.shapes[x]
        return self.node("Resize", [x, "", self.const(np.array([1, 1, 2, 2], np.float32))], [n, c, 2 * h, 2 * w],
                         mode="nearest")

    def pad(self, x: str) -> str:
        n, c, h, w = self.shapes[x]
        return self.node("Pad", [x, self.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], [n, c, h + 2, w + 2])

    def flatten(self, x: str) -> str:
        sh = self.shapes[x]
        return self.node("Flatten", [x], [sh[0], int(np.prod(sh[1:]))], axis=1)

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.node("Reshape", [x, self.const(np.array(shape, np.int64))],
                         _resolve(self.shapes[x], shape))

    def gemm(self, x: str, n_out: int, trans_b: bool = True) -> str:
        k = self.shapes[x][1]
        w = self.weight(n_out, k) if trans_b else self.weight(k, n_out)
        return self.node("Gemm", [x, w, self.weight(n_out)], [self.shapes[x][0], n_out], transB=int(trans_b))

    def matmul(self, x: str, n_out: int, bias: bool = True) -> str:
        sh = list(self.shapes[x])
        out_sh = sh[:-1] + [n_out]
        y = self.node("MatMul", [x, self.weight(sh[-1], n_out)], out_sh)
        return self.node("Add", [y, self.weight(n_out)], out_sh) if bias else y

    def transpose(self, x: str, perm: list[int]) -> str:
        sh = self.shapes[x]
        return self.node("Transpose", [x], [sh[p] for p in perm], perm=perm)

    def se(self, x: str, reduction: int = 4) -> str:
        c = self.channels(x)
        s = self.gap(x)
        s = self.act(self.conv(s, max(1, c // reduction), k=1), "Relu")
        s = self.act(self.conv(s, c, k=1), "Sigmoid")
        return self.node("Mul", [x, s], self.shapes[x])


def _resolve(in_shape: list[int], target: list[int]) -> list[int]:
    out = [in_shape[i] if t == 0 else t for i, t in enumerate(target)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(in_shape)) // known
    return out
