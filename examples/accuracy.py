#!/usr/bin/env python
"""Top-1 accuracy of one or more classifiers on labelled data, side by side.

    python examples/accuracy.py models/digits_cnn.onnx digits.pruned.onnx --data models/digits_eval.npz

DATA is a .npz holding each model input by name (samples on axis 0) and the labels (``label``,
or ``--label NAME``); the first output's argmax over its last axis is the prediction. Each
model after the first also gets its agreement with the first one's predictions. Needs
onnxruntime (``pip install "onnxprune[cpu]"``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def predictions(path: str, data: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in data]
    if missing:
        sys.exit(f"error: {path}: the data has no input named {', '.join(missing)} (it has {', '.join(data)})")
    count = len(data[names[0]])
    out = [session.run(None, {n: data[n][i:i + batch] for n in names})[0].argmax(-1) for i in range(0, count, batch)]
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="ONNX classifiers (the first is the reference for agreement)")
    ap.add_argument("--data", required=True, help=".npz of inputs by name and labels")
    ap.add_argument("--label", default="label", help="the labels' key in DATA [default: label]")
    args = ap.parse_args(argv)
    with np.load(args.data) as npz:
        data = {k: npz[k] for k in npz.files}
    if args.label not in data:
        sys.exit(f"error: {args.data}: no '{args.label}' array of labels")
    labels = data.pop(args.label)
    reference = None
    for path in args.models:
        predicted = predictions(path, data)
        line = f"{path}: accuracy {np.mean(predicted == labels):.4f} ({int(np.sum(predicted == labels))}/{len(labels)})"
        if reference is not None:
            line += f", agrees with the first on {np.mean(predicted == reference):.4f}"
        reference = predicted if reference is None else reference
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
