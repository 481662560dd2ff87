"""Pruned KV-cache decoders quantized (``--quantize int8-dynamic`` and ``int4``) keep the pruned
cache inputs and outputs and decode with their cache in ONNX Runtime: each step's present
outputs fed back as the next step's past grow by one position, and every step's logits stay
within a quantization tolerance of the unquantized pruned model's on the same tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import session

from onnxprune.analysis.cache_io import parse

pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parent.parent / "models"
DECODERS = {"dynamo": (MODELS / "llama_cache_dynamo.onnx", 4, 2),
            "genai": (MODELS / "genai_llama_fp32" / "model.onnx", 4, 2)}
HEAD_DIM = 16  # the GenAI model's head size, which it names symbolically (kv_cache_dim)
#: minimum cosine of each step's logits against the float pruned model's (measured on these
#: random-weight decoders: >= 0.9997 int8-dynamic, >= 0.988 int4 at ratio 0.5)
MIN_COSINE = {"int8-dynamic": 0.999, "int4": 0.98}
PROMPT, STEPS = 4, 8


def cache_heads(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: t.type.tensor_type.shape.dim[1].dim_value
            for t in list(model.graph.input) + list(model.graph.output) if parse(t.name)}


def decode(model: onnx.ModelProto, tokens: list[int]) -> tuple[np.ndarray, list[set[int]]]:
    """Decode ``tokens`` with the cache (the prompt, then one given token a step): each step's
    last-position logits and the cache lengths it wrote."""
    sess = session(model)
    names = {i.name for i in sess.get_inputs()}
    outs = [o.name for o in sess.get_outputs()]
    past = {i.name: np.zeros([1, i.shape[1], 0, i.shape[3] if isinstance(i.shape[3], int) else HEAD_DIM], np.float32)
            for i in sess.get_inputs() if parse(i.name)}
    ids, done, logits, lengths = np.array([tokens[:PROMPT]], np.int64), 0, [], []
    for step in range(STEPS):
        seq = ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, done + seq), np.int64), **past}
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(done, done + seq, dtype=np.int64)[None]
        res = dict(zip(outs, sess.run(None, feeds)))
        done += seq
        logits.append(res["logits"][0, -1])
        past = {n: res[n.replace("past_key_values", "present")] for n in past}
        lengths.append({v.shape[2] for v in past.values()})
        ids = np.array([[tokens[PROMPT + step]]], np.int64)
    return np.array(logits), lengths


@pytest.fixture(scope="module", params=sorted(DECODERS))
def decoder(request):
    path, heads, kept = DECODERS[request.param]
    return onnx.load(path), heads, kept


@pytest.mark.parametrize("method", sorted(MIN_COSINE))
def test_pruned_quantized_decoder_decodes_with_its_cache(decoder, method):
    import onnxprune

    model, heads, kept = decoder
    result = onnxprune.prune(model, ratio=0.5, quantize=method)
    ops = {n.op_type for n in result.model.graph.node}
    assert ("MatMulNBits" if method == "int4" else "MatMulInteger") in ops
    assert set(cache_heads(model).values()) == {heads}
    assert cache_heads(result.model) == cache_heads(result.context.pruned)
    assert set(cache_heads(result.model).values()) == {kept}
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 128, PROMPT + STEPS)]
    reference, _ = decode(result.context.pruned, tokens)
    logits, lengths = decode(result.model, tokens)
    assert np.isfinite(logits).all()
    assert lengths == [{PROMPT + step} for step in range(STEPS)]
    cosine = (logits * reference).sum(1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= MIN_COSINE[method], cosine
    assert not np.array_equal(logits, reference)  # the model decoded is the quantized one
