"""Attention heads: handmade multi-head attention in the shapes exporters write it, pruned and
checked against the zeroed-channel oracle (removing a head = zeroing its rows of the output
projection), plus the patterns that must stay refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import prune_with_oracle, session
from graphs import GraphBuilder

from onnxprune import Pipeline
from onnxprune.passes.builtin import Analyze, Normalize

B, T = 2, 5


def analyze(model):
    return Pipeline([Normalize(), Analyze()]).run(model).analysis


def i64(*values):
    return np.array(values, np.int64)


class Attn:
    """Builds attention blocks on a GraphBuilder; ``style`` is how the shape vectors are written:

    - "static": constant vectors with the batch and length written out;
    - "torchscript": Shape/Gather/Unsqueeze of the input, Concat with constant head pieces, one
      Concat per Reshape (as ``x.view(b, t, h, d)`` exports);
    - "dynamo": one shared Concat of Shape(start, end) slices and -1 for the heads.
    """

    def __init__(self, b: GraphBuilder, style: str, dynamic: bool):
        self.b, self.style, self.dynamic = b, style, dynamic
        self.shared = {}
        self.read_heads = False

    def dims(self, x):
        """Leading (batch, length) entries of a shape vector, as pieces to concatenate."""
        b = self.b
        if self.style == "static":
            return [b.const(i64(B, T))]
        if self.style == "dynamo":
            if "lead" not in self.shared:
                s0 = b.node("Shape", [x], [1], start=0, end=1)
                s1 = b.node("Shape", [x], [1], start=1, end=2)
                self.shared["lead"] = [s0, s1]
            return self.shared["lead"]
        s = b.node("Shape", [x], [3])
        g0 = b.node("Gather", [s, b.const(np.array(0, np.int64))], [])
        g1 = b.node("Gather", [s, b.const(np.array(1, np.int64))], [])
        return [b.node("Unsqueeze", [g, b.const(i64(0))], [1]) for g in (g0, g1)]

    def vector(self, x, tail, key):
        b = self.b
        if self.style == "static":
            return b.const(i64(B, T, *tail))
        if self.style == "dynamo" and key in self.shared:
            return self.shared[key]
        pieces = self.dims(x) + [b.const(i64(*tail))]
        v = b.node("Concat", pieces, [2 + len(tail)], axis=0)
        if self.style == "dynamo":
            self.shared[key] = v
        return v

    def lead(self):
        return ["batch", "seq"] if self.dynamic else [B, T]

    def split_heads(self, y, heads, d, source, head_entry=None):
        b = self.b
        entry = head_entry if head_entry is not None else (-1 if self.style == "dynamo" else heads)
        vec = self.vector(source, [entry, d], ("split", entry, d))
        r = b.node("Reshape", [y, vec], self.lead() + [heads, d])
        return b.transpose(r, [0, 2, 1, 3])

    def merge_heads(self, o, heads, d, source):
        b = self.b
        entry = -1 if self.style in ("dynamo", "torchscript") else heads * d
        t = b.transpose(o, [0, 2, 1, 3])
        vec = self.vector(source, [entry], ("merge", entry))
        return b.node("Reshape", [t, vec], self.lead() + [heads * d])

    def attention(self, q, k, v, heads, d, mask=None, kv_heads=None):
        """softmax(q kᵀ / √d + mask) v over (B, H, T, D); K/V repeated per group for GQA."""
        b = self.b
        lead = self.lead()
        if kv_heads is not None and kv_heads != heads:
            k, v = (self.repeat_kv(t, kv_heads, heads // kv_heads, d) for t in (k, v))
        kt = b.transpose(k, [0, 1, 3, 2])
        scores = b.node("MatMul", [q, kt], [lead[0], heads, lead[1], lead[1]])
        scores = b.node("Mul", [scores, b.const(np.float32(1 / np.sqrt(d)))], b.shapes[scores])
        if mask is not None:
            scores = b.node("Add", [scores, mask], b.shapes[scores])
        probs = b.node("Softmax", [scores], b.shapes[scores], axis=-1)
        return b.node("MatMul", [probs, v], [lead[0], heads, lead[1], d])

    def repeat_kv(self, t, kv_heads, rep, d):
        """(B, Hkv, T, D) -> (B, Hkv, rep, T, D) -> (B, Hkv*rep, T, D), as HF's repeat_kv exports."""
        b = self.b
        lead = self.lead()
        u = b.node("Unsqueeze", [t, b.const(i64(2))], [lead[0], kv_heads, 1, lead[1], d])
        if self.style == "static":
            shape = b.const(i64(B, kv_heads, rep, T, d))
        else:
            x = t
            s = b.node("Shape", [x], [4])
            g0 = b.node("Unsqueeze", [b.node("Gather", [s, b.const(np.array(0, np.int64))], []), b.const(i64(0))], [1])
            g2 = b.node("Unsqueeze", [b.node("Gather", [s, b.const(np.array(2, np.int64))], []), b.const(i64(0))], [1])
            if self.read_heads:  # HF's repeat_kv: `b, n_kv, t, d = x.shape`, expand(b, n_kv, rep, t, d)
                g1 = b.node("Unsqueeze", [b.node("Gather", [s, b.const(np.array(1, np.int64))], []),
                                          b.const(i64(0))], [1])
                shape = b.node("Concat", [g0, g1, b.const(i64(rep)), g2, b.const(i64(d))], [5], axis=0)
            else:
                shape = b.node("Concat", [g0, b.const(i64(kv_heads, rep)), g2, b.const(i64(d))], [5], axis=0)
        e = b.node("Expand", [u, shape], [lead[0], kv_heads, rep, lead[1], d])
        if self.style == "static":
            vec = b.const(i64(B, kv_heads * rep, T, d))
        elif self.read_heads:  # reshape(b, n_kv * rep, t, d)
            heads = b.node("Mul", [g1, b.const(i64(rep))], [1])
            vec = b.node("Concat", [g0, heads, g2, b.const(i64(d))], [4], axis=0)
        else:
            vec = b.node("Concat", [g0, b.const(i64(kv_heads * rep)), g2, b.const(i64(d))], [4], axis=0)
        return b.node("Reshape", [e, vec], [lead[0], kv_heads * rep, lead[1], d])

    def block(self, x, heads, d, mask=None, kv_heads=None, packed=False, residual=True):
        """One attention block on x (B, T, C): projections, heads, attention, output projection."""
        b = self.b
        kv = kv_heads or heads
        if packed:
            qkv = b.matmul(x, (heads + 2 * kv) * d)
            q, k, v = b.node("Split", [qkv, b.const(i64(heads * d, kv * d, kv * d))], [self.lead() + [heads * d]],
                             n_out=3, axis=2)
            for name, n in ((q, heads), (k, kv), (v, kv)):
                b.shapes[name] = self.lead() + [n * d]
        else:
            q, k, v = b.matmul(x, heads * d), b.matmul(x, kv * d), b.matmul(x, kv * d)
        qh = self.split_heads(q, heads, d, x)
        kh, vh = (self.split_heads(t, kv, d, x) for t in (k, v))
        o = self.attention(qh, kh, vh, heads, d, mask, kv_heads=kv)
        y = b.matmul(self.merge_heads(o, heads, d, x), b.shapes[x][-1])
        return b.add(x, y) if residual else y


def build(style="static", layers=((4, 3),), mask=False, kv_heads=None, packed=False, c=8, seed=0,
          read_heads=False):
    """``layers``: (heads, head_dim) per attention block; an MLP between blocks."""
    b = GraphBuilder(seed=seed)
    dynamic = style != "static"
    lead = ["batch", "seq"] if dynamic else [B, T]
    x = b.input(lead + [c])
    m = b.input([lead[0], 1, 1, lead[1]], name="mask") if mask else None
    a = Attn(b, style, dynamic)
    a.read_heads = read_heads
    for i, (heads, d) in enumerate(layers):
        kv = kv_heads[i] if kv_heads else None
        x = a.block(x, heads, d, mask=m, kv_heads=kv, packed=packed)
        x = b.add(x, b.matmul(b.act(b.matmul(x, 2 * c), "Relu"), c))
    b.output(x)
    return b.model()


def feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value if d.dim_value else (B if j == 0 else T)
                 for j, d in enumerate(i.type.tensor_type.shape.dim)]
        v = rng.standard_normal(shape).astype(np.float32)
        if i.name == "mask":  # an additive mask: some keys hidden
            v = np.where(rng.random(shape) < 0.3, -1e4, 0).astype(np.float32)
        out[i.name] = v
    return out


def check_heads(model, ratio=0.5, criterion="l1", expect_head_groups=None):
    """Prune, then pruned == original with the removed heads zeroed; head counts really changed."""
    ctx, zeroed = prune_with_oracle(model, ratio=ratio, criterion=criterion)
    pruned = ctx.pruned
    onnx.checker.check_model(pruned, full_check=True)
    zs, ps, os_ = session(zeroed), session(pruned), session(ctx.model)
    for seed in (0, 1):
        f = feeds(model, seed)
        expected, got, reference = zs.run(None, f), ps.run(None, f), os_.run(None, f)
        for e, g, r in zip(expected, got, reference):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
            assert not np.allclose(r, e, atol=1e-3), "the removal changed nothing: the test would not see a wrong head"
    heads = [g for g in ctx.analysis.groups if g.kind == "heads"]
    if expect_head_groups is not None:
        assert len([g for g in heads if g.prunable]) == expect_head_groups, [g.reasons for g in heads]
    removed_heads = [g for g in heads if g.prunable and any(r in ctx.selection.removed for r in g.classes)]
    assert removed_heads, "no head was removed"
    return ctx


STYLES = ["static", "torchscript", "dynamo"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mask", [False, True])
def test_multi_head_attention(style, mask):
    ctx = check_heads(build(style, mask=mask), expect_head_groups=1)
    group = next(g for g in ctx.analysis.groups if g.kind == "heads")
    assert group.channels == 4 and ctx.selection.kept[group.id] == (2, 4)


@pytest.mark.parametrize("style", STYLES)
def test_packed_qkv_split(style):
    ctx = check_heads(build(style, packed=True), expect_head_groups=1)
    split = next(n for n in ctx.pruned.graph.node if n.op_type == "Split")
    sizes = next(i for i in ctx.pruned.graph.initializer if i.name == split.input[1])
    assert onnx.numpy_helper.to_array(sizes).tolist() == [6, 6, 6]  # 2 heads of 3, for q, k and v


@pytest.mark.parametrize("style", ["static", "torchscript"])
def test_grouped_query_attention_removes_whole_kv_groups(style):
    """4 query heads share 2 K/V heads: a K/V head goes with its 2 query heads."""
    ctx = check_heads(build(style, layers=((4, 3),), kv_heads=(2,), mask=True), expect_head_groups=1)
    group = next(g for g in ctx.analysis.groups if g.kind == "heads")
    assert group.channels == 2 and ctx.selection.kept[group.id] == (1, 2)


def test_grouped_query_attention_with_head_count_read_at_run_time():
    """repeat_kv as TorchScript exports it from HF: the K/V head count is read with Shape and
    used in the Expand and (times the repeat) in the Reshape of the same heads: it follows."""
    ctx = check_heads(build("torchscript", layers=((4, 3), (6, 2)), kv_heads=(2, 3), mask=True, read_heads=True),
                      expect_head_groups=2)
    assert sorted(ctx.selection.kept[g.id] for g in ctx.analysis.groups if g.kind == "heads") == [(1, 2), (1, 3)]


def test_channel_count_read_for_its_own_view_follows():
    """GPT-2's Conv1D: x.view(-1, x.size(-1)) @ W, then view(*x.shape[:-1], n): the count read is
    x's own, used where x's channels land."""
    b = GraphBuilder(seed=7)
    x = b.input(["batch", "seq", 8])
    h = b.act(b.matmul(x, 12), "Relu")
    s = b.node("Shape", [h], [3])
    c = b.node("Unsqueeze", [b.node("Gather", [s, b.const(np.array(-1, np.int64))], []), b.const(i64(0))], [1])
    flat = b.node("Reshape", [h, b.node("Concat", [b.const(i64(-1)), c], [2], axis=0)], ["n", 12])
    y = b.node("Gemm", [flat, b.weight(12, 8), b.weight(8)], ["n", 8])
    lead = b.node("Slice", [b.node("Shape", [h], [3]), b.const(i64(0)), b.const(i64(-1))], [2])
    b.output(b.node("Reshape", [y, b.node("Concat", [lead, b.const(i64(8))], [3], axis=0)], ["batch", "seq", 8]))
    model = b.model()
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    assert ctx.analysis.prunable_groups and ctx.selection.removed
    f = feeds(model)
    np.testing.assert_allclose(session(ctx.pruned).run(None, f)[0], session(zeroed).run(None, f)[0], rtol=1e-4,
                               atol=1e-5)


def test_channel_count_read_into_another_tensors_shape_is_refused():
    """The hidden width read at run time and used to reshape a different tensor: refused."""
    b = GraphBuilder(seed=8)
    x = b.input([B, T, 8])
    h = b.act(b.matmul(x, 12), "Relu")
    other = b.matmul(x, 12)
    c = b.node("Unsqueeze", [b.node("Gather", [b.node("Shape", [h], [3]), b.const(np.array(2, np.int64))], []),
                             b.const(i64(0))], [1])
    r = b.node("Reshape", [other, b.node("Concat", [b.const(i64(-1)), c], [2], axis=0)], [B * T, 12])
    b.output(b.node("Add", [b.node("MatMul", [h, b.weight(12, 4)], [B, T, 4]),
                            b.node("Reshape", [b.node("MatMul", [r, b.weight(12, 4)], [B * T, 4]),
                                               b.const(i64(B, T, 4))], [B, T, 4])], [B, T, 4]))
    analysis, _ = _head_reasons(b.model())
    hidden = next(g for g in analysis.groups if g.channels == 12 and "Relu" not in g.name and
                  any("read by Shape" in r for r in g.reasons))
    assert not hidden.prunable


def test_deep_stack_keeps_every_layers_heads():
    """Dims lost by shape inference are followed back layer after layer: the last layer's heads
    are found as well as the first's."""
    layers = 12
    ctx = check_heads(build("torchscript", layers=((2, 2),) * layers, mask=True, c=4), ratio=0.5,
                      expect_head_groups=layers)
    assert len([g for g in ctx.analysis.prunable_groups if g.kind == "channels"]) == layers


@pytest.mark.parametrize("style", STYLES)
def test_per_layer_head_counts(style):
    ctx = check_heads(build(style, layers=((4, 3), (2, 4), (6, 2)), mask=True), ratio=0.5, expect_head_groups=3)
    kept = sorted(ctx.selection.kept[g.id] for g in ctx.analysis.groups if g.kind == "heads")
    assert kept == [(1, 2), (2, 4), (3, 6)]


@pytest.mark.parametrize("style", STYLES)
def test_a_layer_keeps_at_least_one_head(style):
    """A head group is never emptied: the attention block stays, with one head."""
    ctx = check_heads(build(style, layers=((4, 3), (2, 2))), ratio=0.95)
    for g in ctx.analysis.groups:
        if g.kind == "heads":
            assert ctx.selection.kept[g.id][0] == 1


def test_heads_and_mlp_channels_together():
    ctx = check_heads(build("torchscript", layers=((4, 3), (4, 3)), mask=True), ratio=0.5)
    kinds = {g.kind for g in ctx.analysis.prunable_groups}
    assert kinds == {"heads", "channels"}


def test_rotary_style_ops_on_the_head_dim():
    """Slice/Neg/Concat over the per-head dim (rotate_half) and a (T, D) table broadcast over heads."""
    b = GraphBuilder(seed=3)
    x = b.input([B, T, 8])
    a = Attn(b, "static", False)
    heads, d = 2, 4
    q, k, v = (a.split_heads(b.matmul(x, heads * d), heads, d, x) for _ in range(3))

    def rope(t):
        sh = b.shapes[t]
        lo = b.node("Slice", [t, b.const(i64(0)), b.const(i64(d // 2)), b.const(i64(3))], sh[:3] + [d // 2])
        hi = b.node("Slice", [t, b.const(i64(d // 2)), b.const(i64(d)), b.const(i64(3))], sh[:3] + [d // 2])
        rot = b.node("Concat", [b.node("Neg", [hi], b.shapes[hi]), lo], sh, axis=-1)
        cos, sin = (b.const(np.random.default_rng(i).standard_normal((T, d)).astype(np.float32)) for i in (0, 1))
        return b.node("Add", [b.node("Mul", [t, cos], sh), b.node("Mul", [rot, sin], sh)], sh)

    o = a.attention(rope(q), rope(k), v, heads, d)
    b.output(b.matmul(a.merge_heads(o, heads, d, x), 8))
    check_heads(b.model(), ratio=0.5, expect_head_groups=1)


# --- refusals: anything not understood stays blocked, with its reason -----------------------

def _head_reasons(model):
    analysis = analyze(model)
    return analysis, [r for g in analysis.groups for r in g.reasons]


def test_single_head_attention_keeps_q_and_k_but_prunes_v():
    """Without a head split, q·kᵀ contracts over the projections' channels: refused; the values'
    channels pass through probs·v to the output projection and stay prunable."""
    b = GraphBuilder(seed=1)
    x = b.input([B, T, 8])
    q, k, v = b.matmul(x, 6), b.matmul(x, 6), b.matmul(x, 6)
    s = b.node("MatMul", [q, b.transpose(k, [0, 2, 1])], [B, T, T])
    p = b.node("Softmax", [s], [B, T, T], axis=-1)
    b.output(b.matmul(b.node("MatMul", [p, v], [B, T, 6]), 8))
    model = b.model()
    analysis, reasons = _head_reasons(model)
    assert any("contracts over the channel axis" in r for r in reasons)
    prunable = analysis.prunable_groups
    assert len(prunable) == 1 and prunable[0].channels == 6
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    f = feeds(model)
    np.testing.assert_allclose(session(ctx.pruned).run(None, f)[0], session(zeroed).run(None, f)[0], rtol=1e-4,
                               atol=1e-5)


def test_head_count_read_at_run_time_is_refused():
    """The head entry of the split is read from another tensor's shape at run time: it would not
    follow the pruning, so the heads are refused."""
    b = GraphBuilder(seed=2)
    x = b.input([B, T, 8])
    h = b.input([2], name="h")
    q = b.matmul(x, 8)
    heads = b.node("Shape", [h], [1])
    vec = b.node("Concat", [b.const(i64(B, T)), heads, b.const(i64(4))], [4], axis=0)
    r = b.node("Reshape", [q, vec], [B, T, 2, 4])
    b.output(b.matmul(b.node("Reshape", [r, b.const(i64(B, T, 8))], [B, T, 8]), 8))
    analysis, reasons = _head_reasons(b.model())
    assert not analysis.prunable_groups
    assert any("Reshape target shape computed at run time" in r for r in reasons)


def test_heads_mixed_by_an_op_over_the_head_axis_are_refused():
    """A softmax across heads (not keys) mixes heads: refused."""
    b = GraphBuilder(seed=4)
    x = b.input([B, T, 8])
    a = Attn(b, "static", False)
    q, k, v = (a.split_heads(b.matmul(x, 8), 2, 4, x) for _ in range(3))
    s = b.node("MatMul", [q, b.transpose(k, [0, 1, 3, 2])], [B, 2, T, T])
    p = b.node("Softmax", [s], [B, 2, T, T], axis=1)
    o = b.node("MatMul", [p, v], [B, 2, T, 4])
    b.output(b.matmul(a.merge_heads(o, 2, 4, x), 8))
    _, reasons = _head_reasons(b.model())
    assert any("Softmax normalizes over the channel axis" in r for r in reasons)


def test_heads_against_an_untracked_full_head_tensor_are_refused():
    """probs · V where V comes from the graph input with all heads: V's heads cannot go."""
    b = GraphBuilder(seed=5)
    x = b.input([B, T, 8])
    vin = b.input([B, 2, T, 4], name="v")
    a = Attn(b, "static", False)
    q, k = (a.split_heads(b.matmul(x, 8), 2, 4, x) for _ in range(2))
    s = b.node("MatMul", [q, b.transpose(k, [0, 1, 3, 2])], [B, 2, T, T])
    o = b.node("MatMul", [b.node("Softmax", [s], [B, 2, T, T], axis=-1), vin], [B, 2, T, 4])
    b.output(b.matmul(a.merge_heads(o, 2, 4, x), 8))
    analysis, reasons = _head_reasons(b.model())
    assert any("non-prunable tensor 'v'" in r for r in reasons)
    assert not any(g.kind == "heads" and g.prunable for g in analysis.groups)


def test_channel_shuffle_split_stays_refused():
    """A Reshape that splits channels into (groups, C/groups) and merges them back transposed
    (channel shuffle) is not a head split: refused."""
    b = GraphBuilder(seed=6)
    x = b.input([1, 3, 4, 4])
    y = b.conv(x, 8)
    r = b.node("Reshape", [y, b.const(i64(1, 2, 4, 4, 4))], [1, 2, 4, 4, 4])
    t = b.transpose(r, [0, 2, 1, 3, 4])
    z = b.node("Reshape", [t, b.const(i64(1, 8, 4, 4))], [1, 8, 4, 4])
    b.output(b.conv(z, 4))
    analysis, _ = _head_reasons(b.model())
    conv_group = next(g for g in analysis.groups if g.sources[0].startswith("Conv") and g.channels in (2, 8))
    assert not conv_group.prunable and any("merges it with earlier axes" in r for r in conv_group.reasons)


# --- choosing what to prune: heads, channels or both -----------------------------------------

@pytest.mark.parametrize("kinds", [("heads",), ("channels",), ("heads", "channels")])
def test_prune_kinds(kinds):
    from onnxprune.context import PruneOptions
    from onnxprune.passes.builtin import Rewrite, Score, Select

    model = build("torchscript", layers=((4, 3),), mask=True)
    ctx = Pipeline([Normalize(), Analyze(), Score(), Select(), Rewrite()]).run(
        model, PruneOptions(ratio=0.5, prune=kinds))
    pruned_kinds = {g.kind for g in ctx.analysis.groups if g.id in ctx.selection.kept
                    and ctx.selection.kept[g.id][0] < g.channels}
    assert pruned_kinds == set(kinds)
    for g in ctx.analysis.groups:
        if g.kind not in kinds and g.channels > 1 and not any("normalizes" in r or "merges" in r for r in g.reasons):
            assert any("--prune" in r for r in g.reasons)


def test_prune_option_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main

    path = tmp_path / "attn.onnx"
    onnx.save(build("dynamo", layers=((4, 3),)), path)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(path), "--ratio", "0.5", "--prune", "heads", "-o", str(out)])
    assert result.exit_code == 0, result.output
    shapes = sorted(tuple(i.dims) for i in onnx.load(out).graph.initializer if len(i.dims) == 2)
    assert shapes.count((8, 6)) == 3 and (6, 8) in shapes  # q, k, v: 2 of 4 heads; output projection
    assert (8, 16) in shapes and (16, 8) in shapes  # the MLP keeps its 16 units
    result = CliRunner().invoke(main, ["prune", str(path), "--prune", "neurons", "-o", str(out)])
    assert result.exit_code == 2 and "--prune" in result.output


# --- ONNX Runtime's fused attention (com.microsoft), as onnxruntime.transformers writes it ----

def _ms_model(b: GraphBuilder) -> onnx.ModelProto:
    return b.model({"com.microsoft": 1})


def _fused_block(b, x, op, heads=4, d=3, mask=None, sizes=None):
    c = b.shapes[x][-1]
    if op == "Attention":
        q, k, v = sizes or (heads * d,) * 3
        ins = [x, b.weight(c, q + k + v), b.weight(q + k + v)] + ([mask] if mask else [])
        attrs = {"num_heads": heads}
        if sizes:
            attrs["qkv_hidden_sizes"] = list(sizes)
        out = b.node("Attention", ins, b.shapes[x][:2] + [v], domain="com.microsoft", **attrs)
    else:
        q, k, v = (b.matmul(x, heads * d, bias=False) for _ in range(3))
        ins = [q, k, v, b.weight(3 * heads * d)] + ([mask] if mask else [])
        out = b.node("MultiHeadAttention", ins, b.shapes[x][:2] + [heads * d], domain="com.microsoft",
                     num_heads=heads)
    return b.add(x, b.matmul(out, c))


@pytest.mark.parametrize("op", ["Attention", "MultiHeadAttention"])
@pytest.mark.parametrize("mask", [False, True])
def test_fused_attention_num_heads(op, mask):
    b = GraphBuilder(seed=9)
    x = b.input([B, T, 8])
    m = None
    if mask:
        m = b.input([B, T], name="mask")
        b.inputs[-1] = onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.INT32, [B, T])
    # side by side: ONNX shape inference does not know com.microsoft ops, so a block after one
    # would see inputs of unknown rank
    b.output(b.add(_fused_block(b, x, op, mask=m), _fused_block(b, x, op, heads=2, d=4, mask=m)))
    model = _ms_model(b)

    def fused_feeds(seed):
        f = feeds(model, seed)
        if mask:
            f["mask"] = np.ones((B, T), np.int32)
            f["mask"][1, -2:] = 0
        return f

    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    heads = [g for g in ctx.analysis.prunable_groups if g.kind == "heads"]
    assert len(heads) == 2
    zs, ps, os_ = session(zeroed), session(ctx.pruned), session(ctx.model)
    for seed in (0, 1):
        f = fused_feeds(seed)
        e, g, r = zs.run(None, f)[0], ps.run(None, f)[0], os_.run(None, f)[0]
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
        assert not np.allclose(r, e, atol=1e-3)
    counts = sorted(a.i for n in ctx.pruned.graph.node if n.op_type == op for a in n.attribute if a.name == "num_heads")
    assert counts == [1, 2]


def test_fused_attention_with_a_cache_is_refused():
    b = GraphBuilder(seed=10)
    x = b.input([B, T, 8])
    past = b.input([2, B, 4, 1, 3], name="past")
    out = b.node("Attention", [x, b.weight(8, 36), b.weight(36), "", past], [B, T, 12], n_out=2,
                 domain="com.microsoft", num_heads=4)
    b.output(b.matmul(out[0], 8))
    b.output(out[1])
    analysis, _ = _head_reasons(_ms_model(b))
    assert not any(g.kind == "heads" and g.prunable for g in analysis.groups)


def test_dims_lost_by_shape_inference_are_followed_through_a_deep_graph():
    """A dim is followed back through any number of ops when asked layer by layer (as the rules
    ask, in topological order), with answers kept in the analysis' cache."""
    import onnx_graphsurgeon as gs

    from onnxprune.analysis.provenance import dim_of

    x = gs.Variable("x", dtype=np.float32, shape=["batch", 4])
    tensors, t = [], x
    for i in range(300):
        out = gs.Variable(f"t{i}", dtype=np.float32, shape=[f"unk{i}", 4])  # named afresh each time
        gs.Node("Relu", inputs=[t], outputs=[out])
        tensors.append(out)
        t = out
    cache: dict = {}
    for tensor in tensors[::10]:
        dim_of(tensor, 0, cache)
    assert dim_of(out, 0, cache) == "batch"
    assert dim_of(out, 0) != "batch"  # from its end in one walk: too deep to reach the input


def _merge_with_foreign_dims(consumer: str):
    """Heads merged with reshape(b, t, -1) where b and t are read from another input ("ids",
    dims named apart from x's), as TorchScript's LLaMA does with the rotary tables and masks."""
    b = GraphBuilder(seed=11)
    x = b.input(["batch", "seq", 8])
    ids = b.input(["b2", "s2"], name="ids")
    a = Attn(b, "torchscript", True)
    q, k, v = (a.split_heads(b.matmul(x, 8), 2, 4, x) for _ in range(3))
    o = a.attention(q, k, v, 2, 4)
    t = b.transpose(o, [0, 2, 1, 3])
    s = b.node("Shape", [ids], [2])
    vec = b.node("Concat", [s, b.const(i64(-1))], [3], axis=0)
    merged = b.node("Reshape", [t, vec], ["b2", "s2", 8])
    if consumer == "matmul":
        b.output(b.matmul(merged, 8))
    else:
        b.output(b.node("Add", [merged, x], ["batch", "seq", 8]))
    return b.model()


def test_merge_with_dims_read_elsewhere_into_an_output_projection():
    model = _merge_with_foreign_dims("matmul")
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    assert any(g.kind == "heads" and g.prunable for g in ctx.analysis.groups)
    f = feeds(model)
    f["ids"] = np.zeros((B, T), np.float32)
    np.testing.assert_allclose(session(ctx.pruned).run(None, f)[0], session(zeroed).run(None, f)[0], rtol=1e-4,
                               atol=1e-5)


def test_merge_with_dims_read_elsewhere_into_anything_else_is_refused():
    analysis, reasons = _head_reasons(_merge_with_foreign_dims("add"))
    assert not any(g.kind == "heads" and g.prunable for g in analysis.groups)
    assert any("Reshape splits the channel axis or merges" in r for r in reasons)
