#!/usr/bin/env python
"""Benchmark onnxprune against Torch-Pruning on ResNet-50.

Steps:

1. Build ``transformers.ResNetForImageClassification(ResNetConfig())`` with
   random weights (``torch.manual_seed(0)``, nothing is downloaded) and export
   it with the TorchScript exporter (opset 17, input ``pixel_values``
   1x3x224x224, output ``logits``) to ``<workdir>/resnet50.onnx``.
2. Prune a copy in PyTorch with Torch-Pruning (L1 magnitude importance,
   pruning_ratio=0.5, no global pruning, classifier Linear ignored) and
   export it to ``<workdir>/resnet50_tp.onnx``.
3. Prune ``resnet50.onnx`` with onnxprune through its command line
   (``python -m onnxprune IN -o OUT --ratio 0.5 --criterion l1``), timing
   it end to end, and through the Python API (``onnxprune.prune``) if that
   can be imported.  Missing pieces are reported as "n/a".
4. Compare parameter counts and onnxruntime CPU latency; the latency runs
   are interleaved in rounds with a rotating model order so that drift in
   machine load affects all models alike.

Usage::

    python tools/bench_resnet50.py [--workdir build/bench] [--threads 2]
                                   [--rounds 15] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import onnx
import onnxruntime as ort

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKDIR = os.path.join(REPO_ROOT, "build", "bench")
INPUT_SHAPE = (1, 3, 224, 224)
OPSET = 17

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}

NA = "n/a"


# --------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------


def build_torch_model(num_labels: Optional[int]):
    import torch
    import transformers

    class Logits(torch.nn.Module):
        """Wrap the HF model so that forward(pixel_values) returns logits."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig()
    if num_labels is not None:
        cfg.num_labels = num_labels
    model = transformers.ResNetForImageClassification(cfg)
    model.eval()
    return Logits(model).eval()


def export_onnx(model, path: str) -> None:
    import torch

    x = torch.randn(*INPUT_SHAPE)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=["pixel_values"],
            output_names=["logits"],
        )


def torch_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_pruning_step(model, ratio: float) -> float:
    """Prune ``model`` in place with Torch-Pruning; return seconds taken."""
    import torch
    import torch_pruning as tp

    # The final Linear of the classifier (Sequential(Flatten, Linear)).
    classifier = [m for m in model.model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner_cls = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner
    example = torch.randn(*INPUT_SHAPE)
    t0 = time.perf_counter()
    pruner = pruner_cls(
        model,
        example_inputs=example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        global_pruning=False,
        ignored_layers=[classifier],
    )
    pruner.step()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# onnxprune side
# --------------------------------------------------------------------------


def onnxprune_cli(src: str, dst: str, ratio: float, criterion: str) -> Dict[str, object]:
    cmd = [sys.executable, "-m", "onnxprune", src, "-o", dst, "--ratio", str(ratio), "--criterion", criterion]
    if os.path.exists(dst):
        os.remove(dst)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    except OSError as e:  # pragma: no cover - interpreter missing etc.
        return {"ok": False, "seconds": None, "error": str(e), "cmd": cmd}
    dt = time.perf_counter() - t0
    ok = proc.returncode == 0 and os.path.exists(dst)
    err = ""
    if not ok:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        err = f"exit {proc.returncode}: " + " | ".join(tail)
    return {"ok": ok, "seconds": dt if ok else None, "error": err, "cmd": cmd, "stdout": proc.stdout}


def onnxprune_api(src: str, dst: str, ratio: float, criterion: str) -> Dict[str, object]:
    # Like ``python -m onnxprune`` run from the repo root, prefer the
    # checkout's package over an installed one.
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        import onnxprune

        prune = onnxprune.prune
    except Exception as e:  # not written yet, or import error
        return {"ok": False, "seconds": None, "error": f"{type(e).__name__}: {e}"}
    try:
        t0 = time.perf_counter()
        result = prune(src, ratio=ratio, criterion=criterion)
        dt = time.perf_counter() - t0
        if not isinstance(getattr(result, "model", None), onnx.ModelProto):
            return {"ok": False, "seconds": dt, "error": "result.model is not an onnx.ModelProto"}
        result.save(dst)
    except Exception as e:
        return {"ok": False, "seconds": None, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "seconds": dt, "error": ""}


# --------------------------------------------------------------------------
# ONNX helpers
# --------------------------------------------------------------------------


def onnx_params(path: str) -> int:
    m = onnx.load(path)
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.initializer if t.data_type in FLOAT_TYPES)


def make_session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bench(paths: Dict[str, str], threads: int, rounds: int, runs: int, warmup: int, seed: int = 0):
    """Interleaved latency measurement.

    Returns (samples, round_medians): dicts model -> list of ms.
    """
    x = np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype(np.float32)
    sessions = {k: make_session(p, threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    names = list(paths)
    samples: Dict[str, List[float]] = {k: [] for k in names}
    round_medians: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            s, feed = sessions[k], feeds[k]
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feed)
                ts.append((time.perf_counter() - t0) * 1e3)
            samples[k].extend(ts)
            round_medians[k].append(statistics.median(ts))
    return samples, round_medians


def check_outputs(paths: Dict[str, str]) -> Dict[str, str]:
    """Run each model once; report the output shape and whether it is finite."""
    x = np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)
    res = {}
    for k, p in paths.items():
        s = make_session(p, 1)
        (y,) = s.run(None, {s.get_inputs()[0].name: x})[:1]
        res[k] = f"{list(y.shape)}{'' if np.isfinite(y).all() else ' (non-finite!)'}"
    return res


def pct(q: float, xs: List[float]) -> float:
    return float(np.percentile(np.asarray(xs), q))


def fmt_int(n: Optional[int]) -> str:
    return NA if n is None else f"{n:,}"


def fmt_s(s: Optional[float]) -> str:
    return NA if s is None else f"{s:.2f} s"


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where models are written (default: build/bench/)")
    ap.add_argument("--ratio", type=float, default=0.5, help="pruning ratio for both tools (default: 0.5)")
    ap.add_argument("--criterion", default="l1", help="onnxprune criterion (default: l1)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra_op_num_threads (default: 2)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default: 15)")
    ap.add_argument("--runs", type=int, default=5, help="runs per model per round (default: 5)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default: 10)")
    ap.add_argument("--num-labels", type=int, default=None,
                    help="classifier outputs (default: ResNetConfig() default, i.e. 2)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the exported torch / Torch-Pruning ONNX files in workdir if present")
    ap.add_argument("--skip-onnxprune", action="store_true", help="do not run onnxprune")
    args = ap.parse_args(argv)

    os.makedirs(args.workdir, exist_ok=True)
    p_orig = os.path.join(args.workdir, "resnet50.onnx")
    p_tp = os.path.join(args.workdir, "resnet50_tp.onnx")
    p_op = os.path.join(args.workdir, "resnet50_onnxprune.onnx")
    p_op_api = os.path.join(args.workdir, "resnet50_onnxprune_api.onnx")

    import torch

    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}", flush=True)

    # ---- original + Torch-Pruning --------------------------------------
    model = build_torch_model(args.num_labels)
    tparams_orig = torch_params(model)
    if not (args.reuse and os.path.exists(p_orig)):
        t0 = time.perf_counter()
        export_onnx(model, p_orig)
        print(f"exported {os.path.relpath(p_orig)} in {time.perf_counter() - t0:.1f} s", flush=True)

    import torch_pruning as tp

    tp_seconds = torch_pruning_step(model, args.ratio)
    tparams_tp = torch_params(model)
    print(f"Torch-Pruning {tp.__version__}: step took {tp_seconds:.2f} s", flush=True)
    if not (args.reuse and os.path.exists(p_tp)):
        export_onnx(model, p_tp)
        print(f"exported {os.path.relpath(p_tp)}", flush=True)
    del model

    # ---- onnxprune -------------------------------------------------------
    cli = {"ok": False, "seconds": None, "error": "skipped"}
    api = {"ok": False, "seconds": None, "error": "skipped"}
    if not args.skip_onnxprune:
        cli = onnxprune_cli(p_orig, p_op, args.ratio, args.criterion)
        print(f"onnxprune CLI: {'ok' if cli['ok'] else 'n/a'} {fmt_s(cli['seconds'])} {cli['error']}", flush=True)
        api = onnxprune_api(p_orig, p_op_api, args.ratio, args.criterion)
        print(f"onnxprune API: {'ok' if api['ok'] else 'n/a'} {fmt_s(api['seconds'])} {api['error']}", flush=True)

    paths = {"original": p_orig}
    if cli["ok"]:
        paths["onnxprune"] = p_op
    elif api["ok"]:
        paths["onnxprune"] = p_op_api
    paths["torch-pruning"] = p_tp

    # ---- params ----------------------------------------------------------
    params = {k: onnx_params(p) for k, p in paths.items()}
    n_orig = params["original"]
    n_op = params.get("onnxprune")
    n_tp = params["torch-pruning"]

    outs = check_outputs(paths)

    # ---- latency ---------------------------------------------------------
    print(f"\ntiming: onnxruntime {ort.__version__} CPU, threads={args.threads}, "
          f"warmup={args.warmup}, {args.rounds} rounds x {args.runs} runs, interleaved", flush=True)
    samples, rmed = bench(paths, args.threads, args.rounds, args.runs, args.warmup)

    def ratio_stats(a: str, b: str):
        if a not in rmed or b not in rmed:
            return None
        rs = [x / y for x, y in zip(rmed[a], rmed[b])]
        return statistics.median(rs), min(rs), max(rs)

    # ---- report ----------------------------------------------------------
    print("\n## ResNet-50: onnxprune vs Torch-Pruning\n")
    print(f"pruning ratio {args.ratio}, onnxprune criterion `{args.criterion}`, "
          f"Torch-Pruning MagnitudeImportance(p=1), input {'x'.join(map(str, INPUT_SHAPE))}\n")
    print("| model | ONNX params | vs original | output | p50 ms | p90 ms | round medians min–max ms |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for k in ["original", "onnxprune", "torch-pruning"]:
        if k not in paths:
            print(f"| {k} | {NA} | {NA} | {NA} | {NA} | {NA} | {NA} |")
            continue
        s = samples[k]
        print(f"| {k} | {params[k]:,} | {100.0 * params[k] / n_orig:.1f}% | {outs[k]} | "
              f"{pct(50, s):.2f} | {pct(90, s):.2f} | {min(rmed[k]):.2f}–{max(rmed[k]):.2f} |")

    print()
    print(f"- torch params: original {tparams_orig:,}, Torch-Pruning {fmt_int(tparams_tp)}")
    if n_op is not None:
        print(f"- params onnxprune vs Torch-Pruning (ONNX): {100.0 * (n_op - n_tp) / n_tp:+.2f}%")
    else:
        print(f"- params onnxprune vs Torch-Pruning (ONNX): {NA}")
    print(f"- onnxprune CLI wall time (end to end, incl. interpreter start): {fmt_s(cli['seconds'])}"
          + ("" if cli["ok"] else f" [{cli['error']}]"))
    print(f"- onnxprune.prune() API time: {fmt_s(api['seconds'])}" + ("" if api["ok"] else f" [{api['error']}]"))
    print(f"- Torch-Pruning step time: {fmt_s(tp_seconds)}")
    for a, b in [("onnxprune", "torch-pruning"), ("onnxprune", "original"), ("torch-pruning", "original")]:
        r = ratio_stats(a, b)
        if r is None:
            print(f"- latency ratio {a}/{b} (per-round medians): {NA}")
        else:
            print(f"- latency ratio {a}/{b} (per-round medians): median {r[0]:.3f}, min–max {r[1]:.3f}–{r[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
