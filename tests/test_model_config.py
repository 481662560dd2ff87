"""Config files beside the model (``onnxprune.model_config``): one head count and one MLP width
for every layer, and the updated ``config.json`` written beside the output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune import prune
from onnxprune.model_config import TransformersConfig

from test_kv_cache import cache_dims, greedy_decode

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "models" / "llama_optimum"
EXPORT_PYTHON = Path(os.environ.get("ONNXPRUNE_EXPORT_PYTHON", "/work/venvs/export/bin/python"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    shutil.copytree(FOLDER, src)
    return src


def weights(model: onnx.ModelProto) -> dict[str, tuple]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def layer_widths(model: onnx.ModelProto, layers: int = 2) -> list[dict]:
    """Per layer: q/k projection output widths and the MLP's gate width, read from the weights
    (the MatMul weights that optimum names after the projections)."""
    init = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for i in range(layers):
        widths = {}
        for node in model.graph.node:
            if node.op_type == "MatMul" and node.name.startswith(f"/model/layers.{i}/"):
                part = node.name.split("/")[-2]
                if part in ("q_proj", "k_proj", "gate_proj") and node.input[1] in init:
                    widths[part] = init[node.input[1]][1]
        out.append(widths)
    return out


def test_config_written_beside_output_with_the_pruned_counts(folder: Path, tmp_path: Path):
    out = tmp_path / "out" / "model.onnx"
    result = prune(folder / "model.onnx", ratio=0.5)
    files = result.save(out)
    assert out.parent / "config.json" in files
    before = json.loads((folder / "config.json").read_text())
    after = json.loads((out.parent / "config.json").read_text())
    assert {k: after[k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")} == {
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}
    assert after["head_dim"] == before["head_dim"] == 8 and after["hidden_size"] == before["hidden_size"] == 64
    assert {k: v for k, v in after.items() if k not in ("num_attention_heads", "num_key_value_heads",
                                                        "intermediate_size")} == \
        {k: v for k, v in before.items() if k not in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
    model = onnx.load(out)
    # the model agrees with its config: every layer, every cache tensor
    for widths in layer_widths(model):
        assert widths == {"q_proj": after["num_attention_heads"] * after["head_dim"],
                          "k_proj": after["num_key_value_heads"] * after["head_dim"],
                          "gate_proj": after["intermediate_size"]}
    assert {d[1] for d in cache_dims(model).values()} == {after["num_key_value_heads"]}
    assert result.report["model_configs"] == [{"file": "config.json", "changes": {
        "intermediate_size": [128, 64], "num_attention_heads": [8, 4], "num_key_value_heads": [4, 2]}}]
    assert any("optimum's ORTModelForCausalLM" in w for w in result.context.warnings)


def test_a_target_keeps_every_layer_alike(folder: Path):
    """A params target allocates widths per group; with the config, each kind keeps one count
    (the smallest any layer would keep), so the config can say it."""
    result = prune(folder / "model.onnx", target_params=0.75)
    groups = {g.id: g for g in result.context.analysis.groups}
    kept = result.context.selection.kept
    for kind in ("heads", "channels"):
        widths = {kept[gid][0] for gid in kept if groups[gid].kind == kind}
        assert len(widths) == 1, (kind, widths)
    assert result.report["after"]["params"] <= 0.75 * result.report["before"]["params"]
    widths = layer_widths(result.model)
    assert widths[0] == widths[1]


def test_tied_groups_keep_one_count_each_its_own_best(folder: Path):
    """The selection under the config's ties: uneven counts asked per group become the smallest
    of each kind, and each group keeps its own best-scored channels."""
    from onnxprune.selection import select_by_counts

    ctx = prune(folder / "model.onnx", ratio=0.0).context
    analysis, scores = ctx.analysis, ctx.scores
    heads = [g.id for g in analysis.prunable_groups if g.kind == "heads"]
    mlp = [g.id for g in analysis.prunable_groups if g.kind == "channels"]
    assert sorted(analysis.ties) == sorted([tuple(heads), tuple(mlp)])
    selection = select_by_counts(analysis, scores, {heads[0]: 3, heads[1]: 2, mlp[0]: 100, mlp[1]: 64})
    assert {selection.kept[g][0] for g in heads} == {2} and {selection.kept[g][0] for g in mlp} == {64}
    by_id = {g.id: g for g in analysis.groups}
    for gid in heads + mlp:
        kept = [i for i, r in enumerate(by_id[gid].classes) if r not in selection.removed]
        best = sorted(np.argsort(-scores[gid], kind="stable")[:len(kept)].tolist())
        assert kept == best
    analysis.ties.clear()  # without the ties, the counts asked are the counts kept
    free = select_by_counts(analysis, scores, {heads[0]: 3, heads[1]: 2, mlp[0]: 100, mlp[1]: 64})
    assert [free.kept[g][0] for g in heads + mlp] == [3, 2, 100, 64]


def test_config_that_disagrees_keeps_the_groups_whole(folder: Path):
    data = json.loads((folder / "config.json").read_text())
    data["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(data))
    result = prune(folder / "model.onnx", ratio=0.5)
    assert result.unchanged
    reasons = [r for g in result.context.analysis.groups for r in g.reasons]
    assert any("config.json beside the model says 3 layers of 4 K/V heads; found 2 group(s) of 4" in r for r in reasons)
    assert any("3 layers of 128 MLP units" in r for r in reasons)


def test_output_in_the_input_folder_leaves_its_config_alone(folder: Path):
    before = (folder / "config.json").read_bytes()
    result = prune(folder / "model.onnx", ratio=0.5)
    files = result.save(folder / "model.pruned.onnx")
    assert files == [folder / "model.pruned.onnx"]
    assert (folder / "config.json").read_bytes() == before
    assert any("config.json not updated: the output is in the input's folder" in w for w in result.context.warnings)


def test_config_kinds_read_counts():
    kind = TransformersConfig()
    c = kind.counts({"num_hidden_layers": 2, "num_attention_heads": 8, "hidden_size": 64, "intermediate_size": 128})
    assert (c.layers, c.heads, c.kv_heads, c.head_dim, c.intermediate) == (2, 8, 8, 8, 128)
    assert kind.counts({"n_layer": 2, "n_head": 4}) is None  # GPT-2 names: not this kind's
    after = kind.update({"num_attention_heads": 8, "hidden_size": 64}, c,
                        type(c)(2, heads=4, kv_heads=4, head_dim=8, intermediate=128))
    assert after == {"num_attention_heads": 4, "num_key_value_heads": 4, "hidden_size": 64, "head_dim": 8}


def test_bad_config_is_bad_input(folder: Path):
    from onnxprune.errors import BadInputError

    (folder / "config.json").write_text("{not json")
    with pytest.raises(BadInputError, match="config.json: not a readable JSON file"):
        prune(folder / "model.onnx", ratio=0.5)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(BadInputError, match="config.json: not a JSON object"):
        prune(folder / "model.onnx", ratio=0.5)


def _optimum_generate(folder: Path) -> dict:
    res = subprocess.run([str(EXPORT_PYTHON), str(ROOT / "tools" / "check_optimum_generate.py"), str(folder),
                          "--new", "16"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not EXPORT_PYTHON.exists(), reason=f"needs optimum-onnx ({EXPORT_PYTHON} missing; "
                                                       "set ONNXPRUNE_EXPORT_PYTHON)")
def test_optimum_generates_from_the_pruned_folder(folder: Path, tmp_path: Path):
    """optimum's ORTModelForCausalLM.from_pretrained(folder).generate() on the folder with MLP
    units pruned (config.json's intermediate_size updated): 16 new tokens, the same ones as our
    own greedy KV-cache loop on the pruned model."""
    out = tmp_path / "out" / "model.onnx"
    result = prune(folder / "model.onnx", ratio=0.5, prune=("channels",))
    result.save(out)
    assert json.loads((out.parent / "config.json").read_text())["intermediate_size"] == 64
    got = _optimum_generate(out.parent)
    assert got["tokens"] == greedy_decode(result.model)[0]


@pytest.mark.slow
@pytest.mark.skipif(not EXPORT_PYTHON.exists(), reason=f"needs optimum-onnx ({EXPORT_PYTHON} missing)")
@pytest.mark.xfail(strict=True, reason="optimum-onnx 0.1 sizes a llama's first empty cache from hidden_size / "
                   "num_attention_heads even where config.json gives head_dim (modeling_decoder.py reads head_dim "
                   "only for gemma, gemma3_text, gpt_oss and nemotron), so fewer heads break its generate()")
def test_optimum_generates_with_heads_pruned(folder: Path, tmp_path: Path):
    out = tmp_path / "out" / "model.onnx"
    result = prune(folder / "model.onnx", ratio=0.5)
    result.save(out)
    config = json.loads((out.parent / "config.json").read_text())
    assert (config["head_dim"], config["hidden_size"] // config["num_attention_heads"]) == (8, 16)
    got = _optimum_generate(out.parent)
    assert got["tokens"] == greedy_decode(result.model)[0]
