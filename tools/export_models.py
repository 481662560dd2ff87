#!/usr/bin/env python
"""Export the small ONNX test models under ``models/``.

This is a development tool: it needs PyTorch, which the onnxprune package
itself does not depend on.  Every model is built with a fixed seed, its
BatchNorm layers get random, non-trivial statistics and affine parameters
(so that BN is not an identity), and it is exported in eval mode with the
TorchScript exporter (opset 17, constant folding, batch 1, fixed shapes).

Usage::

    python tools/export_models.py            # export all models
    python tools/export_models.py mlp se_block
    python tools/export_models.py --no-check # skip checker / onnxruntime
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
OPSET = 17


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm layer random running stats and affine params."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)


# --------------------------------------------------------------------------
# ResNet-18 style
# --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetSmall(nn.Module):
    def __init__(self, widths=(8, 16, 32, 64), blocks=(2, 2, 2, 2), num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            blks = []
            for j in range(n):
                blks.append(BasicBlock(cin, w, stride if j == 0 else 1))
                cin = w
            layers.append(nn.Sequential(*blks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --------------------------------------------------------------------------
# MobileNetV2 style
# --------------------------------------------------------------------------


def conv_bn_relu6(cin, cout, k, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Small(nn.Module):
    # (expand, out_channels, repeats, stride)
    CFG = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2), (6, 24, 2, 2), (6, 32, 1, 1)]

    def __init__(self, num_classes=10, last=128):
        super().__init__()
        layers = [conv_bn_relu6(3, 16, 3, 2)]
        cin = 16
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


# --------------------------------------------------------------------------
# DenseNet style
# --------------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


class DenseNetBlock(nn.Module):
    def __init__(self, num_layers=4, growth=8, stem=16, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        layers = []
        c = stem
        for _ in range(num_layers):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block = nn.Sequential(*layers)
        cout = c // 2
        self.transition = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, cout, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )
        self.norm = nn.BatchNorm2d(cout)
        self.fc = nn.Linear(cout, num_classes)

    def forward(self, x):
        x = self.transition(self.block(self.stem(x)))
        x = F.relu(self.norm(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# --------------------------------------------------------------------------
# YOLOv8 style C2f + SPPF
# --------------------------------------------------------------------------


class Conv(nn.Module):
    """Conv2d + BN + SiLU (ultralytics ``Conv``)."""

    def __init__(self, cin, cout, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, cin, cout, n=2, shortcut=True, use_split=False):
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))
        self.use_split = use_split

    def forward(self, x):
        if self.use_split:
            y = list(self.cv1(x).split((self.c, self.c), 1))
        else:
            y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        c_ = cin // 2
        self.cv1 = Conv(cin, c_, 1)
        self.cv2 = Conv(c_ * 4, cout, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YOLOv8Block(nn.Module):
    def __init__(self, out_channels=8):
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.down1 = Conv(16, 32, 3, 2)
        self.c2f1 = C2f(32, 32, n=1, use_split=False)  # .chunk(2, 1)
        self.down2 = Conv(32, 64, 3, 2)
        self.c2f2 = C2f(64, 64, n=2, use_split=True)  # .split((c, c), 1)
        self.sppf = SPPF(64, 64)
        self.head = nn.Conv2d(64, out_channels, 1)

    def forward(self, x):
        x = self.c2f1(self.down1(self.stem(x)))
        x = self.c2f2(self.down2(x))
        return self.head(self.sppf(x))


# --------------------------------------------------------------------------
# Squeeze-excitation CNN
# --------------------------------------------------------------------------


class SEConv(nn.Module):
    """SE with 1x1 convolutions on the pooled feature."""

    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class SELinear(nn.Module):
    """SE with flatten + Linear layers and a view back to N,C,1,1."""

    def __init__(self, c, r=4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(c, c // r), nn.ReLU(inplace=True), nn.Linear(c // r, c), nn.Sigmoid()
        )

    def forward(self, x):
        n, c = x.shape[0], x.shape[1]
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        s = self.fc(s).view(n, c, 1, 1)
        return x * s


class SENet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.se1 = SEConv(16)
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.se2 = SEConv(32)
        self.conv3 = nn.Conv2d(32, 64, 3, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.se3 = SELinear(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.se1(F.relu(self.bn1(self.conv1(x))))
        x = self.se2(F.relu(self.bn2(self.conv2(x))))
        x = self.se3(F.relu(self.bn3(self.conv3(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# --------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, din=64, hidden=128, dout=10):
        super().__init__()
        self.fc1 = nn.Linear(din, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.gelu = nn.GELU(approximate="none")  # exact, erf based
        self.fc3 = nn.Linear(hidden, 96)
        self.drop = nn.Dropout(0.1)
        self.fc4 = nn.Linear(96, dout)

    def forward(self, x):
        h1 = F.relu(self.fc1(x))
        h2 = self.gelu(self.fc2(h1)) + h1  # residual between equal-width layers
        h3 = self.drop(self.fc3(h2))
        return self.fc4(h3)


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------

# name -> (constructor, input shape, seed)
MODELS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...], int]] = {
    "resnet_small": (ResNetSmall, (1, 3, 32, 32), 0),
    "mobilenetv2_small": (MobileNetV2Small, (1, 3, 64, 64), 1),
    "densenet_block": (DenseNetBlock, (1, 3, 32, 32), 2),
    "yolov8_block": (YOLOv8Block, (1, 3, 64, 64), 3),
    "se_block": (SENet, (1, 3, 32, 32), 4),
    "mlp": (MLP, (1, 64), 5),
}


def build(name: str) -> Tuple[nn.Module, torch.Tensor]:
    ctor, shape, seed = MODELS[name]
    torch.manual_seed(seed)
    model = ctor()
    randomize_batchnorm(model, seed + 1000)
    model.eval()
    g = torch.Generator().manual_seed(seed + 2000)
    x = torch.randn(*shape, generator=g)
    return model, x


def export(name: str, out_dir: str = MODELS_DIR) -> str:
    model, x = build(name)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["output"],
            export_params=True,
        )
    return path


def check(name: str, path: str) -> str:
    import numpy as np
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    model, x = build(name)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    err = float(np.abs(out - ref).max())
    if not np.allclose(out, ref, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{name}: onnxruntime differs from torch (max abs err {err:.3g})")
    ops = Counter(n.op_type for n in m.graph.node)
    ops_s = ", ".join(f"{k}:{v}" for k, v in sorted(ops.items()))
    return f"out {list(out.shape)}, max|ort-torch| {err:.2e}; ops {ops_s}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"models to export (default: all of {', '.join(MODELS)})")
    ap.add_argument("--out-dir", default=MODELS_DIR, help="output directory (default: models/)")
    ap.add_argument("--no-check", action="store_true", help="skip onnx checker / onnxruntime check")
    args = ap.parse_args(argv)

    names = args.names or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s): {', '.join(unknown)}")

    total = 0
    for name in names:
        path = export(name, args.out_dir)
        size = os.path.getsize(path)
        total += size
        msg = f"{name:20s} {size / 1024:8.1f} KiB  {os.path.relpath(path, REPO_ROOT)}"
        if not args.no_check:
            msg += "\n    " + check(name, path)
        print(msg)
    print(f"{'total':20s} {total / 1024:8.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
