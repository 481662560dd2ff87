"""Each supported structure, built by hand, pruned and checked against the zeroed-channel oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_oracle, prune_with_oracle
from graphs import GraphBuilder
from onnx import TensorProto, helper, numpy_helper

from onnxprune import Pipeline
from onnxprune.passes.builtin import Analyze, Normalize


def analyze(model):
    return Pipeline([Normalize(), Analyze()]).run(model).analysis


def conv_stem(b: GraphBuilder, c: int = 8, hw: int = 8) -> str:
    return b.act(b.bn(b.conv(b.input([1, 3, hw, hw]), c)))


def head(b: GraphBuilder, x: str) -> None:
    """A consumer conv, so the channels under test end in a weight layer, then the output."""
    b.output(b.conv(x, 4, k=1))


ACTIVATIONS = ["Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Erf", "Softplus", "Elu", "LeakyRelu",
               "Clip", "PRelu", "SiLU", "GELU", "Identity", "Dropout"]


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_activation_passes_channels(op):
    b = GraphBuilder()
    head(b, b.act(b.conv(b.input([1, 3, 6, 6]), 8), op))
    assert_oracle(b.model(), ratio=0.5)


def test_contrib_activation_passes_channels():
    """ONNX Runtime's QuickGelu (x * sigmoid(1.702 x), as its optimizer fuses CLIP's activation):
    added as one entry of ops/elementwise.py, docs/architecture.md's example."""
    b = GraphBuilder()
    y = b.act(b.conv(b.input([1, 3, 6, 6]), 8), "QuickGelu", alpha=1.702)
    b.nodes[-1].domain = "com.microsoft"
    head(b, y)
    assert_oracle(b.model(domains={"com.microsoft": 1}), ratio=0.5)


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_per_channel_constant(op):
    b = GraphBuilder()
    head(b, b.channel_op(b.conv(b.input([1, 3, 6, 6]), 8), op))
    assert_oracle(b.model(), ratio=0.5)


def test_scalar_constant_and_cast():
    b = GraphBuilder()
    x = b.conv(b.input([1, 3, 6, 6]), 8)
    x = b.node("Mul", [x, b.const(np.float32(2.0))], b.shapes[x])
    x = b.node("Cast", [x], b.shapes[x], to=TensorProto.FLOAT)
    head(b, x)
    assert_oracle(b.model(), ratio=0.5)


@pytest.mark.parametrize("op", ["Add", "Sum", "Mul", "Max"])
def test_residual_branches_are_coupled(op):
    b = GraphBuilder()
    x = conv_stem(b)
    y = b.act(b.bn(b.conv(b.act(b.conv(x, 6)), 8)))
    z = b.add(x, y, op=op)
    head(b, z)
    ctx = assert_oracle(b.model(), ratio=0.5)
    coupled = [g for g in ctx.analysis.groups if len(g.sources) == 2]
    assert coupled and coupled[0].prunable, "the two residual branches must form one group"


def test_depthwise_conv_ties_input_and_output():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    x = b.act(b.bn(b.conv(x, 8, group=8)), "Clip")
    head(b, x)
    ctx = assert_oracle(b.model(), ratio=0.5)
    dw = [n for n in ctx.pruned.graph.node if n.op_type == "Conv"][1]
    group = next(a.i for a in dw.attribute if a.name == "group")
    assert group == 4


def test_depthwise_with_channel_multiplier():
    b = GraphBuilder()
    x = conv_stem(b, 4)
    x = b.act(b.conv(x, 8, group=4))
    head(b, x)
    assert_oracle(b.model(), ratio=0.5)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_loses_whole_conv_groups(groups):
    b = GraphBuilder()
    x = conv_stem(b, 8)
    x = b.act(b.conv(x, 12, group=groups))
    head(b, x)
    ctx = assert_oracle(b.model(), ratio=0.5)
    conv = [n for n in ctx.pruned.graph.node if n.op_type == "Conv"][1]
    assert next(a.i for a in conv.attribute if a.name == "group") == groups // 2


def test_grouped_conv_on_graph_input_is_refused_with_reason():
    b = GraphBuilder()
    head(b, b.act(b.conv(b.input([1, 4, 6, 6]), 8, group=2)))
    analysis = analyze(b.model())
    assert not analysis.prunable_groups
    assert any("grouped Conv" in r for g in analysis.groups for r in g.reasons)


def test_grouped_conv_transpose():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    n, c, h, w = b.shapes[x]
    y = b.node("ConvTranspose", [x, b.weight(8, 3, 2, 2), b.weight(6)], [n, 6, 2 * h, 2 * w], kernel_shape=[2, 2],
               strides=[2, 2], group=2)
    head(b, b.act(y))
    assert_oracle(b.model(), ratio=0.5)


def test_conv_transpose_and_instance_norm():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    x = b.act(b.instance_norm(b.conv_transpose(x, 6)))
    head(b, x)
    ctx = assert_oracle(b.model(), ratio=0.5)
    assert all(g.prunable for g in ctx.analysis.groups if "ConvTranspose" in g.name)


@pytest.mark.parametrize("layer", ["maxpool", "avgpool", "resize2x", "pad"])
def test_spatial_ops_keep_channels(layer):
    b = GraphBuilder()
    x = conv_stem(b, 8)
    head(b, getattr(b, layer)(x))
    assert_oracle(b.model(), ratio=0.5)


def test_concat_maps_channels_with_offsets():
    b = GraphBuilder()
    x = conv_stem(b, 6)
    y = b.act(b.conv(x, 4))
    z = b.concat(x, y)  # DenseNet: input and new features
    w = b.act(b.conv(z, 5))
    head(b, b.concat(z, w))
    ctx = assert_oracle(b.model(), ratio=0.5)
    assert len(ctx.analysis.prunable_groups) >= 3


def test_concat_with_graph_input_blocks_only_that_part():
    b = GraphBuilder()
    inp = b.input([1, 3, 6, 6])
    x = b.act(b.conv(inp, 6))
    head(b, b.concat(inp, x))
    ctx = assert_oracle(b.model(), ratio=0.5)
    assert ctx.analysis.prunable_groups


@pytest.mark.parametrize("as_attr,opset", [(False, 13), (True, 11), (False, 18)])
def test_split_then_concat_like_c2f(as_attr, opset):
    b = GraphBuilder(opset=opset)
    x = conv_stem(b, 8)
    a, c = b.split(x, [4, 4], as_attr=as_attr)
    d = b.act(b.conv(c, 4))
    d = b.add(c, d)
    head(b, b.concat(a, c, d))
    assert_oracle(b.model(), ratio=0.5)


def test_equal_split_without_sizes_gets_explicit_sizes():
    b = GraphBuilder(opset=13)
    x = conv_stem(b, 8)
    outs = b.node("Split", [x], [[1]], n_out=2, axis=1)
    for o in outs:
        b.shapes[o] = [1, 4, 8, 8]
    head(b, b.concat(b.act(b.conv(outs[0], 3)), outs[1]))
    assert_oracle(b.model(), ratio=0.4)


def test_channel_slice():
    b = GraphBuilder()
    x = conv_stem(b, 10)
    head(b, b.concat(b.slice_channels(x, 2, 7), b.slice_channels(x, -3, 100)))
    assert_oracle(b.model(), ratio=0.5)


@pytest.mark.parametrize("how", ["flatten", "reshape"])
def test_flatten_into_gemm_maps_blocks(how):
    b = GraphBuilder()
    x = b.maxpool(conv_stem(b, 6, hw=4))
    x = b.flatten(x) if how == "flatten" else b.reshape(x, [1, -1])
    y = b.act(b.gemm(x, 10))
    b.output(b.gemm(y, 3, trans_b=False))
    assert_oracle(b.model(), ratio=0.5)


def test_squeeze_excite():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    head(b, b.se(x))
    ctx = assert_oracle(b.model(), ratio=0.5)
    assert len(ctx.analysis.prunable_groups) == 2  # trunk (tied to SE expand) and SE bottleneck


def test_squeeze_excite_with_linear_and_reshape():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    s = b.flatten(b.gap(x))
    s = b.act(b.gemm(b.act(b.gemm(s, 4)), 8), "Sigmoid")
    s = b.reshape(s, [1, 8, 1, 1])
    head(b, b.node("Mul", [x, s], b.shapes[x]))
    ctx = assert_oracle(b.model(), ratio=0.5)
    reshape = next(n for n in ctx.pruned.graph.node if n.op_type == "Reshape")
    shape = next(numpy_helper.to_array(t) for t in ctx.pruned.graph.initializer if t.name == reshape.input[1])
    assert shape[1] == 4


def test_transpose_and_matmul_mlp():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    t = b.transpose(x, [0, 2, 3, 1])  # NHWC: channels last
    h = b.act(b.matmul(t, 12), "GELU")
    h = b.matmul(h, 8)
    b.output(b.matmul(b.act(b.add(t, h)), 5))
    assert_oracle(b.model(), ratio=0.5)


def test_mlp_gemm_chain():
    b = GraphBuilder()
    x = b.input([2, 16])
    h = b.act(b.gemm(x, 32))
    h = b.act(b.gemm(h, 24, trans_b=False), "Tanh")
    b.output(b.gemm(h, 4))
    assert_oracle(b.model(), ratio=0.3, criterion="l2")


def test_batchnorm_criterion():
    b = GraphBuilder()
    head(b, b.act(b.bn(b.conv(b.act(b.bn(b.conv(b.input([1, 3, 6, 6]), 8))), 8))))
    assert_oracle(b.model(), ratio=0.5, criterion="bn")


@pytest.mark.parametrize("op,attrs", [("Softmax", {"axis": 1}), ("LRN", {"size": 3}),
                                      ("ReduceMean", {"axes": [1]}), ("LpNormalization", {"axis": 1})])
def test_ops_that_mix_channels_block(op, attrs):
    b = GraphBuilder(opset=13 if op == "ReduceMean" else 17)
    x = conv_stem(b, 8)
    y = b.node(op, [x], b.shapes[x], **attrs) if op != "ReduceMean" else b.node(op, [x], [1, 1, 8, 8], **attrs)
    head(b, b.add(y, x) if op != "ReduceMean" else b.node("Mul", [x, y], b.shapes[x]))
    analysis = analyze(b.model())
    stem = next(g for g in analysis.groups if g.channels == 8)
    assert not stem.prunable and stem.reasons


def test_unknown_op_blocks_and_never_guesses():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    y = b.node("Hardmax", [x], b.shapes[x], axis=1)
    z = b.node("CumSum", [y, b.const(np.array(1, np.int64))], b.shapes[x])
    head(b, z)
    analysis = analyze(b.model())
    stem = next(g for g in analysis.groups if g.channels == 8)
    assert not stem.prunable


def test_graph_output_keeps_its_channels():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    b.output(x)
    head(b, x)
    analysis = analyze(b.model())
    assert all(not g.prunable for g in analysis.groups)
    assert any("graph output" in r for g in analysis.groups for r in g.reasons)


def test_merge_with_graph_input_blocks():
    b = GraphBuilder()
    inp = b.input([1, 8, 6, 6])
    x = b.conv(inp, 8)
    head(b, b.add(x, inp))
    analysis = analyze(b.model())
    assert not analysis.prunable_groups


def test_weights_as_constant_nodes_and_constant_subgraphs():
    """Paddle2ONNX writes Constant nodes; the model-zoo 'light' models use ConstantOfShape."""
    b = GraphBuilder()
    x = b.input([1, 3, 6, 6])
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    b.nodes.append(helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(w)))
    b.nodes.append(helper.make_node("ConstantOfShape", ["bshape"], ["bc"],
                                    value=numpy_helper.from_array(np.array([0.1], np.float32))))
    b.inits.append(numpy_helper.from_array(np.array([8], np.int64), "bshape"))
    y = b.node("Conv", [x, "wc", "bc"], [1, 8, 6, 6], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    head(b, b.act(y))
    assert_oracle(b.model(), ratio=0.5)


def test_channel_count_read_by_shape_blocks():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    s = b.node("Shape", [x], [4])
    c = b.node("Gather", [s, b.const(np.array(1, np.int64))], [1])
    b.output(c)
    head(b, x)
    analysis = analyze(b.model())
    stem = next(g for g in analysis.groups if g.channels == 8)
    assert not stem.prunable and any("Shape" in r for r in stem.reasons)


@pytest.mark.parametrize("entry", [-1, 24])
def test_view_with_runtime_batch_size(entry):
    """x.view(x.size(0), -1) as TorchScript writes it: Shape, Gather, Concat, Reshape."""
    b = GraphBuilder()
    x = b.maxpool(conv_stem(b, 6, hw=4))
    s = b.node("Shape", [x], [4])
    n = b.node("Gather", [s, b.const(np.array([0], np.int64))], [1])
    target = b.node("Concat", [n, b.const(np.array([entry], np.int64))], [2], axis=0)
    y = b.node("Reshape", [x, target], [1, 24])
    b.output(b.gemm(y, 3))
    ctx = assert_oracle(b.model(), ratio=0.5)
    assert ctx.analysis.groups[0].prunable


def test_runtime_shape_entry_is_refused():
    b = GraphBuilder()
    x = b.maxpool(conv_stem(b, 6, hw=4))
    s = b.node("Shape", [x], [4])
    n = b.node("Gather", [s, b.const(np.array([0], np.int64))], [1])
    target = b.node("Concat", [n, n], [2], axis=0)  # the feature count is not a constant
    y = b.node("Reshape", [x, b.node("Mul", [target, b.const(np.array([1, 24], np.int64))], [2])], [1, 24])
    b.output(b.gemm(y, 3))
    analysis = analyze(b.model())
    assert any("run time" in r for g in analysis.groups for r in g.reasons)


@pytest.mark.parametrize("opset", [9, 11, 13, 21])
def test_opsets(opset):
    b = GraphBuilder(opset=opset)
    x = conv_stem(b, 8)
    x = b.concat(x, b.act(b.conv(x, 4)))
    head(b, b.maxpool(x))
    assert_oracle(b.model(), ratio=0.5)


def test_round_to_keeps_multiples():
    b = GraphBuilder()
    head(b, b.act(b.conv(b.input([1, 3, 6, 6]), 24)))
    ctx = assert_oracle(b.model(), ratio=0.3, round_to=8)
    assert [kept for kept, _ in ctx.selection.kept.values()] == [16]


def test_ratio_zero_removes_nothing():
    b = GraphBuilder()
    head(b, b.act(b.conv(b.input([1, 3, 6, 6]), 8)))
    ctx, _ = prune_with_oracle(b.model(), ratio=0.0)
    assert not ctx.selection.removed


def test_shared_weight_is_unshared_before_slicing():
    b = GraphBuilder()
    x = b.input([1, 3, 6, 6])
    w = b.weight(8, 3, 3, 3)
    y1 = b.node("Conv", [x, w], [1, 8, 6, 6], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y2 = b.node("Conv", [x, w], [1, 8, 6, 6], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b.output(b.conv(b.act(y1), 4, k=1))
    b.output(b.conv(b.act(y2, "Sigmoid"), 4, k=1))
    assert_oracle(b.model(), ratio=0.5)


def test_upsample_opset9():
    b = GraphBuilder(opset=9)
    x = conv_stem(b, 8)
    n, c, h, w = b.shapes[x]
    y = b.node("Upsample", [x, b.const(np.array([1, 1, 2, 2], np.float32))], [n, c, 2 * h, 2 * w], mode="nearest")
    head(b, y)
    assert_oracle(b.model(), ratio=0.5)


def test_external_data_model(tmp_path):
    from onnxprune import prune

    b = GraphBuilder()
    head(b, b.act(b.bn(b.conv(b.act(b.conv(b.input([1, 3, 6, 6]), 16)), 16))))
    path = tmp_path / "ext.onnx"
    onnx.save_model(b.model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    result = prune(path, ratio=0.5)
    out = tmp_path / "out" / "pruned.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    (tmp_path / "ext.onnx.data").unlink()
    from onnxprune.errors import BadInputError
    with pytest.raises(BadInputError, match="external data"):
        prune(path, ratio=0.5)


def test_float16_model():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    head(b, b.act(b.conv(x, 8)))
    model = b.model()
    from onnx import numpy_helper as nh
    for i, init in enumerate(model.graph.initializer):
        arr = nh.to_array(init)
        if arr.dtype == np.float32:
            model.graph.initializer[i].CopyFrom(nh.from_array(arr.astype(np.float16), init.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    assert_oracle(model, ratio=0.5, rtol=1e-2, atol=1e-2)


def test_channels_used_inside_a_subgraph_are_refused():
    b = GraphBuilder()
    x = conv_stem(b, 8)
    cond = b.const(np.array(True))
    then_out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Relu", [x], ["t_out"])], "then", [], [then_out])
    other = helper.make_graph([helper.make_node("Sigmoid", [x], ["e_out"])], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    y = b.node("If", [cond], b.shapes[x], then_branch=then, else_branch=other)
    head(b, y)
    z = b.act(b.conv(b.input([1, 3, 6, 6], name="x2"), 6))  # outside the subgraph: prunable
    head(b, z)
    ctx = assert_oracle(b.model(), ratio=0.5)
    stem = next(g for g in ctx.analysis.groups if g.channels == 8)
    assert not stem.prunable and any("subgraph" in r for r in stem.reasons)


def test_squeeze_without_axes_survives_a_group_pruned_to_one_channel():
    b = GraphBuilder(opset=13)
    y = b.conv(b.act(b.conv(b.input([1, 3, 6, 6]), 8)), 2, k=1)
    s = b.node("Squeeze", [b.gap(y)], [2])  # no axes: (1, 2, 1, 1) -> (2,)
    b.output(b.matmul(s, 4))
    assert_oracle(b.model(), ratio=0.5)


@pytest.mark.parametrize("how", ["reshape", "flatten"])
def test_zero_size_tensor_does_not_crash(how):
    from onnxprune import prune

    b = GraphBuilder()
    x = b.conv(b.input([1, 3, 4, 4]), 8)
    y = b.node("Slice", [x] + [b.const(np.array([v], np.int64)) for v in (4, 8, 3)], [1, 8, 4, 0])
    b.output(b.reshape(y, [1, -1]) if how == "reshape" else b.flatten(y))
    prune(b.model(), ratio=0.5)


def test_round_to_with_ratio_zero_keeps_everything():
    from onnxprune.selection import kept_count

    assert [kept_count(n, 0.0, 4) for n in (5, 9, 13)] == [5, 9, 13]
    assert kept_count(13, 0.3, 4) == 8


@pytest.mark.parametrize("how", ["flatten", "reshape0", "view"])
def test_dynamic_batch_into_gemm(how):
    b = GraphBuilder()
    x = b.maxpool(conv_stem(b, 6, hw=4))
    if how == "flatten":
        y = b.flatten(x)
    elif how == "reshape0":
        y = b.reshape(x, [0, -1])
    else:
        s = b.node("Shape", [x], [4])
        n = b.node("Gather", [s, b.const(np.array([0], np.int64))], [1])
        target = b.node("Concat", [n, b.const(np.array([-1], np.int64))], [2], axis=0)
        y = b.node("Reshape", [x, target], [1, 24])
    b.output(b.gemm(b.act(b.gemm(y, 8)), 3))
    model = b.model()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    ctx = assert_oracle(model, ratio=0.5)
    assert ctx.analysis.groups[0].prunable, ctx.analysis.groups[0].reasons
