#!/usr/bin/env python
"""Time ``onnxprune --ratio 0.3 --calib`` before and after a change, side by side in one run.

Models (built here with ``onnx.helper``, random weights from a fixed seed, nothing downloaded):

- ``detector``: a DB/PaddleOCR-like text detector (strided conv backbone, FPN top-down path
  with nearest upsampling, concatenated pyramid, conv head with a sigmoid map), run at
  ``--det-size`` (default 736x1952) on ``--det-samples`` (24) inputs;
- ``resnet50``: the ResNet-50 v1.5 layout (bottlenecks 3-4-6-3, BN folded into conv biases) at
  224x224 on ``--resnet-samples`` (64) inputs;
- ``minilm``: all-MiniLM-L6-v2 with its real weights and 1,024 calibration sentences in length
  buckets (``tools/export_minilm.py --only torchscript`` and ``tools/minilm_calib_buckets.py``
  write them to ``--minilm-dir``, default ``build/minilm``);
- any committed model given with ``--model NAME=PATH:SAMPLES`` (random inputs of its shape).

``--base REV`` times the code of a git revision (exported under the work
folder) as ``before`` against this working tree as ``after``, so one run shows both.

Each model is pruned by every ``--tree`` (a source tree put first on PYTHONPATH, e.g. a frozen
worktree of the base commit and the working tree), interleaved in rounds so that load drifts
affect both alike. Reported: wall time per run and the fidelity the run itself measured (mean
output cosine on the calibration data, from ``--report``). Usage::

    python tools/bench_calib_speed.py --tree before=/tmp/before --tree after=. [--models detector resnet50]
    python tools/bench_calib_speed.py --base main --models detector resnet50 minilm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    """Nodes and initializers of a conv network under construction (He-initialised weights)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True,
             gain: float = 1.0) -> str:
        name = self._name("conv")
        w = (self.rng.standard_normal((cout, cin, k, k)) * gain * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name,
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        return self.op("Relu", [name]) if relu else name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(self, value: np.ndarray) -> str:
        name = self._name("const")
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def upsample(self, x: str, factor: int) -> str:
        scales = self.const(np.array([1, 1, factor, factor], np.float32))
        return self.op("Resize", [x, "", scales], mode="nearest")

    def model(self, x_shape: list, out: str, out_shape: list) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def detector(widths=(16, 24, 48, 96, 192), fpn: int = 64) -> onnx.ModelProto:
    """DB-like detector: backbone at strides 2..32, FPN, concatenated 1/4-scale pyramid, head."""
    b = _Builder(0)
    x = b.conv("x", 3, widths[0], stride=2)
    feats = []
    for cin, cout in zip(widths, widths[1:]):
        x = b.conv(x, cin, cout, stride=2)
        x = b.conv(x, cout, cout)
        feats.append((x, cout))
    lat = [b.conv(f, c, fpn, k=1, relu=False) for f, c in feats]
    tops = [lat[-1]]
    for level in reversed(lat[:-1]):
        tops.append(b.op("Add", [level, b.upsample(tops[-1], 2)]))
    tops.reverse()  # strides 4, 8, 16, 32
    maps = [b.conv(t, fpn, fpn // 4) for t in tops]
    maps = [m if i == 0 else b.upsample(m, 2 ** i) for i, m in enumerate(maps)]
    fused = b.op("Concat", maps, axis=1)
    head = b.conv(fused, fpn, fpn // 4)
    logit = b.conv(head, fpn // 4, 1, k=1, relu=False)
    return b.model(["N", 3, "H", "W"], b.op("Sigmoid", [logit]), ["N", 1, "h", "w"])


def resnet50(classes: int = 1000) -> onnx.ModelProto:
    """ResNet-50 v1.5 (stride in the 3x3 conv), BN folded, residual branches scaled down."""
    b = _Builder(1)
    x = b.conv("x", 3, 64, k=7, stride=2)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = b.conv(x, cin, width, k=1)
            y = b.conv(y, width, width, k=3, stride=s)
            y = b.conv(y, width, width * 4, k=1, relu=False, gain=0.3)
            short = b.conv(x, cin, width * 4, k=1, stride=s, relu=False) if i == 0 else x
            x = b.op("Relu", [b.op("Add", [y, short])])
            cin = width * 4
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = (b.rng.standard_normal((cin, classes)) / np.sqrt(cin)).astype(np.float32)
    logits = b.op("Gemm", [pooled, b.const(w), b.const(np.zeros(classes, np.float32))])
    return b.model(["N", 3, 224, 224], logits, ["N", classes])


def smooth_images(n: int, shape: tuple, seed: int) -> np.ndarray:
    """Images with structure at several scales (upsampled noise), so activations are not white noise."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    out = np.zeros((n, c, h, w), np.float32)
    for cell in (64, 16, 4):
        coarse = rng.standard_normal((n, c, -(-h // cell), -(-w // cell))).astype(np.float32)
        out += np.repeat(np.repeat(coarse, cell, axis=2), cell, axis=3)[:, :, :h, :w]
    return (out / np.sqrt(3)).astype(np.float32)


def write_samples(folder: Path, name: str, images: np.ndarray) -> None:
    """One ``.npz`` per sample, as a user's pipeline would dump them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        np.savez(folder / f"{i:04d}.npz", **{name: image[None]})


def prepare(name: str, work: Path, args) -> tuple[Path, Path]:
    model_path, data = work / f"{name}.onnx", work / f"{name}_calib"
    if name == "minilm":
        return Path(args.minilm_dir) / "minilm_torchscript.onnx", Path(args.minilm_dir) / "calib_buckets"
    if name == "detector":
        h, w = args.det_size
        model, inputs = detector(), ("x", args.det_samples, (3, h, w))
    elif name == "resnet50":
        model, inputs = resnet50(), ("x", args.resnet_samples, (3, 224, 224))
    else:
        path, samples = args.model[name]
        model = onnx.load(path)
        inp = model.graph.input[0]
        dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        inputs = (inp.name, samples, tuple(dims[1:]))
    onnx.save(model, model_path)
    key, n, shape = inputs
    if not data.exists():
        write_samples(data, key, smooth_images(n, shape, seed=7))
    return model_path, data


def run_once(tree: Path, model: Path, data: Path, out_dir: Path, tag: str, threads: int | None) -> dict:
    out, report = out_dir / f"{tag}.onnx", out_dir / f"{tag}.json"
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "onnxprune", str(model), "-o", str(out), "--ratio", "0.3", "--calib", str(data),
           "--report", str(report), "-q"]
    if threads:
        cmd += ["--threads", str(threads)]
    start, cpu = time.perf_counter(), _children_cpu()
    # in the tree's folder: ``python -m`` puts the working directory first on the path
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        return {"seconds": seconds, "cpu": cpu, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    fidelity = json.loads(report.read_text()).get("fidelity") or {}
    cosines = [v["mean_cosine"] for v in fidelity.get("outputs", fidelity).values()
               if isinstance(v, dict) and "mean_cosine" in v]
    return {"seconds": seconds, "cpu": cpu, "cosine": min(cosines) if cosines else None}


def _worktree(rev: str, work: Path) -> Path:
    """The files of ``rev`` under ``work`` (reused when already there), exported with ``git
    archive`` so the repository keeps no worktree registered for it."""
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", rev], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
    path = work / f"tree-{commit[:12]}"
    if not path.exists():
        path.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], cwd=repo, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    return path


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (less sensitive to load than wall time)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                   help="source tree to time (repeatable), first on PYTHONPATH")
    p.add_argument("--base", metavar="REV", help="time git revision REV as 'before' and this tree as 'after'")
    p.add_argument("--minilm-dir", default=str(Path(__file__).resolve().parents[1] / "build" / "minilm"))
    p.add_argument("--models", nargs="+", default=["detector", "resnet50"])
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH:SAMPLES")
    p.add_argument("--det-size", type=int, nargs=2, default=(736, 1952))
    p.add_argument("--det-samples", type=int, default=24)
    p.add_argument("--resnet-samples", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    trees = [tuple(t.split("=", 1)) for t in args.tree]
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench_calib_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.base:
        trees = [("before", str(_worktree(args.base, work))), ("after", str(Path(__file__).resolve().parents[1]))] + trees
    if not trees:
        p.error("give --base REV or --tree LABEL=PATH")
    args.model = {spec.split("=", 1)[0]: (spec.split("=", 1)[1].rsplit(":", 1)[0], int(spec.rsplit(":", 1)[1]))
                  for spec in args.model}
    load = os.getloadavg()[0]
    rows = []
    for name in args.models + [m for m in args.model if m not in args.models]:
        model, data = prepare(name, work, args)
        results = {label: [] for label, _ in trees}
        for r in range(args.rounds):
            order = trees if r % 2 == 0 else trees[::-1]
            for label, tree in order:
                results[label].append(run_once(Path(tree).resolve(), model, data, work, f"{name}_{label}", args.threads))
                print(f"{name} {label}: {results[label][-1]}", file=sys.stderr, flush=True)
        rows.append((name, results))
    print(f"\nload average at start: {load:.2f} on {os.cpu_count()} CPUs (after: {os.getloadavg()[0]:.2f})\n")
    print("| model | " + " | ".join(f"{label} wall s | {label} CPU s | {label} cosine" for label, _ in trees) + " |")
    print("|---|" + "---:|---:|---:|" * len(trees))
    for name, results in rows:
        cells = []
        for label, _ in trees:
            runs = results[label]
            if any("error" in r for r in runs):
                cells += ["error: " + " ".join(next(r for r in runs if "error" in r)["error"]), "", ""]
                continue
            cells += [f"{min(r['seconds'] for r in runs):.1f}", f"{min(r['cpu'] for r in runs):.1f}",
                      "n/a" if runs[0]["cosine"] is None else f"{runs[0]['cosine']:.4f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
