"""Target search: target parsing, cost models, allocation, the end-to-end loop, tables, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import random_feeds, session

from onnxprune.cli import main
from onnxprune.context import PruneOptions
from onnxprune.errors import BadInputError
from onnxprune.metrics import count_flops
from onnxprune.oracle import zeroed_model
from onnxprune.passes.builtin import Analyze, Calibrate, Normalize, Rewrite, Score
from onnxprune.passes.search import Search
from onnxprune.pipeline import Pipeline
from onnxprune.search.allocate import allocate
from onnxprune.search.cost import CostModel, candidate_counts
from onnxprune.search.latency_table import LatencyTable
from onnxprune.search.target_search import TargetUnreachable
from onnxprune.search.targets import Target, parse_amount, parse_latency, parse_target

MODELS = Path(__file__).resolve().parent.parent / "models"


# --- targets -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, ms", [("50ms", 50.0), ("50", 50.0), ("0.05s", 50.0), ("500us", 0.5),
                                      (" 2.5 ms ", 2.5), ("1e2ms", 100.0), (12, 12.0)])
def test_parse_latency(text, ms):
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["abc", "-5ms", "0ms", "5 parsecs", "", "ms"])
def test_parse_latency_rejects(text):
    with pytest.raises(BadInputError):
        parse_latency(text)


@pytest.mark.parametrize("text, value, fraction", [("0.5", 0.5, True), ("50%", 0.5, True), ("2G", 2e9, False),
                                                   ("10M", 1e7, False), ("1.5e9", 1.5e9, False), ("1", 1.0, True),
                                                   ("300k", 3e5, False)])
def test_parse_amount(text, value, fraction):
    assert parse_amount(text, "--target-flops") == (pytest.approx(value), fraction)


def test_parse_target_one_at_a_time():
    assert parse_target() is None
    assert parse_target(latency="20ms") == Target("latency", 20.0)
    with pytest.raises(BadInputError, match="one target"):
        parse_target(latency="20ms", flops="0.5")
    with pytest.raises(BadInputError):
        parse_target(params="-3")


# --- cost model and allocation -----------------------------------------------------------

def test_candidate_counts():
    assert candidate_counts(8) == [8, 7, 6, 5, 4, 3, 2, 1]
    c = candidate_counts(64)
    assert c[0] == 64 and all(x % 8 == 0 for x in c) and min(c) >= 7
    c = candidate_counts(2048)
    assert len(c) <= 17 and all(x % 8 == 0 for x in c)
    assert all(x % 16 == 0 for x in candidate_counts(100, round_to=16)[1:])
    assert candidate_counts(3, round_to=4) == [3]


def _toy_model() -> CostModel:
    # layer a: only group 0; layer b: groups 0 and 1 (cost ∝ both widths); layer c: only group 1
    full = {"a": 10.0, "b": 10.0, "c": 1.0}
    steps = {0: [4, 3, 2, 1], 1: [4, 3, 2, 1]}
    lin = {c: c / 4 for c in range(1, 5)}
    curves = {"a": {0: lin}, "b": {0: lin, 1: lin}, "c": {1: lin}}
    return CostModel("flops", "", full, curves, steps)


def test_cost_model_total_and_saving_agree():
    model = _toy_model()
    counts = {0: 3, 1: 2}
    assert model.total(counts) == pytest.approx(10 * 0.75 + 10 * 0.75 * 0.5 + 0.5)
    for g, new in ((0, 2), (1, 1)):
        after = {**counts, g: new}
        assert model.saving(g, new, counts) == pytest.approx(model.total(counts) - model.total(after))


def test_allocate_prefers_cheap_importance_per_cost():
    model = _toy_model()
    scores = {0: np.array([1.0, 1.0, 1.0, 1.0]), 1: np.array([1.0, 1.0, 1.0, 1.0])}
    plan = allocate(model, scores, budget=15.0)
    assert plan.met and plan.predicted <= 15.0 and model.total(plan.counts) == pytest.approx(plan.predicted)
    # group 0 drives 20 of 21 units of cost, so with equal importance it is cut first
    assert plan.counts[0] < 4 and plan.counts[1] == 4
    # when group 0's channels all matter and group 1 has dead ones, group 1 goes first
    scores = {0: np.array([5.0, 5.0, 5.0, 5.0]), 1: np.array([1e-3, 1e-3, 5.0, 5.0])}
    plan = allocate(model, scores, budget=15.0)
    assert plan.counts[1] <= 2


def test_allocate_reports_an_unreachable_budget():
    model = _toy_model()
    scores = {0: np.ones(4), 1: np.ones(4)}
    plan = allocate(model, scores, budget=0.1)
    assert not plan.met and plan.counts == {0: 1, 1: 1}


# --- counted targets ---------------------------------------------------------------------

def _search(model, target: Target, criterion: str = "l1"):
    ctx = Pipeline([Normalize(), Analyze(), Score(), Search()]).run(
        model, PruneOptions(criterion=criterion, target=target))
    zeroed = zeroed_model(ctx.analysis, ctx.selection.removed)
    Rewrite().run(ctx)
    return ctx, zeroed


@pytest.mark.parametrize("name", ["resnet_small", "mobilenetv2_small", "densenet_block", "yolov8_block", "mlp"])
@pytest.mark.parametrize("kind, fraction", [("flops", 0.5), ("params", 0.6)])
def test_counted_target_is_met_and_passes_the_oracle(name, kind, fraction):
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    ctx, zeroed = _search(model, Target(kind, fraction, True))
    search = ctx.report["search"]
    before, after = ctx.report["before"][kind], ctx.report["after"][kind]
    assert search["status"] == "met"
    assert after <= fraction * before
    assert search["achieved"] == after  # the search counted exactly what the rewrite produced
    assert after > 0.25 * before, "the search removed far more than the target needed"
    kept = [k for k, _ in ctx.selection.kept.values()]
    assert len(set(kept)) > 1 or len(kept) == 1  # widths chosen per group, not one ratio
    zs, ps = session(zeroed), session(ctx.pruned)
    for seed in (0, 1):
        feeds = random_feeds(ps, seed)
        for e, g in zip(zs.run(None, feeds), ps.run(None, feeds)):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_counted_model_predicts_the_rewrite_exactly_without_concats():
    model = onnx.load(str(MODELS / "resnet_small.onnx"))
    ctx, _ = _search(model, Target("flops", 0.4, True))
    first = ctx.report["search"]["iterations"][0]
    assert first["predicted"] == pytest.approx(first["achieved"])


def test_counted_target_already_met_and_unreachable():
    model = onnx.load(str(MODELS / "resnet_small.onnx"))
    ctx, _ = _search(model, Target("params", 10e6, False))
    assert ctx.report["search"]["status"] == "already_met" and not ctx.selection.removed
    with pytest.raises(TargetUnreachable, match="out of reach"):
        _search(model, Target("params", 100, False))


# --- latency: a measured search on a stand-in clock with noise ------------------------------

class _FakeClock:
    """A clock that only moves when a stand-in model runs: each run takes the model's latency
    times (1 + noise) drawn uniformly in [-noise, noise], and the first runs of every session
    are ``cold`` times slower (what warm-up must see through)."""

    def __init__(self, seed: int = 0, noise: float = 0.0, cold: float = 4.0, cold_runs: int = 3):
        self.now, self.rng, self.noise, self.cold, self.cold_runs = 0.0, np.random.default_rng(seed), noise, cold, cold_runs

    def __call__(self) -> float:
        return self.now

    def run(self, runner) -> None:
        factor = self.cold if runner.runs < self.cold_runs else 1.0
        self.now += runner.ms / 1000.0 * factor * (1.0 + self.noise * self.rng.uniform(-1.0, 1.0))
        runner.runs += 1


class _FakeRunner:
    """Latency = an overhead per node that pruning does not shrink + FLOPs at a fixed rate, plus a
    step: convs whose width is not a multiple of 8 cost extra (as vector kernels do)."""

    clock: _FakeClock = _FakeClock()
    #: (FLOPs fraction, ms): models above that fraction of the original's FLOPs take at least ms
    plateau: tuple[float, float] | None = None
    original_flops: float = 0.0

    def __init__(self, model_bytes, provider="cpu", threads=None, shapes=None, seed=0, feeds=None):
        self.ms, self.runs = _fake_ms(onnx.load_from_string(model_bytes)), 0
        self.feeds = feeds if feeds is not None else {}

    def run(self):
        self.clock.run(self)


def _fake_ms(model: onnx.ModelProto) -> float:
    from onnxprune.normalize import normalize

    graph = normalize(model)
    odd = sum(1 for n in graph.nodes if n.op == "Conv" and n.inputs[1].shape[0] % 8)
    flops = count_flops(graph)
    ms = 0.005 * len(graph.nodes) + flops / 2e6 + 0.05 * odd
    plateau = _FakeRunner.plateau
    if plateau is not None and flops > plateau[0] * _FakeRunner.original_flops:
        ms = max(ms, plateau[1])
    return ms


@pytest.fixture
def fake_clock(monkeypatch):
    """Installs a stand-in clock; returns a function that sets its seed and noise."""
    import onnxprune.runtime.session as session_mod
    import onnxprune.runtime.timing as timing_mod
    import onnxprune.search.target_search as search_mod

    def install(seed: int = 0, noise: float = 0.0) -> _FakeClock:
        clock = _FakeClock(seed, noise)
        monkeypatch.setattr(_FakeRunner, "clock", clock)
        monkeypatch.setattr(timing_mod, "clock", clock)
        return clock

    monkeypatch.setattr(session_mod, "make_runner", _FakeRunner)
    monkeypatch.setattr(search_mod, "channel_block", lambda provider: 8)  # not this machine's CPU
    install()
    return install


def _latency_search(model, fraction: float, calibration=None):
    passes = [Normalize(), Analyze(), Calibrate(), Score(), Search()]
    ctx = Pipeline(passes).run(model, PruneOptions(target=Target("latency", fraction * _fake_ms(model)),
                                                   calibration=calibration))
    return ctx


def test_latency_search_returns_the_same_model_under_noise(fake_clock):
    model = onnx.load(str(MODELS / "resnet_small.onnx"))
    baseline, target = _fake_ms(model), 0.8 * _fake_ms(model)
    kept, tried = [], []
    for seed in range(5):
        fake_clock(seed, noise=0.05)  # per run, uniform: round medians within about ±2%
        ctx = _latency_search(model, 0.8)
        search = ctx.report["search"]
        assert search["status"] == "met" and search["achieved"] <= target
        # warm-up saw through the cold first runs: the figures are the warm latencies
        assert search["baseline"] == pytest.approx(baseline, rel=0.05)
        Rewrite().run(ctx)
        assert search["achieved"] == pytest.approx(_fake_ms(ctx.pruned), rel=0.05)
        from onnxprune.search.target_search import MAX_MEASURED, MAX_WIDEN

        assert len(search["iterations"]) <= MAX_MEASURED + MAX_WIDEN
        kept.append(sorted((g, k) for g, (k, _) in ctx.selection.kept.items()))
        tried.append([it["counts"] for it in search["iterations"]])
    assert all(k == kept[0] for k in kept), kept
    assert all(t == tried[0] for t in tried)  # the same candidates timed, in the same order
    # every decision agrees with the noise-free clock, and none was a close call (the premise:
    # noise that does not straddle the target); the chosen one meets the target
    from onnxprune.search.target_search import Candidate, Trials

    fresh = Pipeline([Normalize(), Analyze(), Score()]).run(model, PruneOptions())
    trials = Trials(fresh.graph, fresh.analysis, fresh.opset, model)
    for it in search["iterations"]:
        candidate = Candidate(0, search_counts(it), 0)
        true_ms = _fake_ms(onnx.load_from_string(trials.build_bytes(candidate, fresh.analysis, fresh.scores)))
        assert not 0.97 * target < true_ms <= target, true_ms
        assert it["meets"] == (true_ms <= target)
    assert any(it["meets"] and search_counts(it) == search_counts(search) for it in search["iterations"])
    assert any(it["kind"] == "widened" for it in search["iterations"])


def search_counts(search: dict) -> dict[int, int]:
    return {int(g): c for g, c in search["counts"].items()}


def test_latency_figures_are_one_measurement_in_summary_json_and_html(fake_clock, tmp_path):
    fake_clock(3, noise=0.1)
    model = MODELS / "resnet_small.onnx"
    goal = 0.8 * _fake_ms(onnx.load(str(model)))
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    result = _run([model, "-o", tmp_path / "o.onnx", "--target-latency", f"{goal}ms", "--report", report,
                   "--html", html])
    assert result.exit_code == 0, result.output
    search = json.loads(report.read_text())["search"]
    m = search["measurement"]
    assert (search["baseline"], search["achieved"]) == (m["original"]["p50_ms"], m["pruned"]["p50_ms"])
    assert f"latency p50 {search['baseline']:.3f} -> {search['achieved']:.3f} ms" in result.output
    from onnxprune.report.html import _human

    assert (f"<td>{_human(search['baseline'])}</td><td>{_human(search['achieved'])}</td>" in html.read_text())
    assert m["decided_on_ms"] <= goal and search["over_pruned"] is False


def test_over_pruning_far_under_the_target_is_reported(fake_clock, monkeypatch):
    model = onnx.load(str(MODELS / "resnet_small.onnx"))
    from onnxprune.normalize import normalize

    # latency stays on a plateau until the FLOPs fall under 40%: the first rung that meets a
    # target of 95% of the baseline is far under it
    monkeypatch.setattr(_FakeRunner, "original_flops", count_flops(normalize(model)))
    monkeypatch.setattr(_FakeRunner, "plateau", (0.4, 3.0 * _fake_ms(model)))
    ctx = _latency_search(model, 0.95)
    search = ctx.report["search"]
    assert search["status"] == "met" and search["over_pruned"] is True
    assert any("far under the target" in w for w in ctx.warnings)


def test_latency_search_unreachable_names_the_best(fake_clock):
    model = onnx.load(str(MODELS / "resnet_small.onnx"))
    with pytest.raises(TargetUnreachable, match=r"best measured is [0-9.]+ ms"):
        Pipeline([Normalize(), Analyze(), Score(), Search()]).run(
            model, PruneOptions(target=Target("latency", 0.01)))


@pytest.mark.parametrize("uniform_ms_factor, switched", [(1.0, True), (3.0, False)])
def test_a_collapsed_fidelity_gives_way_to_a_nearly_as_fast_candidate(fake_clock, monkeypatch,
                                                                     uniform_ms_factor, switched):
    """The guard's rule (thresholds in search.guard): the chosen rung's fidelity collapses
    against the uniform allocation of the same FLOPs; that one is taken only if it is nearly as
    fast and meets the target, else the collapse is reported."""
    import onnxprune.search.guard as guard

    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    uniform = {}

    def fidelity(original, candidate, calibration, threads=None, io_cuts=None):  # the uniform allocation keeps it
        return {"batches": 1, "outputs": {}, "cosine": 0.99 if candidate == uniform.get("bytes") else 0.6}

    real_build = _FakeRunner.__init__

    def build(self, model_bytes, *args, **kwargs):
        real_build(self, model_bytes, *args, **kwargs)
        if model_bytes == uniform.get("bytes"):
            self.ms *= uniform_ms_factor

    import onnxprune.search.target_search as ts

    real_allocate_uniform = ts.allocate_uniform

    def spy(model_, budget):
        plan = real_allocate_uniform(model_, budget)
        uniform["counts"] = plan.counts
        return plan

    real_bytes = ts.Trials.build_bytes

    def build_bytes(self, candidate, analysis, scores):
        data = real_bytes(self, candidate, analysis, scores)
        if candidate.kind == "uniform":
            uniform["bytes"] = data
        return data

    monkeypatch.setattr(guard, "candidate_fidelity", fidelity)
    monkeypatch.setattr(ts, "allocate_uniform", spy)
    monkeypatch.setattr(ts.Trials, "build_bytes", build_bytes)
    monkeypatch.setattr(_FakeRunner, "__init__", build)
    ctx = _latency_search(model, 0.7, calibration=MODELS / "digits_calib.npz")
    search = ctx.report["search"]
    check = search["fidelity_check"]
    assert check["collapsed"] is True and check["switched"] is switched
    assert (search_counts(search) == uniform["counts"]) is switched
    assert any("collapsed" in w for w in ctx.warnings) is not switched


# --- latency tables ----------------------------------------------------------------------

def test_profile_table_round_trip_and_predicted_prune(tmp_path):
    pytest.importorskip("onnxruntime")
    model = MODELS / "resnet_small.onnx"
    table_path = tmp_path / "table.json"
    result = CliRunner().invoke(main, ["profile", str(model), "-o", str(table_path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    table = LatencyTable.load(table_path)
    assert table.layers and table.baseline_ms > 0
    data = json.loads(table_path.read_text())
    assert data["format"] == "onnxprune-latency-table" and data["version"] == 1
    for entry in table.layers.values():
        for curve in entry["groups"].values():
            assert len(curve["counts"]) == len(curve["ms"]) and all(m > 0 for m in curve["ms"])
    out = tmp_path / "out.onnx"
    goal = 0.7 * table.baseline_ms
    result = CliRunner().invoke(main, [str(model), "-o", str(out), "--target-latency", f"{goal}ms",
                                       "--latency-table", str(table_path)])
    if result.exit_code == 3:  # the device's measurements may say no width pays enough
        assert "out of reach" in result.output and not out.exists()
    else:
        assert result.exit_code == 0, result.output
        assert "predicted" in result.output and out.exists()


def test_latency_table_for_another_model_is_refused(tmp_path):
    table = LatencyTable("cpu", 1, "0" * 64, {}, 1.0, {}, {})
    path = tmp_path / "t.json"
    path.write_text(table.to_json())
    result = CliRunner().invoke(main, [str(MODELS / "resnet_small.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--target-latency", "1us", "--latency-table", str(path)])
    assert result.exit_code == 2 and "different model" in result.output
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("content, message", [("{", "not a readable latency table"),
                                              ('{"format": "x"}', "not an onnxprune latency table"),
                                              ('{"format": "onnxprune-latency-table", "version": 9}', "version 9"),
                                              ('{"format": "onnxprune-latency-table", "version": 1}', "malformed")])
def test_bad_latency_tables(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(BadInputError, match=message):
        LatencyTable.load(path)


# --- CLI -----------------------------------------------------------------------------------

def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_target_flops(tmp_path):
    out = tmp_path / "o.onnx"
    result = _run([MODELS / "mobilenetv2_small.onnx", "-o", out, "--target-flops", "50%"])
    assert result.exit_code == 0, result.output
    assert "target flops <= 0.5 of the original: met" in result.output
    before = onnx.load(str(MODELS / "mobilenetv2_small.onnx"))
    from onnxprune.normalize import normalize

    assert count_flops(normalize(onnx.load(str(out)))) <= 0.5 * count_flops(normalize(before))


def test_cli_target_already_met_writes_nothing(tmp_path):
    out = tmp_path / "o.onnx"
    result = _run([MODELS / "mlp.onnx", "-o", out, "--target-params", "1G"])
    assert result.exit_code == 0 and "already meets the target" in result.output and not out.exists()


def test_cli_target_unreachable_exit_3(tmp_path):
    out = tmp_path / "o.onnx"
    result = _run([MODELS / "mlp.onnx", "-o", out, "--target-params", "10"])
    assert result.exit_code == 3 and "out of reach" in result.output and not out.exists()
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--target-latency", "fast"], "expected a duration"),
    (["--target-latency", "0ms"], "must be positive"),
    (["--target-flops", "-1"], "expected a fraction"),
    (["--target-flops", "0.5", "--ratio", "0.3"], "alternatives"),
    (["--target-flops", "0.5", "--target-params", "0.5"], "one target"),
    (["--latency-table", "x.json", "--ratio", "0.2"], "needs --target-latency"),
    (["--target-latency", "5ms", "--threads", "0"], "--threads must be positive"),
])
def test_cli_target_bad_input(tmp_path, args, message):
    out = tmp_path / "o.onnx"
    result = _run([MODELS / "mlp.onnx", "-o", out, *args])
    assert result.exit_code == 2 and message in result.output and not out.exists()
    assert len(result.output.strip().splitlines()) == 1


def test_a_layer_whose_probe_fails_is_left_unmodelled(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import onnxprune.search.latency_table as lt

    real = lt.probe_model
    victim = {}

    def flaky(spec, opset, seed=0):
        if not victim:
            victim["shape"] = list(spec.w_shape)
        if list(spec.w_shape) == victim["shape"]:
            raise RuntimeError("this kernel is not implemented\nsecond line")
        return real(spec, opset, seed)

    monkeypatch.setattr(lt, "probe_model", flaky)
    table = lt.profile_model(MODELS / "resnet_small.onnx", threads=1)
    assert len(table.skipped) >= 1 and all(r.startswith("RuntimeError: this kernel") for r in table.skipped.values())
    assert table.layers and not set(table.layers) & set(table.skipped)
    assert LatencyTable.load(_saved(table, tmp_path)).skipped == table.skipped


def _saved(table, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(table.to_json())
    return path


@pytest.mark.parametrize("kinds", ["heads", "channels"])
def test_counted_target_with_prune_kinds(kinds):
    import onnxprune

    result = onnxprune.prune(str(MODELS / "bert_torchscript.onnx"), target_params=0.9, prune=kinds)
    analysis = result.context.analysis
    assert result.report["search"]["status"] == "met"
    assert result.report["after"]["params"] <= 0.9 * result.report["before"]["params"]
    for g in analysis.groups:
        kept, total = result.context.selection.kept.get(g.id, (g.channels, g.channels))
        if g.kind != kinds:
            assert kept == total  # the other kind stays whole


def test_latency_table_serves_a_run_restricted_by_prune(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxprune
    from onnxprune.search.latency_table import profile_model

    path = MODELS / "bert_torchscript.onnx"
    shapes = {"input_ids": [1, 16], "attention_mask": [1, 16], "token_type_ids": [1, 16]}
    inputs = {i.name for i in onnx.load(str(path)).graph.input}
    table = profile_model(path, threads=1, input_shapes={k: v for k, v in shapes.items() if k in inputs})
    # before the fix this was refused ("groups differ") or failed on the heads' curves
    result = onnxprune.prune(str(path), target_latency=0.99 * table.baseline_ms, latency_table=table,
                             prune="channels")
    assert result.report["search"]["status"] == "predicted"
    heads = [g for g in result.context.analysis.groups if g.kind == "heads"]
    assert heads and all(g.id not in result.context.selection.kept or
                         result.context.selection.kept[g.id][0] == g.channels for g in heads)


def test_unwritable_report_path_is_refused_before_any_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "o.onnx"
    result = _run([MODELS / "mlp.onnx", "-o", out, "--report", blocker / "r.json"])
    assert result.exit_code == 2 and "is not a directory" in result.output and not out.exists()
    result = _run([MODELS / "mlp.onnx", "-o", out, "--html", tmp_path])
    assert result.exit_code == 2 and "is a directory" in result.output and not out.exists()


def test_latency_target_with_nothing_to_try_is_out_of_reach(fake_clock):
    model = onnx.load(str(MODELS / "resnet_small.onnx"))  # no attention heads: nothing prunable below
    with pytest.raises(TargetUnreachable, match="no prunable group has a narrower width"):
        Pipeline([Normalize(), Analyze(), Score(), Search()]).run(
            model, PruneOptions(target=Target("latency", 0.5 * _fake_ms(model)), prune=("heads",)))
