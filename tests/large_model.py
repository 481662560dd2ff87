"""Synthetic large models with external data, and a peak-memory probe for pruning them.

Used by ``tests/test_large_model.py`` and ``tools/check_large_model.py``. The generator writes
weights to the data file one tensor at a time, so making a 2.5 GB model needs about one
tensor's worth of memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent


def make_large_model(path: str | os.PathLike, hidden: int = 8192, layers: int = 9, seed: int = 0,
                     conv_channels: int = 32) -> int:
    """Write a conv stem and a deep MLP of ``layers`` hidden x hidden fp32 weights to ``path``, its
    weights in ``path.name + '.data'``. Returns the size on disk (model file plus data file).

    The MLP alternates MatMul + Add and Gemm (transB=1); one weight is used by two layers (shared
    constants must be un-shared when pruned); tiny tensors (shape vectors, the stem's bias) stay
    inside the model file, as exporters do.
    """
    path = Path(path)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    offset = 0
    with open(path.parent / data_name, "wb") as fh:

        def weight(name: str, shape: list[int], scale: float) -> str:
            nonlocal offset
            values = rng.standard_normal(shape, dtype=np.float32)
            values *= np.float32(scale)
            if values.nbytes < 1024:
                inits.append(onnx.numpy_helper.from_array(values, name))
                return name
            fh.write(values.tobytes())
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(values.nbytes))):
                t.external_data.add(key=key, value=value)
            inits.append(t)
            offset += values.nbytes
            return name

        c = conv_channels
        nodes.append(helper.make_node("Conv", ["x", weight("stem_w", [c, 3, 3, 3], 0.3), weight("stem_b", [c], 0.1)],
                                      ["stem"], name="stem", pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        nodes.append(helper.make_node("Relu", ["stem"], ["stem_act"], name="stem_relu"))
        nodes.append(helper.make_node("GlobalAveragePool", ["stem_act"], ["pool"], name="pool"))
        nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
        nodes.append(helper.make_node("Gemm", ["flat", weight("proj_w", [c, hidden], 0.3), weight("proj_b", [hidden], 0.1)],
                                      ["h0"], name="proj"))
        x = "h0"
        shared = None
        scale = 1.0 / np.sqrt(hidden)
        for i in range(layers):
            act = f"a{i}"
            nodes.append(helper.make_node("Relu", [x], [act], name=f"relu{i}"))
            if i == layers - 1 and shared is not None:
                w = shared  # the last hidden layer reuses the first MatMul's weight
            else:
                w = weight(f"w{i}", [hidden, hidden], scale)
            if i % 2 == 0:
                if shared is None:
                    shared = w
                nodes.append(helper.make_node("MatMul", [act, w], [f"m{i}"], name=f"matmul{i}"))
                nodes.append(helper.make_node("Add", [f"m{i}", weight(f"b{i}", [hidden], 0.1)], [f"h{i + 1}"],
                                              name=f"add{i}"))
            else:
                nodes.append(helper.make_node("Gemm", [act, w, weight(f"b{i}", [hidden], 0.1)], [f"h{i + 1}"],
                                              name=f"gemm{i}", transB=1))
            x = f"h{i + 1}"
        nodes.append(helper.make_node("Relu", [x], ["a_out"], name="relu_out"))
        nodes.append(helper.make_node("Gemm", ["a_out", weight("head_w", [hidden, 10], scale), weight("head_b", [10], 0.1)],
                                      ["y"], name="head"))
    graph = helper.make_graph(nodes, "large_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return disk_size(path)


class _DataWriter:
    """Initializers for a generated model: tensors of 1 KiB or more go to the data file, one at a
    time (page-aligned, as onnxprune writes them), smaller ones stay in the model."""

    def __init__(self, fh, data_name: str):
        self.fh, self.data_name, self.inits = fh, data_name, []

    def add(self, name: str, values: np.ndarray) -> str:
        if values.nbytes < 1024:
            self.inits.append(onnx.numpy_helper.from_array(values, name))
            return name
        pad = -self.fh.tell() % 4096
        self.fh.write(b"\0" * pad)
        offset = self.fh.tell()
        self.fh.write(np.ascontiguousarray(values).tobytes())
        t = TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype),
                        dims=list(values.shape), data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.data_name), ("offset", str(offset)), ("length", str(values.nbytes))):
            t.external_data.add(key=key, value=value)
        self.inits.append(t)
        return name


def make_large_decoder(path: str | os.PathLike, hidden: int = 2048, mlp: int = 8192, layers: int = 12,
                       heads: int = 16, seq: int = 16, seed: int = 0) -> int:
    """Write a decoder-shaped model to ``path`` (weights in ``path.name + '.data'``): ``layers``
    pre-norm blocks of causal multi-head attention (Q, K, V, O projections of ``hidden``) and a
    ReLU MLP of ``mlp``, on hidden states ``x`` of shape (1, seq, hidden), then a final norm.
    fp32; the defaults make about 2.4 GB. Returns the size on disk."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    d = hidden // heads
    nodes = []

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    with open(path.parent / (path.name + ".data"), "wb") as fh:
        w = _DataWriter(fh, path.name + ".data")

        def dense(x, n_in, n_out, name):
            values = rng.standard_normal((n_in, n_out), dtype=np.float32)
            values *= np.float32(1 / np.sqrt(n_in))
            y = node("MatMul", [x, w.add(name + ".weight", values)], name)
            bias = (rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.02))
            return node("Add", [y, w.add(name + ".bias", bias)], name + ".out")

        def norm(x, name):
            scale = 1 + 0.1 * rng.standard_normal(hidden, dtype=np.float32)
            bias = 0.1 * rng.standard_normal(hidden, dtype=np.float32)
            return node("LayerNormalization", [x, w.add(name + ".scale", scale), w.add(name + ".bias", bias)],
                        name, axis=-1, epsilon=1e-5)

        split = w.add("shape.split", np.array([1, seq, heads, d], np.int64))
        merge = w.add("shape.merge", np.array([1, seq, hidden], np.int64))
        mask = w.add("causal_mask", np.triu(np.full((seq, seq), -1e4, np.float32), 1))
        x = "x"
        for i in range(layers):
            p = f"block{i}"
            h = norm(x, f"{p}.attn_norm")
            q, k, v = (node("Transpose", [node("Reshape", [dense(h, hidden, hidden, f"{p}.{n}"), split], f"{p}.{n}.split")],
                            f"{p}.{n}.heads", perm=[0, 2, 1, 3]) for n in ("q", "k", "v"))
            kt = node("Transpose", [k], f"{p}.kt", perm=[0, 1, 3, 2])
            scores = node("Mul", [node("MatMul", [q, kt], f"{p}.qk"), w.add(f"{p}.scale", np.array(1 / np.sqrt(d), np.float32))],
                          f"{p}.scores")
            probs = node("Softmax", [node("Add", [scores, mask], f"{p}.masked")], f"{p}.probs", axis=-1)
            o = node("Transpose", [node("MatMul", [probs, v], f"{p}.pv")], f"{p}.pv.t", perm=[0, 2, 1, 3])
            o = dense(node("Reshape", [o, merge], f"{p}.merged"), hidden, hidden, f"{p}.o")
            x = node("Add", [x, o], f"{p}.attn_res")
            h = norm(x, f"{p}.mlp_norm")
            h = node("Relu", [dense(h, hidden, mlp, f"{p}.up")], f"{p}.act")
            x = node("Add", [x, dense(h, mlp, hidden, f"{p}.down")], f"{p}.mlp_res")
        norm(x, "final_norm")
        inits = w.inits
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "large_decoder",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return disk_size(path)


def disk_size(path: str | os.PathLike) -> int:
    """Bytes of a model file plus the external data files it names."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    files = {path}
    for t in _tensors(model):
        if t.data_location == TensorProto.EXTERNAL:
            files.add(path.parent / next(e.value for e in t.external_data if e.key == "location"))
    return sum(f.stat().st_size for f in files)


def _tensors(model: onnx.ModelProto):
    yield from model.graph.initializer


#: Run in a fresh interpreter: import everything pruning needs, note the peak RSS so far (the
#: baseline), prune through the CLI's entry point, then report the new peak. The peak is the
#: process's VmHWM: ru_maxrss would also count the parent's memory before exec (Linux keeps it).
_PROBE = r"""
import json, resource, sys, time
import numpy, onnx, onnx_graphsurgeon, onnx.reference, onnx.shape_inference
import onnxprune.cli, onnxprune.io, onnxprune.pipeline, onnxprune.passes.builtin
if len(sys.argv) > 1 and sys.argv[1].startswith("--lazy-load-threshold="):
    onnxprune.io.LAZY_LOAD_THRESHOLD = int(sys.argv.pop(1).split("=", 1)[1])

def high_water():
    try:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

base = high_water()
t0 = time.perf_counter()
try:
    onnxprune.cli.main(sys.argv[1:], standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = exc.code
seconds = time.perf_counter() - t0
print("PROBE " + json.dumps({"code": code, "baseline": base, "peak": high_water(), "seconds": seconds}))
"""


def prune_and_measure(model: str | os.PathLike, out: str | os.PathLike, *args: str,
                      lazy_load_threshold: int | None = None) -> dict:
    """Prune ``model`` in a subprocess through the CLI; return its exit code, peak RSS above the
    interpreter's baseline (bytes), time, and stdout/stderr. ``lazy_load_threshold`` overrides
    ``onnxprune.io.LAZY_LOAD_THRESHOLD`` (to take the large-model path with a smaller model)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    setting = [] if lazy_load_threshold is None else [f"--lazy-load-threshold={lazy_load_threshold}"]
    res = subprocess.run([sys.executable, "-c", _PROBE, *setting, "prune", str(model), "-o", str(out), *args],
                         capture_output=True, text=True, env=env)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")), None)
    if line is None:
        raise RuntimeError(f"probe failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
    probe = json.loads(line[len("PROBE "):])
    probe.update(extra=probe["peak"] - probe["baseline"], wall=time.perf_counter() - t0, stdout=res.stdout,
                 stderr=res.stderr)
    return probe


def check_lazy_path(model: onnx.ModelProto, folder: str | os.PathLike, **prune_args) -> None:
    """Save ``model`` with every tensor in external data, prune it on the large-model path
    (weights read on demand, streamed out) and check the result equals pruning it in memory:
    same nodes, inputs, outputs and opsets, the same weights bit for bit. Raises AssertionError."""
    import onnxprune.io as io
    from onnxprune import prune

    folder = Path(folder)
    source = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx's external-data conversion edits the model it is given
    onnx.save_model(copy, str(source), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    saved, io.LAZY_LOAD_THRESHOLD = io.LAZY_LOAD_THRESHOLD, 0
    try:
        result = prune(source, **prune_args)
        out = folder / "pruned.onnx"
        result.save(out)
    finally:
        io.LAZY_LOAD_THRESHOLD = saved
    reference = prune(model, **prune_args).model
    got = onnx.load(str(out))
    assert list(got.graph.node) == list(reference.graph.node), "nodes differ"
    for field in ("input", "output"):
        assert list(getattr(got.graph, field)) == list(getattr(reference.graph, field)), f"graph {field}s differ"
    assert list(got.opset_import) == list(reference.opset_import)
    want = {t.name: onnx.numpy_helper.to_array(t) for t in reference.graph.initializer}
    have = {t.name: onnx.numpy_helper.to_array(t) for t in got.graph.initializer}
    assert have.keys() == want.keys(), "initializers differ"
    for name, values in want.items():
        assert have[name].dtype == values.dtype and have[name].shape == values.shape, name
        assert have[name].tobytes() == values.tobytes(), f"weight '{name}' differs"
