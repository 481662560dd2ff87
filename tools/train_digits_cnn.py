#!/usr/bin/env python
"""Train a small CNN on scikit-learn's digits and export it with its data.

The digits dataset (1797 8x8 grayscale images, pixel values 0..16) ships
inside the scikit-learn package, so nothing is downloaded.  The script:

1. loads it, scales pixels to [0, 1] and holds out a stratified 30% test
   split (``random_state=0``);
2. trains a small CNN on the CPU with fixed seeds (well under a minute)::

       conv(1->16, 3x3) + BN + ReLU
       conv(16->32, 3x3) + BN + ReLU
       maxpool 2
       conv(32->32, 3x3) + BN + ReLU
       global average pool, flatten
       Linear(32->32) + ReLU
       Linear(32->10)

3. exports it with the TorchScript exporter (opset 17, input ``input``
   ``batch x 1 x 8 x 8`` float32 with a dynamic ``batch`` dimension, output
   ``logits``) to ``models/digits_cnn.onnx``;
4. writes ``models/digits_eval.npz`` (``input``: the held-out images,
   ``label``: their int64 labels) and ``models/digits_calib.npz`` (``input``:
   ``--calib`` images drawn from the training split only);
5. prints the held-out accuracy of the PyTorch model and of the exported
   ONNX model under ONNX Runtime (they must agree).

Usage::

    python tools/train_digits_cnn.py [--epochs 40] [--calib 200] [--out models]

Needs ``torch`` and ``scikit-learn`` (development tools only; the onnxprune
package does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
OPSET = 17
SEED = 0
TEST_SIZE = 0.3


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # bundled with scikit-learn, no download
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED)


def accuracy_torch(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch: int) -> None:
    g = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    n = len(xt)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb = xt[idx]
            # light augmentation: random shift by up to one pixel
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / n:.4f}")


def export(model: nn.Module, path: str) -> None:
    model.eval()
    dummy = torch.zeros(1, 1, 8, 8)
    torch.onnx.export(
        model, (dummy,), path,
        dynamo=False, opset_version=OPSET, do_constant_folding=True,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def accuracy_onnx(path: str, x: np.ndarray, y: np.ndarray) -> float:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(path), full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calib", type=int, default=200, help="calibration images (training split)")
    ap.add_argument("--out", default=MODELS_DIR, help="output folder (default: models/)")
    args = ap.parse_args(argv)

    seed_everything(SEED)
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = load_split()
    print(f"digits: {len(x_train)} train, {len(x_test)} held out (stratified {TEST_SIZE:.0%})")

    model = DigitsCNN()
    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.batch)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    acc = accuracy_torch(model, x_test, y_test)
    print(f"held-out accuracy (PyTorch): {acc:.4f}")

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "digits_cnn.onnx")
    eval_path = os.path.join(args.out, "digits_eval.npz")
    calib_path = os.path.join(args.out, "digits_calib.npz")
    export(model, onnx_path)

    rng = np.random.default_rng(SEED)
    calib_idx = np.sort(rng.choice(len(x_train), size=min(args.calib, len(x_train)), replace=False))
    np.savez_compressed(eval_path, input=np.ascontiguousarray(x_test, dtype=np.float32),
                        label=y_test.astype(np.int64))
    np.savez_compressed(calib_path, input=np.ascontiguousarray(x_train[calib_idx], dtype=np.float32))

    acc_onnx = accuracy_onnx(onnx_path, x_test, y_test)
    print(f"held-out accuracy (ONNX Runtime): {acc_onnx:.4f}")
    for p in (onnx_path, eval_path, calib_path):
        print(f"wrote {os.path.relpath(p, REPO_ROOT)} ({os.path.getsize(p) / 1024:.1f} KB)")
    if abs(acc - acc_onnx) > 1e-9:
        print("error: PyTorch and ONNX Runtime accuracies differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
