"""KV-cache decoders: cache graph inputs/outputs (``past_key_values.N.key`` in, ``present.N.key``
out) carry the K/V-head axis and change shape with the pruned heads (``analysis.cache_io``),
checked against the zeroed-channel oracle with non-zero past values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import analyze_graph
from onnxprune.analysis.cache_io import CacheName, parse
from onnxprune.analysis.state import State, UnsupportedPattern
from onnxprune.normalize import normalize

from conftest import assert_cache_oracle, prune_with_oracle

HIDDEN, HEADS, KV, D, SEQ, PAST = 16, 4, 2, 4, 3, 5


def i64(*v):
    return np.array(v, np.int64)


def cache_decoder(past_names=("past_key_values.0.key", "past_key_values.0.value"),
                  present_names=("present.0.key", "present.0.value"), seed=0) -> onnx.ModelProto:
    """One GQA attention layer with a cache, as exporters write it: q/k/v projections, heads split
    by Reshape + Transpose, new keys/values appended to the past ones by Concat on the sequence
    axis (the present outputs), K/V heads repeated for their query heads (Unsqueeze, Expand,
    Reshape), attention, heads merged, output projection."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, values):
        inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def w(name, *shape):
        return const(name, (rng.standard_normal(shape) * 0.5).astype(np.float32))

    total = PAST + SEQ
    q = node("MatMul", ["x", w("wq", HIDDEN, HEADS * D)], "q")
    k = node("MatMul", ["x", w("wk", HIDDEN, KV * D)], "k")
    v = node("MatMul", ["x", w("wv", HIDDEN, KV * D)], "v")
    q = node("Transpose", [node("Reshape", [q, const("sq", i64(1, SEQ, HEADS, D))], "q4")], "qh", perm=[0, 2, 1, 3])
    heads = {}
    for name, t, past, present in (("k", k, past_names[0], present_names[0]), ("v", v, past_names[1], present_names[1])):
        t = node("Transpose", [node("Reshape", [t, const(f"s{name}", i64(1, SEQ, KV, D))], f"{name}4")],
                 f"{name}h", perm=[0, 2, 1, 3])
        full = node("Concat", [past, t], present, axis=2)
        u = node("Unsqueeze", [full, const(f"u{name}", i64(2))], f"{name}u")
        e = node("Expand", [u, const(f"e{name}", i64(1, KV, HEADS // KV, total, D))], f"{name}e")
        heads[name] = node("Reshape", [e, const(f"r{name}", i64(1, HEADS, total, D))], f"{name}r")
    kt = node("Transpose", [heads["k"]], "kt", perm=[0, 1, 3, 2])
    scores = node("Mul", [node("MatMul", [q, kt], "qk"), const("scale", np.float32(D ** -0.5))], "scores")
    probs = node("Softmax", [scores], "probs", axis=-1)
    o = node("Transpose", [node("MatMul", [probs, heads["v"]], "o")], "ot", perm=[0, 2, 1, 3])
    o = node("Reshape", [o, const("so", i64(1, SEQ, HEADS * D))], "om")
    node("MatMul", [o, w("wo", HEADS * D, HIDDEN)], "y")
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f, [1, SEQ, HIDDEN])] + [
        helper.make_tensor_value_info(n, f, [1, KV, PAST, D]) for n in past_names]
    outputs = [helper.make_tensor_value_info("y", f, [1, SEQ, HIDDEN])] + [
        helper.make_tensor_value_info(n, f, [1, KV, total, D]) for n in present_names]
    graph = helper.make_graph(nodes, "cache", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def dims(model, name):
    for t in list(model.graph.input) + list(model.graph.output):
        if t.name == name:
            return [d.dim_value for d in t.type.tensor_type.shape.dim]
    raise KeyError(name)


@pytest.mark.parametrize("names", [
    (("past_key_values.0.key", "past_key_values.0.value"), ("present.0.key", "present.0.value")),
    (("past_key_0", "past_value_0"), ("present_key_0", "present_value_0")),
])
def test_cache_io_prunes_kv_heads(names):
    ctx = assert_cache_oracle(cache_decoder(*names), ratio=0.5)
    pruned = ctx.pruned
    for name in names[0]:
        assert dims(pruned, name) == [1, 1, PAST, D]
    for name in names[1]:
        assert dims(pruned, name) == [1, 1, PAST + SEQ, D]
    # GQA: a KV head goes with its query heads (2 of 4 query heads, 1 of 2 KV heads)
    heads = [g for g in ctx.analysis.groups if g.kind == "heads" and g.prunable]
    assert [g.channels for g in heads] == [KV]
    assert dims(ctx.model, "y") == dims(pruned, "y")


def test_keep_io_shapes_keeps_the_heads():
    from onnxprune.context import PruneOptions
    from onnxprune.passes.builtin import Analyze, Normalize
    from onnxprune.pipeline import Pipeline

    ctx = Pipeline([Normalize(), Analyze()]).run(cache_decoder(), PruneOptions(keep_io_shapes=True))
    heads = [g for g in ctx.analysis.groups if g.kind == "heads" or "past_key_values" in " ".join(g.reasons)]
    assert heads and not any(g.prunable for g in heads)
    assert any("keeps its shape (--keep-io-shapes)" in r for g in heads for r in g.reasons)


def test_unpaired_present_blocks_the_past():
    """A past whose present output is not the Concat with it (here the new keys alone): the two
    would disagree in the decoding loop, so the heads are kept."""
    model = cache_decoder()
    for n in model.graph.node:  # present.0.key becomes the new keys only; the Concat writes kfull
        if n.output[0] == "present.0.key":
            n.output[0] = "kfull"
        for i, t in enumerate(n.input):
            if t == "present.0.key":
                n.input[i] = "kfull"
    model.graph.node.append(helper.make_node("Identity", ["x"], ["present.0.key"], name="n_id"))
    analysis = analyze_graph(normalize(model), 17)
    reasons = [r for g in analysis.groups for r in g.reasons]
    assert not any(g.prunable for g in analysis.groups if g.kind == "heads")
    assert any("would change shape but its present 'present.0.key' would not" in r for r in reasons), reasons


def test_non_cache_graph_input_is_refused():
    """The same graph with the past inputs named like any other input: heads stay refused."""
    model = cache_decoder(past_names=("cache_k", "cache_v"))
    analysis = analyze_graph(normalize(model), 17)
    assert not any(g.prunable for g in analysis.groups if g.kind == "heads")
    assert any("Concat merges channels with non-prunable tensor 'cache_k'" in r
               for g in analysis.groups for r in g.reasons)


def test_cache_io_refuses_with_reasons():
    graph = normalize(cache_decoder())
    state = State(opset=17, graph=graph)
    tensors = graph.tensors()
    atoms = state.fresh(KV, graph.nodes[0])
    with pytest.raises(UnsupportedPattern, match="not a KV-cache input or output"):
        state.cache_io(tensors["x"], 1, atoms)
    with pytest.raises(UnsupportedPattern, match="no static dim 1 of 3"):
        state.cache_io(tensors["past_key_values.0.key"], 1, state.fresh(3, graph.nodes[0]))
    with pytest.raises(UnsupportedPattern, match="no static dim 2 of 2"):
        state.cache_io(tensors["past_key_values.0.key"], 2, atoms)
    state.cache_io(tensors["past_key_values.0.key"], 1, atoms)
    assert state.track(tensors["past_key_values.0.key"]).axis == 1
    state.cache_io_allowed = False
    with pytest.raises(UnsupportedPattern, match="keeps its shape"):
        state.cache_io(tensors["present.0.key"], 1, atoms)


def test_cache_names():
    assert parse("past_key_values.3.value") == CacheName("past", 3, "value")
    assert parse("present.0.key") == CacheName("present", 0, "key")
    assert parse("past_key_12") == CacheName("past", 12, "key")
    assert parse("present_value_1") == CacheName("present", 1, "value")
    assert parse("past_key_values") is None and parse("present.0.keys") is None and parse("x") is None
