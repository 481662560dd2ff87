"""Calibration data, activation statistics, activation criteria and reconstruction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import session
from graphs import GraphBuilder

from onnxprune import prune
from onnxprune.calibration.data import Calibration, InputSpec
from onnxprune.calibration.stats import ChannelStats
from onnxprune.errors import BadInputError

SPEC = [InputSpec("x", np.dtype(np.float32), ("batch", 3, 8, 8))]


def small_cnn(seed: int = 0, batch="batch") -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = b.input([1, 3, 8, 8], name="x")
    h = b.act(b.bn(b.conv(x, 12)))
    h = b.act(b.bn(b.conv(h, 16)))
    h = b.flatten(b.gap(h))
    b.output(b.gemm(b.act(b.gemm(h, 10)), 4))
    m = b.model()
    if batch is not None:
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = batch
        m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = batch
    return m


def data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


# --- sources -----------------------------------------------------------------------------

def test_npz_is_cut_into_batches_and_capped(tmp_path):
    np.savez(tmp_path / "c.npz", x=data(40))
    cal = Calibration(tmp_path / "c.npz", SPEC, max_samples=35)
    sizes = [len(b["x"]) for b in cal]
    assert sum(sizes) == 35 and max(sizes) <= 16
    assert sum(len(b["x"]) for b in cal) == 35, "calibration must be re-iterable"


def test_folder_of_npz_with_different_shapes(tmp_path):
    spec = [InputSpec("x", np.dtype(np.float32), ("batch", 3, "h", "w"))]
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros((1, 3, 12, 10), np.float32))
    shapes = [b["x"].shape for b in Calibration(tmp_path, spec)]
    assert shapes == [(2, 3, 8, 8), (1, 3, 12, 10)]


def test_python_script_load_data(tmp_path):
    script = tmp_path / "calib.py"
    script.write_text("import numpy as np\n"
                      "def load_data():\n"
                      "    for i in range(3):\n"
                      "        yield {'x': np.full((2, 3, 8, 8), i, np.float64)}\n")
    batches = list(Calibration(script, SPEC))  # regrouped into one chunk of 6 samples
    assert len(batches) == 1 and batches[0]["x"].dtype == np.float32
    assert batches[0]["x"][:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_one_shot_iterator_is_replayable():
    cal = Calibration(({"x": data(2, i)} for i in range(4)), SPEC)
    assert [len(b["x"]) for b in cal] == [len(b["x"]) for b in cal] == [8]


def test_sample_total_is_known_up_front_where_the_source_tells_it(tmp_path):
    from onnxprune.calibration.data import runs_of, sample_total

    np.savez(tmp_path / "a.npz", x=data(5))
    np.savez_compressed(tmp_path / "b.npz", x=data(30))
    script = tmp_path / "calib.py"
    script.write_text("import numpy as np\ndef load_data():\n    yield {'x': np.zeros((2, 3, 8, 8), np.float32)}\n")
    sources = [(Calibration(tmp_path, SPEC), 35), (Calibration(tmp_path, SPEC, max_samples=12), 12),
               (Calibration(tmp_path / "b.npz", SPEC), 30), (Calibration(({"x": data(3)} for _ in range(2)), SPEC), 6),
               ([{"x": data(4)}, {"x": data(2)}], 6), (Calibration(script, SPEC), None)]
    for source, expected in sources:
        assert sample_total(source) == expected
        assert sum(run.samples for run in runs_of(source)) == (expected or 2)  # what the runs then hold


def test_calibration_bar_shows_samples_of_a_known_total(tmp_path, monkeypatch):
    import sys

    from onnxprune.report import progress

    class Tty:
        text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    np.savez(tmp_path / "c.npz", x=data(40))
    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    progress.enable(True)
    try:
        prune(small_cnn(), ratio=0.5, calibration=Calibration(tmp_path / "c.npz", SPEC))
    finally:
        progress.enable(False)
    assert "/40 [" in fake.text.split("calibrating")[1].split("\r")[0]  # a total, hence a time left
    assert "reconstructing: wave 1/" in fake.text and "/40 [" in fake.text.split("wave 1/")[1].split("\r")[0]


def test_fixed_batch_models_get_one_sample_at_a_time():
    spec = [InputSpec("x", np.dtype(np.float32), (1, 3, 8, 8))]
    assert [len(b["x"]) for b in Calibration([{"x": data(5)}], spec)] == [1] * 5


@pytest.mark.parametrize("content,message", [
    ({"y": np.zeros((2, 3, 8, 8), np.float32)}, "unknown input name"),
    ({"x": np.zeros((2, 3, 8), np.float32)}, "rank 3"),
    ({"x": np.zeros((2, 3, 8, 8), np.int64)}, "dtype int64"),
    ({"x": np.zeros((2, 3, 9, 8), np.float32)}, "shape"),
])
def test_bad_calibration_data_is_named(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(BadInputError, match=message):
        Calibration(tmp_path / "bad.npz", SPEC)


@pytest.mark.parametrize("name,payload,message", [
    ("missing.npz", None, "no such file"),
    ("junk.npz", b"not a zip", "unreadable"),
    ("data.txt", b"1 2 3", "expected a .npz"),
    ("empty_dir", "dir", "no .npz"),
    ("nofunc.py", b"x = 1\n", "load_data"),
])
def test_unreadable_sources(tmp_path, name, payload, message):
    path = tmp_path / name
    if payload == "dir":
        path.mkdir()
    elif payload is not None:
        path.write_bytes(payload)
    with pytest.raises(BadInputError, match=message):
        Calibration(path, SPEC)


# --- statistics --------------------------------------------------------------------------

def test_streaming_stats_equal_the_whole_data_at_once():
    x = np.random.default_rng(0).standard_normal((50, 6, 4, 4))
    x[x < -1] = 0
    stats = ChannelStats(axis=1)
    for i in range(0, 50, 7):
        stats.update(x[i:i + 7])
    flat = np.moveaxis(x, 1, -1).reshape(-1, 6)
    np.testing.assert_allclose(stats.mean, flat.mean(0))
    np.testing.assert_allclose(stats.var, flat.var(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.mean_abs, np.abs(flat).mean(0))
    np.testing.assert_allclose(stats.zero_fraction, (flat == 0).mean(0))
    np.testing.assert_allclose(stats.l2, np.linalg.norm(flat, axis=0))


def test_dead_channels_are_removed_first_by_activation_criteria():
    """A channel whose pre-activation bias is hugely negative is always zero after ReLU."""
    b = GraphBuilder(3)
    x = b.input([1, 3, 8, 8], name="x")
    h = b.conv(x, 8)
    bias = next(i for i in b.inits if i.name == b.nodes[-1].input[2])
    values = onnx.numpy_helper.to_array(bias).copy()
    values[[1, 5]] = -1e3
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    b.output(b.conv(b.act(h), 4, k=1))
    cal = [{"x": data(8)}]
    for criterion in ("activation", "apoz", "wanda", "fluctuation"):
        result = prune(b.model(), ratio=0.25, criterion=criterion, calibration=cal, reconstruct="none")
        kept = result.context.selection
        group = next(g for g in result.context.analysis.groups if g.prunable)
        removed_positions = sorted(i for i, r in enumerate(group.classes) if r in kept.removed)
        assert removed_positions == [1, 5], criterion


# --- reconstruction ----------------------------------------------------------------------

def output_error(original: onnx.ModelProto, pruned: onnx.ModelProto, x: np.ndarray) -> float:
    y0 = session(original).run(None, {"x": x})[0]
    y1 = session(pruned).run(None, {"x": x})[0]
    return float(np.linalg.norm(y1 - y0) / np.linalg.norm(y0))


@pytest.mark.parametrize("criterion", ["l1", "fluctuation"])
def test_reconstruction_reduces_output_error(criterion):
    model = small_cnn()
    calib, held_out = data(64, 1), data(32, 2)
    errors = {}
    for mode in ("none", "bias", "lstsq"):
        result = prune(model, ratio=0.5, criterion=criterion, calibration=[{"x": calib}], reconstruct=mode)
        onnx.checker.check_model(result.model, full_check=True)
        errors[mode] = output_error(model, result.model, held_out)
        if mode != "none":
            layers = result.report["reconstruction"]["layers"]
            assert layers and all(l["error_after"] <= l["error_before"] for l in layers if not l["skipped"])
    assert errors["lstsq"] < errors["bias"] < errors["none"], errors


def residual_mlp(seed: int) -> onnx.ModelProto:
    """Two residual MLP blocks: the second one's residual input drifts when the first is pruned."""
    b = GraphBuilder(seed)
    x = b.input(["batch", 8], name="x")
    r = x
    for _ in range(2):
        r = b.node("Add", [r, b.matmul(b.act(b.matmul(r, 32), "Tanh"), 8)], ["batch", 8])
    b.output(r)
    return b.model()


@pytest.mark.parametrize("seed", [7, 8])
def test_reconstruction_makes_up_for_the_drift_of_a_residual(monkeypatch, seed):
    """The second block's output layer is refit so that residual + output tracks the original sum
    (the drift left by the first block included), which is what the rest of the model sees."""
    import onnxprune.reconstruct as rec

    model = residual_mlp(seed)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((256, 8)).astype(np.float32)} for _ in range(8)]
    held_out = rng.standard_normal((256, 8)).astype(np.float32)
    errors = {}
    for compensate in (True, False):
        if not compensate:
            monkeypatch.setattr(rec, "_residual", lambda view: None)
        result = prune(model, ratio=0.5, criterion="fluctuation", calibration=calib)
        errors[compensate] = output_error(model, result.model, held_out)
    assert errors[True] < errors[False], errors


def skip_norm_mlp(seed: int, op: str) -> onnx.ModelProto:
    """Two MLP blocks joining the residual stream through ONNX Runtime's fused Skip(Simplified)
    LayerNormalization, as the GenAI builder and ONNX Runtime's optimizer write them: each adds
    the block's output (input 1) to the stream (input 0), the sum (output 3) is the next stream."""
    b = GraphBuilder(seed)
    r = b.input(["batch", 4, 8], name="x")
    gamma = b.const(np.linspace(0.5, 1.5, 8, dtype=np.float32), "gamma")
    extra = [b.const(np.zeros(8, np.float32), "beta")] if op == "SkipLayerNormalization" else []
    for _ in range(2):
        h = b.matmul(b.act(b.matmul(r, 32), "Tanh"), 8)
        y, _, _, r = b.node(op, [r, h, gamma, *extra], ["batch", 4, 8], n_out=4, domain="com.microsoft")
    b.output(y)
    return b.model(domains={"com.microsoft": 1})


@pytest.mark.parametrize("op", ["SkipSimplifiedLayerNormalization", "SkipLayerNormalization"])
def test_reconstruction_makes_up_for_the_drift_of_a_fused_residual(monkeypatch, op):
    """A block's output layer feeding a fused skip norm is refit toward the original sum, as it is
    before a plain residual Add: the normalised output is closer to the original's."""
    import onnxprune.reconstruct as rec

    model = skip_norm_mlp(7, op)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((64, 4, 8)).astype(np.float32)} for _ in range(8)]
    held_out = rng.standard_normal((64, 4, 8)).astype(np.float32)
    errors, seen = {}, []
    residual = rec._residual
    for compensate in (True, False):
        monkeypatch.setattr(rec, "_residual", (lambda view: seen.append(r := residual(view)) or r) if compensate
                            else (lambda view: None))
        result = prune(model, ratio=0.5, criterion="fluctuation", calibration=calib)
        errors[compensate] = output_error(model, result.model, held_out)
    assert "x" not in seen and sum(r is not None for r in seen) >= 1, seen  # the second block's stream
    assert errors[True] < errors[False], errors


def test_reconstruction_adds_a_bias_where_there_is_none():
    b = GraphBuilder(1)
    x = b.input([4, 16], name="x")
    h = b.act(b.node("MatMul", [x, b.weight(16, 24)], [4, 24]))
    y = b.node("MatMul", [h, b.weight(24, 8)], [4, 8])  # no bias after it
    b.output(b.act(y, "Tanh"))
    model = b.model()
    result = prune(model, ratio=0.5, criterion="fluctuation",
                   calibration=[{"x": np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)}])
    assert any(n.op_type == "Add" for n in result.model.graph.node)
    onnx.checker.check_model(result.model, full_check=True)


def test_defaults_depend_on_calibration():
    model = small_cnn()
    plain = prune(model, ratio=0.3)
    assert plain.context.options.criterion == "l1" and "reconstruction" not in plain.report
    calibrated = prune(model, ratio=0.3, calibration=[{"x": data(16)}])
    assert calibrated.context.options.criterion == "obs"
    assert calibrated.report["reconstruction"]["mode"] == "lstsq"
    bias = prune(model, ratio=0.3, calibration=[{"x": data(16)}], reconstruct="bias")
    assert bias.context.options.criterion == "obs"
    plain = prune(model, ratio=0.3, calibration=[{"x": data(16)}], reconstruct="none")
    assert plain.context.options.criterion == "fluctuation"  # obs ranks for a refit


def test_reconstruction_without_calibration_is_refused():
    with pytest.raises(BadInputError, match="calibration"):
        prune(small_cnn(), ratio=0.3, reconstruct="lstsq")


def test_synthetic_inputs_with_a_warning():
    result = prune(small_cnn(), ratio=0.3, criterion="wanda")
    assert any("synthetic" in w for w in result.context.warnings)


def test_cli_calibration(tmp_path):
    import subprocess
    import sys

    onnx.save(small_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=data(32))
    res = subprocess.run([sys.executable, "-m", "onnxprune", str(tmp_path / "m.onnx"), "--ratio", "0.5",
                          "--calib", str(tmp_path / "c.npz"), "--calib-samples", "16"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "reconstruction (lstsq)" in res.stdout and "criterion obs" in res.stdout
    np.savez(tmp_path / "bad.npz", y=data(4))
    res = subprocess.run([sys.executable, "-m", "onnxprune", str(tmp_path / "m.onnx"), "--calib",
                          str(tmp_path / "bad.npz")], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown input name" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_ridge_search_walks_down_to_the_grids_minimum_and_tries_the_given_strength_alone():
    from onnxprune.reconstruct import RIDGE_GRID, _downhill

    grid = list(RIDGE_GRID)
    for best in range(len(grid)):  # a unimodal error with its minimum anywhere on the grid
        tried = _downhill(grid, lambda s, b=grid[best]: abs(np.log(s) - np.log(b)))
        assert min(tried, key=tried.get) == grid[best]
        assert len(tried) < len(grid) or best in (0, len(grid) - 1)
    assert _downhill([0.5], lambda s: 1.0) == {0.5: 1.0}


def test_ridge_walk_from_any_start_ends_at_the_same_strength_and_from_the_winner_tries_three():
    from onnxprune.reconstruct import RIDGE_GRID, _downhill

    grid = list(RIDGE_GRID)
    for best in range(len(grid)):
        error = (lambda s, b=grid[best]: abs(np.log(s) - np.log(b)))
        for start in range(len(grid)):
            tried = _downhill(grid, error, start)
            assert min(tried, key=tried.get) == grid[best]
            assert grid[start] in tried  # the walk began where it was told
        assert len(_downhill(grid, error, best)) == (2 if best in (0, len(grid) - 1) else 3)
