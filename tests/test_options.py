"""One options definition: every prune option is a CLI flag, a TOML key and a prune() keyword,
and a bad value fails with the same message whichever way it was given."""

from __future__ import annotations

import inspect
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.cli_args import alias_param
from onnxprune.errors import BadInputError
from onnxprune.options import PruneOptions, option_fields

MODELS = Path(__file__).resolve().parent.parent / "models"
#: the prune command's own options, which are not options of a prune: where to write, how to talk
COMMAND_OWN = {"model", "output", "force", "report_path", "html_path", "config", "quiet", "debug", "help"}


def _prune_command():
    return main.commands["prune"]


def test_every_option_field_is_a_flag_a_toml_key_and_a_prune_keyword():
    params = {p.name: p for p in _prune_command().params}
    keywords = inspect.signature(onnxprune.prune).parameters
    for name, flag in option_fields():
        assert flag.flag in params[name].opts, name
        assert name in keywords and keywords[name].kind == inspect.Parameter.KEYWORD_ONLY, name
        assert PruneOptions(**{name: keywords[name].default}) == PruneOptions(), f"{name}: prune()'s default differs"
    no_flag = {f.name for f in fields(PruneOptions)} - {name for name, _ in option_fields()}
    assert no_flag == {"target"}  # the parsed form of the target_* flags


def test_every_prune_flag_is_an_option_field_or_the_commands_own():
    names = {name for name, _ in option_fields()}
    aliases = {alias_param(flag) for _, flag in option_fields() if flag.alias}
    for p in _prune_command().params:
        assert p.name in names | aliases | COMMAND_OWN, f"{p.opts}: not derived from PruneOptions"


@pytest.mark.parametrize("name", [name for name, _ in option_fields()])
def test_every_option_is_accepted_in_the_toml_config(tmp_path, name, monkeypatch):
    """Each field's TOML key reaches prune() (the run stops there: the test is the key)."""
    flag = dict(option_fields())[name]
    choices = getattr(next(p for p in _prune_command().params if p.name == name).type, "choices", None)
    value = ('["x:1"]' if flag.multiple else f'"{choices[-1]}"' if choices else
             {"flag": "true", "float": "0.5", "int": "2"}.get(flag.kind, '"x"'))
    (tmp_path / "c.toml").write_text(f"{flag.key} = {value}\n")
    seen = {}

    def stop(self):
        seen["options"] = self
        raise BadInputError("stopped")

    monkeypatch.setattr(PruneOptions, "validate", stop)
    result = CliRunner().invoke(main, [str(MODELS / "mlp.onnx"), "--config", str(tmp_path / "c.toml")])
    assert "options" in seen, result.output
    assert getattr(seen["options"], name) != getattr(PruneOptions(), name), name


BAD_VALUES = [
    # (CLI flags, TOML, prune() keywords, message)
    (["--ratio", "1.5"], "ratio = 1.5", {"ratio": 1.5}, "--ratio must be in [0, 1), got 1.5"),
    (["--round-to", "0"], "round-to = 0", {"round_to": 0}, "--round-to must be a positive integer, got 0"),
    (["--threads", "0"], "threads = 0", {"threads": 0}, "--threads must be positive, got 0"),
    (["--ridge", "-1"], "ridge = -1.0", {"ridge": -1.0}, "--ridge must be a positive number, got -1.0"),
    (["--calib-samples", "0"], "calib-samples = 0", {"calib_samples": 0},
     "--calib-samples must be a positive integer, got 0"),
    (["--prune", "bogus"], 'prune = "bogus"', {"prune": "bogus"}, "--prune: unknown kind 'bogus'"),
    (["--ratio", "0.2", "--target-flops", "0.5"], 'ratio = 0.2\ntarget-flops = "0.5"',
     {"ratio": 0.2, "target_flops": "0.5"}, "--ratio and --target-flops are alternatives: give one"),
    (["--latency-table", "t.json"], 'latency-table = "t.json"', {"latency_table": "t.json"},
     "--latency-table needs --target-latency"),
    (["--target-latency", "fast"], 'target-latency = "fast"', {"target_latency": "fast"},
     "--target-latency 'fast': expected a duration"),
    (["--calib-size", "224"], "calib-size = 224", {"calib_size": 224}, "describe a --calib folder of images"),
]


@pytest.mark.parametrize("flags, toml, keywords, message", BAD_VALUES, ids=[c[-1][:30] for c in BAD_VALUES])
def test_a_bad_value_fails_the_same_from_cli_toml_and_prune(tmp_path, flags, toml, keywords, message):
    model, out = MODELS / "mlp.onnx", tmp_path / "o.onnx"
    (tmp_path / "c.toml").write_text(toml + "\n")
    with pytest.raises(BadInputError) as raised:
        onnxprune.prune(model, **keywords)
    assert message in str(raised.value)
    for args in (flags, ["--config", str(tmp_path / "c.toml")]):
        result = CliRunner().invoke(main, [str(model), "-o", str(out), *args])
        assert result.exit_code == 2 and result.output.strip() == f"error: {raised.value}", result.output
    assert not out.exists()


def test_ridge_and_threads_reach_reconstruction_from_cli_and_toml(tmp_path, monkeypatch):
    """``ridge`` was a PruneOptions field only, and ``threads`` did not reach reconstruction."""
    import onnxprune.reconstruct as rec

    calls, original = [], rec.reconstruct
    monkeypatch.setattr(rec, "reconstruct", lambda *a, **k: calls.append(k) or original(*a, **k))
    model, calib = MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz"
    (tmp_path / "c.toml").write_text("ridge = 0.25\nthreads = 1\n")
    for args in (["--ridge", "0.5", "--threads", "2"], ["--config", str(tmp_path / "c.toml")]):
        result = CliRunner().invoke(main, [str(model), "--calib", str(calib), "--calib-samples", "32", "-o",
                                           str(tmp_path / "o.onnx"), *args])
        assert result.exit_code == 0, result.output
    assert [(k["ridge"], k["threads"]) for k in calls] == [(0.5, 2), (0.25, 1)]


def test_options_are_frozen_and_validate_returns_a_copy():
    given = PruneOptions(prune="heads", input_shapes=["x:1x8"], target_flops="50%")
    checked = given.validate()
    assert (checked.prune, checked.input_shapes, checked.ratio) == (("heads",), {"x": [1, 8]}, None)
    assert checked.target.kind == "flops" and given.target is None and given.prune == "heads"
    assert checked.validate() == checked
    assert PruneOptions().validate().ratio == 0.3 and PruneOptions(input_shapes=None).validate().input_shapes == {}
    with pytest.raises(FrozenInstanceError):
        given.ratio = 0.5


def test_prune_refuses_an_unknown_keyword():
    with pytest.raises(TypeError, match="unexpected keyword argument 'ratios'"):
        onnxprune.prune(MODELS / "mlp.onnx", ratios=0.5)


def test_default_passes_see_a_target_given_as_text():
    from onnxprune.passes.builtin import default_passes

    names = [p.name for p in default_passes(PruneOptions(target_flops="50%"))]
    assert "search" in names and "select" not in names
