"""ONNX Runtime GenAI models (``tools/export_genai.py``: the GenAI model builder's fp32, fp16 and
int4 exports of one tiny LLaMA-style decoder, 8 query / 4 K/V heads of 16): heads and MLP units
prune, checked against the zeroed-channel oracle with a non-zero past cache fed; the three
formats prune the same heads and units; a pruned folder (model, updated genai_config.json,
tokenizer files) generates with ``onnxruntime_genai`` (run in a subprocess by an interpreter that
has it: ``ONNXPRUNE_GENAI_PYTHON``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.context import PruneOptions
from onnxprune.passes.builtin import Analyze, Normalize, Score, Select
from onnxprune.pipeline import Pipeline

from conftest import assert_cache_oracle

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
FORMATS = ("fp32", "fp16", "int4")
VOCAB, KV, HEAD, PAST, SEQ = 320, 4, 16, 5, 3
#: fp16 sums in another order once channels are gone: looser tolerances
TOLERANCES = {"fp32": (1e-4, 1e-5), "fp16": (1e-3, 1e-3), "int4": (1e-4, 1e-5)}
GENAI_PYTHON = os.environ.get("ONNXPRUNE_GENAI_PYTHON", "/work/venvs/genai/bin/python")


def folder(fmt: str) -> Path:
    return MODELS / f"genai_llama_{fmt}"


def feeds(fmt: str):
    dtype = np.float16 if fmt == "fp16" else np.float32

    def make(seed: int) -> dict:
        rng = np.random.default_rng(seed)
        out = {"input_ids": rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64),
               "attention_mask": np.ones((1, PAST + SEQ), np.int64)}
        for layer in range(2):
            for kind in ("key", "value"):
                out[f"past_key_values.{layer}.{kind}"] = rng.standard_normal((1, KV, PAST, HEAD)).astype(dtype)
        return out

    return make


def gqa_attrs(model: onnx.ModelProto) -> list[tuple[int, int]]:
    return [tuple(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name in ("num_heads", "kv_num_heads"))
            for n in model.graph.node if n.op_type == "GroupQueryAttention"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_genai_heads_and_mlp_oracle(fmt):
    """Half the K/V groups and half the MLP units of every layer go; the zeroed original fed the
    full past equals the pruned model fed the past without the removed heads."""
    rtol, atol = TOLERANCES[fmt]
    ctx = assert_cache_oracle(str(folder(fmt) / "model.onnx"), ratio=0.5, feeds=feeds(fmt), rtol=rtol, atol=atol)
    assert gqa_attrs(ctx.pruned) == [(4, 2), (4, 2)]  # (num_heads, kv_num_heads): whole K/V groups
    kinds = {g.kind for g in ctx.analysis.prunable_groups if set(g.classes) & ctx.selection.removed}
    assert kinds == {"heads", "channels"}
    residual = [g for g in ctx.analysis.groups if any("o_proj" in s or "down_proj" in s for s in g.sources)]
    assert len(residual) == 4 and all(not g.prunable and "residual stream stays whole" in " ".join(g.reasons)
                                      for g in residual)
    assert ctx.report["after"]["params"] < ctx.report["before"]["params"]
    for t in ctx.pruned.graph.input:
        if t.name.startswith("past_key_values."):
            assert t.type.tensor_type.shape.dim[1].dim_value == 2, t.name


def _removed(fmt: str):
    """Per layer, the removed K/V groups and MLP units (by index)."""
    ctx = Pipeline([Normalize(), Analyze(), Score(), Select()]).run(
        str(folder(fmt) / "model.onnx"), PruneOptions(ratio=0.5, criterion="l1"))
    out = {}
    for g in ctx.analysis.prunable_groups:
        layer = g.sources[0].split("/")[2]  # /model/layers.N/...
        out[(layer, g.kind)] = frozenset(i for i, r in enumerate(g.classes) if r in ctx.selection.removed)
        out[(layer, g.kind, "width")] = g.channels
    return out


def test_formats_prune_the_same_heads_and_units():
    """fp32, fp16 and int4 of one model remove the same K/V groups of each layer, and the same
    MLP units (int4: the same count, in whole quantization blocks of 32 units, since its
    down-projection's input goes block by block)."""
    fp32, fp16, int4 = (_removed(f) for f in FORMATS)
    assert fp32 == fp16
    for layer in ("layers.0", "layers.1"):
        assert fp32[(layer, "heads")] == int4[(layer, "heads")] and len(fp32[(layer, "heads")]) == 2
        assert int4[(layer, "channels", "width")] == 8 and len(int4[(layer, "channels")]) == 4
        assert len(fp32[(layer, "channels")]) == 128 == 32 * len(int4[(layer, "channels")])


def _genai_available() -> str | None:
    if not Path(GENAI_PYTHON).exists():
        return f"no interpreter with onnxruntime-genai at {GENAI_PYTHON} (set ONNXPRUNE_GENAI_PYTHON)"
    probe = subprocess.run([GENAI_PYTHON, "-c", "import onnxruntime_genai"], capture_output=True)
    return None if probe.returncode == 0 else f"{GENAI_PYTHON} cannot import onnxruntime_genai"


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "onnxprune", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pruned_genai_folder_generates(fmt, tmp_path):
    """``onnxprune FOLDER -o OUT`` writes a GenAI folder (model, genai_config.json with the kept
    head counts, tokenizer files) that onnxruntime_genai loads and generates 16 tokens with."""
    out = tmp_path / "pruned"
    run = _cli(folder(fmt), "--ratio", "0.5", "-o", out, "-q")
    assert run.returncode == 0, run.stderr
    config = json.loads((out / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert (decoder["num_attention_heads"], decoder["num_key_value_heads"]) == (4, 2)
    assert decoder["head_size"] == 16 and decoder["hidden_size"] == 128
    assert (out / decoder["filename"]).is_file()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (folder(fmt) / name).read_bytes()
    why = _genai_available()
    if why:
        pytest.skip(why)
    gen = subprocess.run([GENAI_PYTHON, str(ROOT / "tools" / "genai_generate.py"), str(out), "--tokens", "16"],
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    result = json.loads(gen.stdout.strip().splitlines()[-1])
    assert result["new"] == 16


def test_model_file_in_a_genai_folder_writes_the_config_beside_the_output(tmp_path):
    """Given the .onnx inside a GenAI folder, genai_config.json (naming the output's file) and the
    tokenizer files go beside the output; a search target keeps one K/V-head count for all layers."""
    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    run = _cli(folder("fp32") / "model.onnx", "--target-params", "0.88", "--prune", "heads", "-o", out, "-q")
    assert run.returncode == 0, run.stderr
    pruned = onnx.load(out)
    counts = set(gqa_attrs(pruned))
    assert len(counts) == 1 and counts != {(8, 4)}  # pruned, and alike in both layers
    decoder = json.loads((out.parent / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["filename"] == "small.onnx"
    assert {(decoder["num_attention_heads"], decoder["num_key_value_heads"])} == counts
    assert (out.parent / "tokenizer.json").is_file()


def test_genai_folder_naming_a_missing_model_is_bad_input(tmp_path):
    src = tmp_path / "in"
    shutil.copytree(folder("fp32"), src)
    config = json.loads((src / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = "absent.onnx"
    (src / "genai_config.json").write_text(json.dumps(config))
    run = _cli(src, "-o", tmp_path / "out")
    assert run.returncode == 2 and "absent.onnx" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
