"""Text-line images with known text, for measuring a PP-OCR recognition model's task accuracy
without a dataset download: lines of words, numbers, dates and codes rendered in the machine's
TrueType fonts (DejaVu, Liberation) at varying sizes, shades and offsets, with a little noise.

The recognition model is PaddleOCR's PP-OCRv4 (``ch_PP-OCRv4_rec_infer.onnx``), exported by
Paddle2ONNX and shipped in the ``rapidocr-onnxruntime`` wheel on PyPI::

    pip download rapidocr-onnxruntime==1.4.4 --no-deps -d /tmp/w && unzip -o /tmp/w/*.whl -d /tmp/w
    # the model: /tmp/w/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx

Its character list is the model's own ``character`` metadata; decoding is CTC greedy (blank at
index 0, repeats collapsed), as PaddleOCR's ``CTCLabelDecode`` does.
"""

from __future__ import annotations

import glob
import os

import numpy as np

HEIGHT, WIDTH = 48, 320
SYLLABLES = ("ka", "to", "ri", "men", "sol", "var", "bel", "an", "tor", "is", "que", "lo", "dra",
             "pe", "un", "ster", "ni", "os", "mar", "ten", "ex", "gal", "pri", "ve", "don")


def fonts() -> list[str]:
    """The machine's Latin TrueType fonts, sorted (deterministic for a given machine)."""
    found = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf") +
                   glob.glob("/usr/share/fonts/truetype/liberation/*.ttf"))
    return [f for f in found if "Math" not in f and "ExtraLight" not in f]


def _word(rng: np.random.Generator) -> str:
    w = "".join(rng.choice(SYLLABLES) for _ in range(rng.integers(1, 4)))
    return w.capitalize() if rng.random() < 0.4 else (w.upper() if rng.random() < 0.1 else w)


def _token(rng: np.random.Generator) -> str:
    kind = rng.integers(0, 6)
    if kind == 0:
        return str(rng.integers(0, 100000))
    if kind == 1:
        return f"{rng.integers(1990, 2030)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    if kind == 2:
        return f"{''.join(chr(65 + rng.integers(0, 26)) for _ in range(2))}{rng.integers(100, 9999)}"
    if kind == 3:
        return f"{rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
    return _word(rng)


def text_line(rng: np.random.Generator) -> str:
    return " ".join(_token(rng) for _ in range(rng.integers(1, 4)))


def render(text: str, font_path: str, rng: np.random.Generator) -> np.ndarray | None:
    """One line as the model reads it: height 48, aspect kept, width padded to 320 with zeros
    after (x/255-0.5)/0.5, as PaddleOCR's ``resize_norm_img``; None if it would not fit."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.integers(26, 40))
    font = ImageFont.truetype(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(2, 10))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    bg, fg = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    img = Image.new("L", (w, h), bg)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=fg, font=font)
    width = max(1, int(round(w * HEIGHT / h)))
    if width > WIDTH:
        return None
    arr = np.asarray(img.resize((width, HEIGHT), Image.BILINEAR), dtype=np.float32)
    arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255)
    x = np.zeros((3, HEIGHT, WIDTH), np.float32)
    x[:, :, :width] = (arr / 255.0 - 0.5) / 0.5
    return x


def lines(count: int, seed: int, charset: set[str]) -> tuple[np.ndarray, list[str]]:
    """``count`` rendered lines that fit one input and use only ``charset``."""
    rng = np.random.default_rng(seed)
    faces = fonts()
    images, texts = [], []
    while len(texts) < count:
        text = text_line(rng)
        if not set(text) <= charset:
            continue
        x = render(text, faces[int(rng.integers(0, len(faces)))], rng)
        if x is None:          # too long for one input
            continue
        images.append(x)
        texts.append(text)
    return np.stack(images), texts


def charset_of(model_path: str) -> list[str]:
    """The model's classes: blank, its ``character`` metadata, then the space (PaddleOCR's
    ``use_space_char``)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}
    return ["<blank>"] + meta["character"].splitlines() + [" "]


def decode(logits: np.ndarray, classes: list[str]) -> list[str]:
    out = []
    for ids in logits.argmax(-1):
        keep = np.ones(len(ids), bool)
        keep[1:] = ids[1:] != ids[:-1]
        out.append("".join(classes[i] for i in ids[keep] if i != 0))
    return out


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def accuracy(predicted: list[str], truth: list[str]) -> tuple[float, float]:
    """(exact line accuracy, character accuracy = 1 - edit distance / length), spaces left out:
    the Chinese model reads the gaps between Latin words loosely, and a gap is no character."""
    predicted = [p.replace(" ", "") for p in predicted]
    truth = [t.replace(" ", "") for t in truth]
    exact = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    chars = 1.0 - sum(_edit_distance(p, t) for p, t in zip(predicted, truth)) / sum(len(t) for t in truth)
    return exact, chars


def write_calibration(model_path: str, out: str, count: int = 64, seed: int = 1) -> str:
    """An npz of ``count`` rendered lines under the model's input name (calibration data)."""
    import onnx

    classes = set(charset_of(model_path))
    x, _ = lines(count, seed, classes)
    name = onnx.load(model_path, load_external_data=False).graph.input[0].name
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **{name: x})
    return out
