"""The structured OBS criterion against brute-force least squares on tiny layers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder

import onnxprune.scoring.obs as obs_module
from onnxprune import prune
from onnxprune.calibration import collect
from onnxprune.calibration.stats import GramStats


def hidden_values(model: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    """The tensor ``name`` of ``model`` on input ``x`` (exposed as an extra output)."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([name], {"x": x})[0]


def refit_sse(rows: np.ndarray, target: np.ndarray, drop: np.ndarray) -> float:
    """Least squares error of ``target`` from the rows' columns other than ``drop``, plus a bias."""
    keep = np.setdiff1d(np.arange(rows.shape[1]), drop)
    a = np.hstack([rows[:, keep], np.ones((len(rows), 1))])
    theta = np.linalg.lstsq(a, target, rcond=None)[0]
    return float(((a @ theta - target) ** 2).sum())


def greedy_path_is_exact(scores: np.ndarray, rows: np.ndarray, w: np.ndarray, k: int) -> None:
    """Channels in score order: each one's score is the relative refit error once it and all
    lower-scored ones are gone, and it was the cheapest channel to remove at that point."""
    target = rows @ w
    energy = float(((target - target.mean(0)) ** 2).sum())
    order = np.argsort(scores, kind="stable")
    channel_rows = lambda chans: np.concatenate([np.arange(c * k, (c + 1) * k) for c in chans])  # noqa: E731
    for t in range(1, len(order)):
        gone = order[:t]
        error = refit_sse(rows, target, channel_rows(gone)) / energy
        np.testing.assert_allclose(scores[order[t - 1]], error, rtol=1e-3, atol=1e-7)
        for other in order[t:]:
            alternative = refit_sse(rows, target, channel_rows([*gone[:-1], other])) / energy
            assert error <= alternative * (1 + 1e-6) + 1e-9, (t, other)


@pytest.fixture
def no_damping(monkeypatch):
    monkeypatch.setattr(obs_module, "DAMP", 1e-10)


def mlp(seed: int, twins: bool = False) -> tuple[onnx.ModelProto, np.ndarray]:
    b = GraphBuilder(seed)
    x = b.input(["batch", 5], name="x")
    w1 = b.rng.standard_normal((5, 8)).astype(np.float32)
    if twins:
        w1[:, 1] = w1[:, 0]  # channels 0 and 1 are the same activation
    h = b.node("Add", [b.node("MatMul", [x, b.const(w1)], ["batch", 8]), b.weight(8)], ["batch", 8])
    h = b.act(h, "Tanh")
    w2 = b.rng.standard_normal((8, 3)).astype(np.float32)
    if twins:
        w2[[0, 1]] *= 10  # and they matter most to the next layer
    b.output(b.node("Add", [b.node("MatMul", [h, b.const(w2)], ["batch", 3]), b.weight(3)], ["batch", 3]))
    return b.model(), w2


def scores_of(result) -> np.ndarray:
    group = next(g for g in result.context.analysis.groups if g.prunable)
    return result.context.scores[group.id]


def test_matmul_greedy_path_matches_brute_force(no_damping):
    model, w2 = mlp(0)
    x = np.random.default_rng(1).standard_normal((200, 5)).astype(np.float32)
    result = prune(model, ratio=0.5, criterion="obs", calibration=[{"x": x}], reconstruct="none")
    hidden = hidden_values(model, next(n for n in model.graph.node if n.op_type == "Tanh").output[0], x).astype(np.float64)
    greedy_path_is_exact(scores_of(result), hidden, w2.astype(np.float64), 1)


def im2col(x: np.ndarray, k: int) -> np.ndarray:
    """3x3 'same' patches, channel-major, one row per output position."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(k) for j in range(k)], axis=2)  # n,c,k*k,h,w
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * k * k)


def test_conv_channels_go_as_whole_kernel_blocks(no_damping):
    b = GraphBuilder(2)
    x = b.input(["batch", 2, 5, 5], name="x")
    h = b.act(b.conv(x, 6, k=1))
    b.output(b.conv(h, 3, k=3))
    model = b.model()
    hidden_name = model.graph.node[-2].output[0]
    consumer = model.graph.node[-1]
    w = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == consumer.input[1]))
    data = np.random.default_rng(3).standard_normal((40, 2, 5, 5)).astype(np.float32)
    result = prune(model, ratio=0.5, criterion="obs", calibration=[{"x": data}], reconstruct="none")
    rows = im2col(hidden_values(model, hidden_name, data).astype(np.float64), 3)
    greedy_path_is_exact(scores_of(result), rows, w.reshape(3, -1).T.astype(np.float64), 9)


def test_a_redundant_channel_goes_first_where_fluctuation_keeps_it(monkeypatch):
    """Two identical channels that matter most: one can stand in for the other after a refit."""
    monkeypatch.setattr(obs_module, "DAMP", 1e-6)
    model, _ = mlp(4, twins=True)
    x = [{"x": np.random.default_rng(5).standard_normal((300, 5)).astype(np.float32)}]
    obs = scores_of(prune(model, ratio=0.25, criterion="obs", calibration=x, reconstruct="none"))
    flu = scores_of(prune(model, ratio=0.25, criterion="fluctuation", calibration=x, reconstruct="none"))
    assert int(np.argmin(obs)) in (0, 1) and obs.min() < 1e-3  # under 0.1% of the output variance
    assert set(np.argsort(flu)[-2:].tolist()) == {0, 1}  # the twins score highest by fluctuation


def test_groups_without_a_gram_fall_back_to_fluctuation_and_say_so(monkeypatch):
    from test_calibration import data, small_cnn

    monkeypatch.setattr(collect, "MAX_GRAM_WIDTH", 50)  # the second conv's 12x3x3 patch rows are too wide
    cal = [{"x": data(16)}]
    got = prune(small_cnn(), ratio=0.5, criterion="obs", calibration=cal, reconstruct="none")
    flu = prune(small_cnn(), ratio=0.5, criterion="fluctuation", calibration=cal, reconstruct="none")
    warning = next(w for w in got.context.warnings if "fallback" in w)
    assert "1 group(s)" in warning and "over 50" in warning
    groups = got.context.analysis.prunable_groups
    fell_back = [g for g in groups if g.channels == 12]
    assert len(fell_back) == 1
    np.testing.assert_array_equal(got.context.scores[fell_back[0].id], flu.context.scores[fell_back[0].id])
    others = [g for g in groups if g.channels != 12]
    assert others and all(not np.array_equal(got.context.scores[g.id], flu.context.scores[g.id]) for g in others)


def test_streaming_gram_equals_the_whole_data_at_once():
    rows = np.random.default_rng(0).standard_normal((100, 7)) * 3 + 1
    gram = GramStats()
    for i in range(0, 100, 13):
        gram.update(rows[i:i + 13])
    centred = rows - rows.mean(0)
    np.testing.assert_allclose(gram.centred, centred.T @ centred, rtol=1e-5, atol=1e-4)
    assert gram.count == 100


def test_channels_flattened_into_a_gemm_go_as_blocks_of_features(no_damping):
    b = GraphBuilder(6)
    x = b.input(["batch", 2, 3, 3], name="x")
    h = b.act(b.conv(x, 4, k=1))
    b.output(b.gemm(b.flatten(h), 3, trans_b=False))
    model = b.model()
    hidden_name = next(n for n in model.graph.node if n.op_type == "Relu").output[0]
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == gemm.input[1]))
    data = np.random.default_rng(7).standard_normal((300, 2, 3, 3)).astype(np.float32)
    result = prune(model, ratio=0.5, criterion="obs", calibration=[{"x": data}], reconstruct="none")
    rows = hidden_values(model, hidden_name, data).astype(np.float64).reshape(len(data), -1)
    greedy_path_is_exact(scores_of(result), rows, w.astype(np.float64), 9)


@pytest.mark.parametrize("k", [1, 3])
def test_removing_several_channels_at_once_is_the_exact_refit(k):
    """After a joint removal, H⁻¹ is the inverse of the kept rows' Gram matrix and W the
    least-squares compensation of the kept rows for the removed ones."""
    rng = np.random.default_rng(k)
    n, out = 7, 4
    x = rng.standard_normal((500, n * k)) @ rng.standard_normal((n * k, n * k))
    h = x.T @ x
    w = rng.standard_normal((n * k, out))
    c = obs_module._Consumer(np.linalg.inv(h), w.copy(), np.arange(n), k, 1.0)
    c.remove([5])
    c.remove([1, 4, 2])
    gone = np.concatenate([np.arange(j * k, (j + 1) * k) for j in (5, 1, 4, 2)])
    kept = np.setdiff1d(np.arange(n * k), gone)
    live = np.repeat(c.alive, k)
    np.testing.assert_allclose(c.hinv[np.ix_(live, live)], np.linalg.inv(h[np.ix_(kept, kept)]), rtol=1e-6, atol=1e-9)
    refit = w[kept] + np.linalg.solve(h[np.ix_(kept, kept)], h[np.ix_(kept, gone)] @ w[gone])
    np.testing.assert_allclose(c.w[live], refit, rtol=1e-6, atol=1e-9)


def test_large_groups_go_in_chunks_and_still_rank_by_refit_error(monkeypatch):
    model, w2 = mlp(0)
    x = np.random.default_rng(1).standard_normal((200, 5)).astype(np.float32)
    cal = [{"x": x}]
    exact = scores_of(prune(model, ratio=0.5, criterion="obs", calibration=cal, reconstruct="none"))
    monkeypatch.setattr(obs_module, "MAX_EXACT_COST", 1.0)  # every channel in one chunk
    one_chunk = scores_of(prune(model, ratio=0.5, criterion="obs", calibration=cal, reconstruct="none"))
    monkeypatch.setattr(obs_module, "MAX_EXACT_COST", exact.size * 64 / 3)  # chunks of two
    chunked = scores_of(prune(model, ratio=0.5, criterion="obs", calibration=cal, reconstruct="none"))
    assert len(set(chunked.tolist())) == len(chunked) and len(set(one_chunk.tolist())) == len(one_chunk)
    assert np.argmin(chunked) == np.argmin(exact) == np.argmin(one_chunk)  # the first pick is the same
    assert not np.array_equal(np.argsort(one_chunk), np.argsort(exact))  # one chunk ignores interactions


@pytest.mark.parametrize("k", [1, 3])
def test_held_updates_remove_the_same_channels_as_immediate_ones(monkeypatch, k):
    """Holding the H⁻¹ updates back (thin factors applied in blocks) is the same arithmetic
    reordered: the greedy removal order and the scores match updating at once."""
    rng = np.random.default_rng(3)
    n, m = 159, 12
    x = rng.standard_normal((400, n)) @ rng.standard_normal((n, n))
    h = x.T @ x
    hinv = np.linalg.inv(h + 0.01 * np.mean(np.diag(h)) * np.eye(n))
    w = rng.standard_normal((n, m))
    results = []
    for min_rows, rank in ((10 ** 9, 256), (0, 7)):
        monkeypatch.setattr(obs_module, "LAZY_MIN_ROWS", min_rows)
        monkeypatch.setattr(obs_module, "LAZY_RANK", rank)
        consumer = obs_module._Consumer(hinv.copy(), w.copy(), np.arange(n // k), k, 1.0)
        results.append(obs_module._greedy([consumer], n // k))
    immediate, held = results
    assert np.array_equal(np.argsort(immediate, kind="stable"), np.argsort(held, kind="stable"))
    np.testing.assert_allclose(held, immediate, rtol=1e-9)
