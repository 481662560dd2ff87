"""A bug in a rule is not a refusal: strict in the suite, named as an internal error outside it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import onnx
import pytest

from onnxprune import Analyze, Normalize, PassError, Pipeline
from onnxprune.analysis import groups
from onnxprune.ops import REGISTRY, Rule

MODEL = Path(__file__).resolve().parent.parent / "models" / "digits_cnn.onnx"


@pytest.fixture
def broken_relu(monkeypatch):
    def fn(node, state):
        raise KeyError("a bug")

    _set_relu_rule(monkeypatch, fn)


def _set_relu_rule(monkeypatch, fn) -> None:
    monkeypatch.setitem(REGISTRY, "Relu", dataclasses.replace(REGISTRY["Relu"], rule=Rule(fn)))


def _analyze():
    return Pipeline([Normalize(), Analyze()]).run(onnx.load(str(MODEL))).analysis


def test_the_suite_runs_rules_strictly(broken_relu):
    assert groups.strict_rules()
    with pytest.raises(PassError, match="analyze") as info:
        _analyze()
    assert isinstance(info.value.__cause__, KeyError)


def test_outside_strict_mode_the_group_is_refused_as_an_internal_error_and_logged(broken_relu, monkeypatch,
                                                                                 caplog):
    monkeypatch.setenv(groups.STRICT_RULES_ENV, "0")
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        analysis = _analyze()
    reasons = [r for g in analysis.groups for r in g.reasons]
    assert any(r.startswith("internal error in the rule for Relu: KeyError") for r in reasons), reasons
    assert any("internal error in the rule for Relu" in rec.getMessage() for rec in caplog.records)


def test_a_refusal_by_the_rule_is_not_an_error(monkeypatch):
    from onnxprune.analysis.state import UnsupportedPattern

    def fn(node, state):
        raise UnsupportedPattern("Relu with a reason")

    _set_relu_rule(monkeypatch, fn)
    reasons = [r for g in _analyze().groups for r in g.reasons]
    assert any(r.startswith("Relu with a reason") for r in reasons) and not any("internal" in r for r in reasons)


@pytest.mark.parametrize("debug", [False, True])
def test_the_cli_handler_prints_one_line_per_record_tracebacks_only_with_debug(debug, capsys):
    from onnxprune.report.log import TerminalHandler, install

    logger = logging.getLogger("onnxprune.analysis.groups")
    handler = install(debug=debug)
    try:
        try:
            {}["x"]
        except KeyError:
            logger.warning("internal error in the rule for Relu ('r'): KeyError", exc_info=True)
    finally:
        logging.getLogger("onnxprune").removeHandler(handler)
        logging.getLogger("onnxprune").setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert err.startswith("warning: internal error in the rule for Relu ('r'): KeyError\n")
    assert ("Traceback" in err) == debug and isinstance(handler, TerminalHandler)


def test_a_bug_inside_a_pass_is_one_line_in_the_cli_and_its_chain_with_debug(monkeypatch, capsys):
    from onnxprune import cli

    def broken(self, ctx):
        raise KeyError("a bug")

    monkeypatch.setattr(Analyze, "run", broken)
    for debug in (False, True):
        with pytest.raises((SystemExit, PassError)) as info:
            cli.main(["analyze", str(MODEL)] + (["--debug"] if debug else []), standalone_mode=False)
        err = capsys.readouterr().err
        if debug:  # the chained traceback: the PassError, caused by the KeyError
            assert isinstance(info.value, PassError) and isinstance(info.value.__cause__, KeyError)
        else:
            assert info.value.code == 1 and err.count("\n") == 1
            assert err.startswith("error: internal error in pass 'analyze': KeyError") and "--debug" in err
