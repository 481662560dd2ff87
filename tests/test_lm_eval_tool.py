"""``tools/eval_lm_perplexity.py`` (the perplexity and KV-cache decoding check behind
``tools/bench_tiny_lm.py``) on the committed decoders: the dynamo export with a cache, an optimum
folder and GenAI folders (fp32, int4), before and after pruning."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune import prune

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
_spec = importlib.util.spec_from_file_location("eval_lm_perplexity", ROOT / "tools" / "eval_lm_perplexity.py")
lm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lm)


def _data(vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(2, vocab, (5, 12))


def _reference_nll(model: str, data: np.ndarray) -> float:
    """The mean next-token NLL from one plain ONNX Runtime run per sequence."""
    dec = lm.Decoder(model)
    total, count = 0.0, 0
    for seq in data:
        logits = dec.step(seq[None], 0, dec.empty_past(1))["logits"][0].astype(np.float64)
        for t in range(len(seq) - 1):
            row = logits[t]
            total += np.log(np.exp(row - row.max()).sum()) + row.max() - row[seq[t + 1]]
            count += 1
    return total / count


@pytest.mark.parametrize("name,vocab", [("llama_cache_dynamo.onnx", 128), ("llama_optimum", 128),
                                        ("genai_llama_fp32", 320), ("genai_llama_int4", 320)])
def test_perplexity_and_decoding(name, vocab):
    data = _data(vocab)
    out = lm.evaluate(str(MODELS / name), data, decode_steps=16)
    np.testing.assert_allclose(out["nll"], _reference_nll(str(MODELS / name), data), rtol=1e-6)
    assert out["tokens"] == 5 * 11 and out["perplexity"] == pytest.approx(np.exp(out["nll"]))
    assert out["decode"]["steps"] == 16 and out["decode"]["max_abs_diff_vs_full"] < 1e-2


def test_pruned_genai_folder_decodes(tmp_path):
    """The tool reads a pruned GenAI folder's smaller cache from its updated genai_config.json."""
    src = MODELS / "genai_llama_fp32"
    prune(src / "model.onnx", ratio=0.5).save(tmp_path / "model.onnx")
    dec = lm.Decoder(str(tmp_path))
    assert {v.shape[1] for v in dec.empty_past(1).values()} == {2}
    out = lm.evaluate(str(tmp_path), _data(320), decode_steps=16)
    assert out["decode"]["steps"] == 16 and out["decode"]["max_abs_diff_vs_full"] < 1e-4
    assert onnx.load(tmp_path / "model.onnx", load_external_data=False).graph.input[2].type.tensor_type.shape.dim[1] \
        .dim_value == 2
