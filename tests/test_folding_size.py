"""Never blow a model up: constant folding materialises layer parameters, and anything else only
within a small budget, so a few bytes that compute megabytes stay a computation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import prune_with_oracle, random_feeds, session
from graphs import GraphBuilder
from onnx import helper, numpy_helper

from onnxprune.io import save_model
from onnxprune.normalize import FOLD_BUDGET_BYTES, normalize


def _with_constant_chain(kind: str) -> onnx.ModelProto:
    """A prunable conv pair whose output is added to a large tensor computed from tiny constants."""
    b = GraphBuilder(seed=1)
    x = b.input([1, 4, 8, 8])
    y = b.conv(b.act(b.conv(x, 8, k=3)), 8, k=1)
    if kind == "expand_tile":  # 32 bytes -> 2 KiB -> 8 MiB
        small = b.const(np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1))
        e = b.node("Expand", [small, b.const(np.array([1, 8, 8, 8], np.int64))], [1, 8, 8, 8])
        big = b.node("Tile", [e, b.const(np.array([4096, 1, 1, 1], np.int64))], [4096, 8, 8, 8])
    elif kind == "tile_doublings":  # 2 KiB doubled 12 times: 8 MiB
        big = b.const(np.ones((1, 8, 8, 8), np.float32))
        for _ in range(12):
            shape = list(b.shapes[big])
            big = b.node("Tile", [big, b.const(np.array([2, 1, 1, 1], np.int64))], [2 * shape[0]] + shape[1:])
    else:  # ConstantOfShape: 32 bytes of shape -> 8 MiB of ones
        shape = b.const(np.array([4096, 8, 8, 8], np.int64))
        b.nodes.append(helper.make_node("ConstantOfShape", [shape], ["ones"], name="cos",
                                        value=numpy_helper.from_array(np.array([1.0], np.float32))))
        b.shapes["ones"] = [4096, 8, 8, 8]
        big = "ones"
    out = b.node("Add", [y, big], list(b.shapes[big]))
    b.output(out)
    return b.model()


@pytest.mark.parametrize("kind", ["expand_tile", "tile_doublings", "constant_of_shape"])
def test_constant_chains_are_not_folded_into_a_big_model(kind, tmp_path):
    model = _with_constant_chain(kind)
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    graph = normalize(model)
    stored = sum(t.values.nbytes for t in graph.tensors().values() if hasattr(t, "values"))
    assert stored <= model.ByteSize() + FOLD_BUDGET_BYTES
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    out = tmp_path / "out.onnx"
    save_model(ctx.pruned, out, graph=ctx.pruned_graph)
    assert out.stat().st_size <= source.stat().st_size + FOLD_BUDGET_BYTES
    assert ctx.selection.removed, "the first conv's group should still be pruned"
    # still correct: the pruned model equals the original with the removed channels zeroed
    feeds = random_feeds(session(model))
    np.testing.assert_allclose(session(onnx.load(out)).run(None, feeds)[0], session(zeroed).run(None, feeds)[0],
                               rtol=1e-4, atol=1e-5)


def test_weights_computed_from_constants_are_still_folded():
    """A weight computed by ConstantOfShape (model-zoo 'light' models) is a layer parameter: folded."""
    b = GraphBuilder(seed=2)
    x = b.input([1, 4, 8, 8])
    shape = b.const(np.array([64, 4, 3, 3], np.int64))
    b.nodes.append(helper.make_node("ConstantOfShape", [shape], ["w"], name="cos",
                                    value=numpy_helper.from_array(np.array([0.01], np.float32))))
    y = b.node("Conv", [x, "w"], [1, 64, 8, 8], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b.output(b.conv(b.act(y), 4, k=1))
    graph = normalize(b.model())
    conv = next(n for n in graph.nodes if n.op == "Conv")
    assert conv.inputs[1].__class__.__name__ == "Constant"


def test_an_unpruned_weight_computed_from_constants_is_written_back_as_its_computation(tmp_path):
    """A 256 KiB weight made by ConstantOfShape that pruning leaves alone (its conv reads the graph
    input and feeds a graph output) is folded for the analysis, and written as ConstantOfShape
    again: the file stays small, while the other branch is pruned."""
    b = GraphBuilder(seed=3)
    x = b.input([1, 4, 8, 8])
    b.output(b.conv(b.act(b.conv(x, 16, k=3)), 4, k=1))  # pruned
    shape = b.const(np.array([256, 4, 8, 8], np.int64))
    b.nodes.append(helper.make_node("ConstantOfShape", [shape], ["big_w"], name="cos",
                                    value=numpy_helper.from_array(np.array([0.01], np.float32))))
    b.output(b.node("Conv", [x, "big_w"], [1, 256, 8, 8], kernel_shape=[8, 8], pads=[4, 4, 3, 3]))
    model = b.model()
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    out = tmp_path / "out.onnx"
    save_model(ctx.pruned, out, graph=ctx.pruned_graph)
    assert ctx.selection.removed
    assert out.stat().st_size < 16 * 1024
    assert "ConstantOfShape" in {n.op_type for n in ctx.pruned.graph.node}
    feeds = random_feeds(session(model))
    for got, want in zip(session(onnx.load(out)).run(None, feeds), session(zeroed).run(None, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_transpose_of_a_tied_weight_is_not_stored_twice(tmp_path):
    """An embedding read by Gather and, transposed, by the output MatMul (tied weights): folding
    the Transpose for the analysis must not leave two copies in the file when neither is pruned."""
    b = GraphBuilder(seed=4)
    ids = "ids"
    b.inputs.append(helper.make_tensor_value_info(ids, onnx.TensorProto.INT64, [1, 6]))
    emb = b.weight(64, 32)  # 8 KiB
    h = b.node("Gather", [emb, ids], [1, 6, 32], axis=0)
    h = b.add(h, b.matmul(b.act(b.matmul(h, 48)), 32))  # a residual MLP: its 48 hidden units are pruned
    wt = b.node("Transpose", [emb], [32, 64], perm=[1, 0])
    b.output(b.node("MatMul", [h, wt], [1, 6, 64]))
    model = b.model()
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    save_model(ctx.pruned, out, graph=ctx.pruned_graph)
    assert ctx.selection.removed
    written = onnx.load(out)
    assert [list(i.dims) for i in written.graph.initializer].count([64, 32]) == 1
    assert not any(list(i.dims) == [32, 64] for i in written.graph.initializer)
    feeds = {"ids": np.array([[0, 5, 9, 63, 2, 2]], np.int64)}
    np.testing.assert_allclose(session(written).run(None, feeds)[0], session(zeroed).run(None, feeds)[0],
                               rtol=1e-4, atol=1e-5)
