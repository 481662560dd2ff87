"""Build-step use: the JSON report, TOML config, quiet mode, byte-identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxprune.cli import main

MODELS = Path(__file__).resolve().parent.parent / "models"


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_report_json_ratio(tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = _run(MODELS / "resnet_small.onnx", "-o", out, "--ratio", "0.5", "--report", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["schema"] == "onnxprune-report" and data["version"] == 1
    assert data["written"] and data["output"] == str(out)
    assert data["settings"]["ratio"] == 0.5 and data["settings"]["target"] is None
    assert data["versions"]["onnx"] and data["versions"]["onnxprune"]
    assert data["after"]["params"] < data["before"]["params"]
    prunable = [g for g in data["groups"] if g["prunable"]]
    blocked = [g for g in data["groups"] if not g["prunable"]]
    assert prunable and all(g["channels_after"] < g["channels_before"] for g in prunable)
    assert all(g["reasons"] for g in blocked)
    assert all(g["score"]["min"] <= g["score"]["mean"] <= g["score"]["max"] for g in prunable)
    assert data["search"] is None


def test_report_json_target_and_calibration(tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = _run(MODELS / "digits_cnn.onnx", "-o", out, "--target-flops", "0.6", "--calib",
                  MODELS / "digits_calib.npz", "--calib-samples", "64", "--report", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["search"]["status"] == "met" and data["after"]["flops"] <= 0.6 * data["before"]["flops"]
    assert data["settings"]["target"] == {"kind": "flops", "value": 0.6, "fraction": True}
    fidelity = data["fidelity"]
    assert fidelity["batches"] >= 1 and 0 < fidelity["outputs"]["logits"]["mean_cosine"] <= 1
    assert data["reconstruction"]["layers"]
    assert "fidelity on" in result.output


def test_report_written_when_target_already_met(tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = _run(MODELS / "mlp.onnx", "-o", out, "--target-params", "1G", "--report", report)
    assert result.exit_code == 0
    data = json.loads(report.read_text())
    assert not data["written"] and data["output"] is None and not out.exists()


def test_config_file_and_flags_override(tmp_path):
    config = tmp_path / "prune.toml"
    config.write_text('ratio = 0.5\ncriterion = "l2"\nround-to = 2\n')
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = _run(MODELS / "resnet_small.onnx", "--config", config, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    settings = json.loads(report.read_text())["settings"]
    assert (settings["ratio"], settings["criterion"], settings["round_to"]) == (0.5, "l2", 2)
    result = _run(MODELS / "resnet_small.onnx", "--config", config, "-o", out, "--report", report,
                  "--criterion", "l1")
    assert json.loads(report.read_text())["settings"]["criterion"] == "l1"


@pytest.mark.parametrize("content, message", [("bogus = 1", "unknown option 'bogus'"), ("x = [", "not valid TOML")])
def test_bad_config(tmp_path, content, message):
    config = tmp_path / "prune.toml"
    config.write_text(content)
    result = _run(MODELS / "mlp.onnx", "--config", config, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "o.onnx").exists()
    result = _run(MODELS / "mlp.onnx", "--config", tmp_path / "missing.toml")
    assert result.exit_code == 2 and "file not found" in result.output


def test_quiet_prints_nothing(tmp_path):
    result = _run(MODELS / "mlp.onnx", "-o", tmp_path / "o.onnx", "-q")
    assert result.exit_code == 0 and result.output == "" and (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("args", [["--ratio", "0.4"], ["--target-flops", "0.5", "--calib",
                                                        str(MODELS / "digits_calib.npz"), "--calib-samples", "64"]])
def test_same_input_same_bytes(tmp_path, args):
    model = MODELS / ("digits_cnn.onnx" if "--calib" in args else "resnet_small.onnx")
    outputs = []
    for i in range(2):
        out = tmp_path / f"o{i}.onnx"
        result = _run(model, "-o", out, *args)
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


class _Tty:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.mark.parametrize("tty, enabled, shown", [(True, True, True), (False, True, False), (True, False, False)])
def test_progress_only_on_a_terminal_and_not_quiet(monkeypatch, tty, enabled, shown):
    import sys

    from onnxprune.report import progress

    fake = _Tty(tty)
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    progress.enable(enabled)
    try:
        with progress.Progress("calibrating", 3, every_s=0.0) as bar:
            for _ in range(3):
                bar.advance()
    finally:
        progress.enable(False)
    assert ("calibrating" in fake.text and "3/3" in fake.text and "<" in fake.text) == shown  # count, ETA
    assert fake.text.endswith("\r") == shown  # the bar is cleared at the end (tqdm leave=False)


def test_progress_stays_quiet_on_short_steps(monkeypatch):
    import sys

    from onnxprune.report import progress

    fake = _Tty(True)
    monkeypatch.setattr(sys, "stderr", fake)
    progress.enable(True)
    try:
        with progress.Progress("calibrating", 3) as bar:
            bar.advance(3)
    finally:
        progress.enable(False)
    assert fake.text == ""


def test_registered_criterion_is_used_and_refuses_duplicates():
    import numpy as np

    import onnxprune
    from onnxprune.scoring import CRITERIA, CUSTOM_CRITERIA, register_criterion

    def keep_first(analysis, stats):  # the first channels of every group score highest
        return {r: float(-i) for g in analysis.groups for i, r in enumerate(g.classes)}

    try:
        register_criterion("keep-first-test", keep_first)
        with pytest.raises(ValueError):
            register_criterion("l1", keep_first)
        result = onnxprune.prune(str(MODELS / "mlp.onnx"), ratio=0.5, criterion="keep-first-test")
        for g in result.context.analysis.prunable_groups:
            kept, total = result.context.selection.kept[g.id]
            removed = [i for i, r in enumerate(g.classes) if r in result.context.selection.removed]
            assert removed == list(range(kept, total))  # exactly the last channels went
            assert np.all(np.diff(result.context.scores[g.id]) < 0)
    finally:
        CUSTOM_CRITERIA.pop("keep-first-test", None)
        if "keep-first-test" in CRITERIA:
            CRITERIA.remove("keep-first-test")


def test_a_line_logged_during_a_short_step_does_not_draw_its_bar(monkeypatch):
    import sys

    from onnxprune.report import progress

    fake = _Tty(True)
    monkeypatch.setattr(sys, "stderr", fake)
    progress.enable(True)
    try:
        with progress.Progress("searching") as bar:
            progress.write("baseline p50 1.000 ms")
            bar.advance()
    finally:
        progress.enable(False)
    assert fake.text == "baseline p50 1.000 ms\n"  # a bar drawn here would be left on the screen
