"""``onnxprune sensitivity``: per group and block, the output error of cutting it alone; the JSON
table, the terminal table and the page (one curve per group), rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.fidelity import output_fidelity
from onnxprune.passes.builtin import Analyze, Calibrate, Normalize, Score
from onnxprune.pipeline import Pipeline
from onnxprune.context import PruneOptions
from onnxprune.rewrite import apply, export_checked

MODELS = Path(__file__).resolve().parent.parent / "models"
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def run(tmp_path, model, calib, *extra):
    out, page = tmp_path / "s.json", tmp_path / "s.html"
    result = CliRunner().invoke(main, ["sensitivity", str(model), "--calib", str(calib), "--json", str(out),
                                       "--html", str(page), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), page, result.output


def test_digits_table_one_row_per_group_sorted(tmp_path):
    table, page, output = run(tmp_path, MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz")
    rows = table["rows"]
    assert [r["kind"] for r in rows] == ["channels"] * 4
    assert all([p["fraction"] for p in r["points"]] == [0.9, 0.75, 0.5, 0.25] for r in rows)
    sens = [r["sensitivity"] for r in rows]
    assert sens == sorted(sens, reverse=True) and sens[-1] > 0
    assert "sensitivity: relative output error" in output
    assert page.read_text().count('class="curve"') == 4


def test_a_point_is_the_group_alone_cut(tmp_path):
    """The 50% point of the most sensitive group equals pruning that group alone and comparing."""
    table, _, _ = run(tmp_path, MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz", "--samples", "64")
    row = table["rows"][0]
    ctx = Pipeline([Normalize(), Analyze(), Calibrate(), Score()]).run(
        MODELS / "digits_cnn.onnx", PruneOptions(calibration=str(MODELS / "digits_calib.npz"), reconstruct="none"))
    group = next(g for g in ctx.analysis.groups if g.id == row["id"])
    point = next(p for p in row["points"] if p["fraction"] == 0.5)
    order = np.argsort(-ctx.scores[group.id], kind="stable")
    removed = {group.classes[int(i)] for i in order[point["channels"]:]}
    pruned = export_checked(apply(ctx.analysis.plan, removed, ctx.graph), ctx.model)
    fid = output_fidelity(ctx.model.SerializeToString(), pruned.SerializeToString(), ctx.calibration, max_samples=64)
    (only,) = fid["outputs"].values()
    assert point["error"] == pytest.approx(only["relative_error"], rel=1e-5)


def test_blocks_are_swept(tmp_path):
    model = onnx.load(MODELS / "resnet_small.onnx")
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, **{model.graph.input[0].name: rng.standard_normal((16, 3, 32, 32)).astype(np.float32)})
    table, page, _ = run(tmp_path, MODELS / "resnet_small.onnx", calib, "--fractions", "0.5")
    blocks = [r for r in table["rows"] if r["kind"] == "block"]
    assert len(blocks) == 5 and all(r["points"][0]["error"] > 0 for r in blocks)
    assert "Residual blocks removed alone (5)" in page.read_text()


def test_needs_calibration_and_good_fractions(tmp_path):
    result = CliRunner().invoke(main, ["sensitivity", str(MODELS / "digits_cnn.onnx")])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["sensitivity", str(MODELS / "digits_cnn.onnx"), "--calib",
                                       str(MODELS / "digits_calib.npz"), "--fractions", "1.5"])
    assert result.exit_code == 2 and "--fractions" in result.output


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine (apt-get install chromium)")
def test_page_renders_one_curve_per_group_in_headless_chromium(tmp_path):
    table, page, _ = run(tmp_path, MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz")
    base = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-500:]
    groups = [r for r in table["rows"] if r["kind"] != "block"]
    assert dom.stdout.count('class="curve"') == len(groups) == 4
    assert dom.stdout.count("<svg") == len(groups)
    shot = tmp_path / "page.png"
    subprocess.run([*base, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_points_refit_as_a_prune_would(tmp_path):
    """With --reconstruct lstsq each point is refit before it is measured: the same cuts (one
    criterion) then cost less output error than without."""
    plain, _, _ = run(tmp_path, MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz", "--criterion", "fluctuation",
                      "--fractions", "0.5")
    refit, _, output = run(tmp_path, MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz", "--criterion",
                           "fluctuation", "--fractions", "0.5", "--reconstruct", "lstsq")
    assert refit["reconstruct"] == "lstsq" and "refit: lstsq" in output
    before = {r["id"]: r["points"][0]["error"] for r in plain["rows"]}
    for row in refit["rows"]:
        assert row["points"][0]["error"] < before[row["id"]]
