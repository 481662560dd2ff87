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
   it end to end, and through the Python API (``onnxprune.prune`` plus
   ``.save``) if that can be imported; each ``--repeats`` times.  Missing
   pieces are reported as "n/a".
4. Compare parameter counts (per use of each weight, so that the exporter's
   sharing of identical constants does not skew them), Conv/Gemm weight
   shapes layer by layer, and onnxruntime CPU latency for each ``--threads``
   value; the latency runs are interleaved in rounds with a rotating model
   order so that drift in machine load affects all models alike.
5. Print the results as markdown tables.

Usage::

    python tools/bench_resnet50.py [--workdir build/bench] [--threads 1 2]
                                   [--rounds 20] [--runs 5] [--repeats 3]
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

# Targets checked in the final table.
PARAM_TOL_PCT = 2.0   # onnxprune params within this many percent of Torch-Pruning's
LATENCY_TOL = 0.02    # median per-round latency ratio onnxprune / Torch-Pruning at most 1 + this
TIME_LIMIT_S = 5.0    # onnxprune end-to-end time at ratio 0.5


# --------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------


def logits_module(model):
    """Wrap an HF image classifier so that forward(pixel_values) returns logits."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    return Logits(model.eval()).eval()


def build_torch_model(num_labels: Optional[int]):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig()
    if num_labels is not None:
        cfg.num_labels = num_labels
    return logits_module(transformers.ResNetForImageClassification(cfg))


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


def onnxprune_cli(src: str, dst: str, ratio: float, criterion: str, repeats: int = 1) -> Dict[str, object]:
    """Run ``python -m onnxprune`` ``repeats`` times; wall time includes interpreter start and imports."""
    cmd = [sys.executable, "-m", "onnxprune", src, "-o", dst, "--ratio", str(ratio), "--criterion", criterion]
    times: List[float] = []
    stdout = ""
    for _ in range(max(1, repeats)):
        if os.path.exists(dst):
            os.remove(dst)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
        except OSError as e:  # pragma: no cover - interpreter missing etc.
            return {"ok": False, "seconds": None, "times": [], "error": str(e), "cmd": cmd}
        dt = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(dst):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            return {"ok": False, "seconds": None, "times": [], "cmd": cmd,
                    "error": f"exit {proc.returncode}: " + " | ".join(tail)}
        times.append(dt)
        stdout = proc.stdout
    return {"ok": True, "seconds": statistics.median(times), "times": times, "error": "", "cmd": cmd,
            "stdout": stdout}


def onnxprune_api(src: str, dst: str, ratio: float, criterion: str, repeats: int = 1) -> Dict[str, object]:
    """Time ``onnxprune.prune(src, ...)`` plus ``.save(dst)`` in this process (load, analyze, rewrite, save)."""
    # Like ``python -m onnxprune`` run from the repo root, prefer the
    # checkout's package over an installed one.
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        t0 = time.perf_counter()
        import onnxprune

        prune = onnxprune.prune
        t_import = time.perf_counter() - t0
    except Exception as e:  # not written yet, or import error
        return {"ok": False, "seconds": None, "times": [], "error": f"{type(e).__name__}: {e}"}
    times: List[float] = []
    prune_s: List[float] = []
    try:
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            result = prune(src, ratio=ratio, criterion=criterion)
            t1 = time.perf_counter()
            if not isinstance(getattr(result, "model", None), onnx.ModelProto):
                return {"ok": False, "seconds": None, "times": [],
                        "error": "result.model is not an onnx.ModelProto"}
            result.save(dst)
            times.append(time.perf_counter() - t0)
            prune_s.append(t1 - t0)
    except Exception as e:
        return {"ok": False, "seconds": None, "times": [], "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "seconds": statistics.median(times), "times": times, "prune_times": prune_s,
            "import_seconds": t_import, "error": ""}


# --------------------------------------------------------------------------
# ONNX helpers
# --------------------------------------------------------------------------


def _initializer_aliases(m: onnx.ModelProto) -> Dict[str, str]:
    """Map Identity outputs that merely forward an initializer to that initializer's name."""
    inits = {t.name for t in m.graph.initializer}
    alias: Dict[str, str] = {}
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input and n.output:
            src = alias.get(n.input[0], n.input[0])
            if src in inits:
                alias[n.output[0]] = src
    return alias


def onnx_params(path: str) -> Dict[str, int]:
    """Floating-point parameters of an ONNX model, counted two ways.

    ``per_use``: every (node, initializer) use counts, after resolving
    Identity nodes that forward an initializer.  The TorchScript exporter
    deduplicates identical constants (e.g. the all-zero conv biases that
    folding a freshly initialised BatchNorm produces) into one initializer
    fanned out through Identity nodes; counting per use gives the
    architectural parameter count, independent of that deduplication.
    ``stored``: distinct initializers as stored in the file.
    """
    m = onnx.load(path)
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.initializer
             if t.data_type in FLOAT_TYPES}
    alias = _initializer_aliases(m)
    per_use = 0
    for n in m.graph.node:
        if n.op_type == "Identity":
            continue
        for name in set(alias.get(i, i) for i in n.input):
            per_use += sizes.get(name, 0)
    return {"per_use": per_use, "stored": sum(sizes.values())}


def weight_shapes(path: str) -> Dict[str, tuple]:
    """Node name -> weight shape of every Conv / Gemm / MatMul with a constant weight."""
    m = onnx.load(path, load_external_data=False)
    dims = {t.name: tuple(t.dims) for t in m.graph.initializer}
    alias = _initializer_aliases(m)
    out: Dict[str, tuple] = {}
    for i, n in enumerate(m.graph.node):
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1:
            w = alias.get(n.input[1], n.input[1])
            if w in dims:
                out[n.name or f"#{i}:{n.op_type}"] = dims[w]
    return out


def compare_widths(a: str, b: str) -> str:
    """Compare the Conv/Gemm weight shapes of two models node by node (by name, else by order)."""
    sa, sb = weight_shapes(a), weight_shapes(b)
    if set(sa) == set(sb):
        pairs = [(k, sa[k], sb[k]) for k in sa]
    else:
        pairs = [(f"{ka} / {kb}", sa[ka], sb[kb]) for ka, kb in zip(sa, sb)]
    diff = [p for p in pairs if p[1] != p[2]]
    text = f"{len(pairs) - len(diff)} of {len(pairs)} Conv/Gemm weight shapes equal"
    if len(sa) != len(sb):
        text += f" (layer counts differ: {len(sa)} vs {len(sb)})"
    for name, x, y in diff[:10]:
        text += f"\n  - `{name}`: {x} vs {y}"
    if len(diff) > 10:
        text += f"\n  - ... {len(diff) - 10} more"
    return text


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


def cpu_times() -> Optional[List[int]]:
    """Aggregate CPU jiffies from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: Optional[List[int]], after: Optional[List[int]]) -> Optional[float]:
    """Fraction of CPU time stolen by the hypervisor between two cpu_times() samples."""
    if not before or not after or len(before) < 8:
        return None
    d = [b - a for a, b in zip(before, after)]
    total = sum(d[:8])
    return d[7] / total if total > 0 else None


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


def fmt_times(t: Dict[str, object]) -> str:
    """``median (min–max of n)`` for a timing result, or n/a with the reason."""
    if not t.get("ok"):
        return f"{NA} ({t.get('error') or 'failed'})"
    ts = t["times"]
    if len(ts) == 1:
        return f"{ts[0]:.2f} s"
    return f"{statistics.median(ts):.2f} s (min–max {min(ts):.2f}–{max(ts):.2f}, n={len(ts)})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where models are written (default: build/bench/)")
    ap.add_argument("--ratio", type=float, default=0.5, help="pruning ratio for both tools (default: 0.5)")
    ap.add_argument("--criterion", default="l1", help="onnxprune criterion (default: l1)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="onnxruntime intra_op_num_threads; several values give one timing run each "
                         "(default: 2)")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default: 20)")
    ap.add_argument("--runs", type=int, default=5, help="runs per model per round (default: 5)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default: 10)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="times the onnxprune CLI and API are each run for timing (default: 3)")
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

    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)

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
    cli = {"ok": False, "seconds": None, "times": [], "error": "skipped"}
    api = {"ok": False, "seconds": None, "times": [], "error": "skipped"}
    if not args.skip_onnxprune:
        cli = onnxprune_cli(p_orig, p_op, args.ratio, args.criterion, args.repeats)
        print(f"onnxprune CLI: {fmt_times(cli)}", flush=True)
        api = onnxprune_api(p_orig, p_op_api, args.ratio, args.criterion, args.repeats)
        print(f"onnxprune API: {fmt_times(api)}", flush=True)

    paths = {"original": p_orig}
    if cli["ok"]:
        paths["onnxprune"] = p_op
    elif api["ok"]:
        paths["onnxprune"] = p_op_api
    paths["torch-pruning"] = p_tp

    # ---- params ----------------------------------------------------------
    params = {k: onnx_params(p) for k, p in paths.items()}
    n_orig = params["original"]["per_use"]
    n_op = params["onnxprune"]["per_use"] if "onnxprune" in params else None
    n_tp = params["torch-pruning"]["per_use"]
    widths = compare_widths(paths["onnxprune"], p_tp) if "onnxprune" in paths else None

    outs = check_outputs(paths)

    # ---- latency ---------------------------------------------------------
    timing = {}
    steal: Dict[int, Optional[float]] = {}
    for threads in args.threads:
        print(f"timing: onnxruntime CPU, threads={threads}, warmup={args.warmup}, "
              f"{args.rounds} rounds x {args.runs} runs, interleaved", flush=True)
        c0 = cpu_times()
        timing[threads] = bench(paths, threads, args.rounds, args.runs, args.warmup)
        steal[threads] = steal_share(c0, cpu_times())

    def ratio_stats(rmed, a: str, b: str):
        if a not in rmed or b not in rmed:
            return None
        rs = [x / y for x, y in zip(rmed[a], rmed[b])]
        return statistics.median(rs), min(rs), max(rs), pct(25, rs), pct(75, rs)

    # ---- report ----------------------------------------------------------
    models = ["original", "onnxprune", "torch-pruning"]
    print("\n## ResNet-50: onnxprune vs Torch-Pruning\n")
    print(f"transformers ResNetConfig() (random init), input {'x'.join(map(str, INPUT_SHAPE))}, "
          f"pruning ratio {args.ratio}; onnxprune criterion `{args.criterion}`; Torch-Pruning "
          f"{tp.__version__} MagnitudeImportance(p=1), local, classifier ignored; "
          f"onnxruntime {ort.__version__} CPU, {os.cpu_count()} CPUs.\n")

    print("### Parameters\n")
    print("| | original | onnxprune | torch-pruning | onnxprune vs torch-pruning |")
    print("|---|---:|---:|---:|---:|")
    diff = NA if n_op is None else f"{100.0 * (n_op - n_tp) / n_tp:+.2f}%"
    print(f"| ONNX params | {n_orig:,} | {fmt_int(n_op)} | {n_tp:,} | {diff} |")
    share = NA if n_op is None else f"{100.0 * n_op / n_orig:.1f}%"
    print(f"| vs original | 100.0% | {share} | {100.0 * n_tp / n_orig:.1f}% | |")
    st = {k: params[k]["stored"] if k in params else None for k in models}
    sdiff = NA if st["onnxprune"] is None else \
        f"{100.0 * (st['onnxprune'] - st['torch-pruning']) / st['torch-pruning']:+.2f}%"
    print(f"| stored initializers | {st['original']:,} | {fmt_int(st['onnxprune'])} | "
          f"{st['torch-pruning']:,} | {sdiff} |")
    print(f"| torch `parameters()` | {tparams_orig:,} | | {tparams_tp:,} | |")
    print(f"| output | {outs['original']} | {outs.get('onnxprune', NA)} | {outs['torch-pruning']} | |")
    print()
    print("ONNX params count every use of a weight (Identity-forwarded initializers resolved); "
          "stored initializers count each distinct tensor once (the exporter shares identical "
          "constants, such as the all-zero biases from folding freshly initialised BatchNorms). "
          "torch `parameters()` counts BatchNorm weight and bias, which the export folds into "
          "one conv bias.")
    if widths is not None:
        print(f"\nLayer widths onnxprune vs torch-pruning: {widths}")

    print("\n### Latency (ms per inference)\n")
    print("| threads | model | p50 | p90 | spread (round medians min–max) "
          "| vs torch-pruning: median ratio | IQR | min–max |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for threads, (samples, rmed) in timing.items():
        for k in models:
            if k not in samples:
                print(f"| {threads} | {k} | {NA} | {NA} | {NA} | {NA} | {NA} | {NA} |")
                continue
            s = samples[k]
            r = ratio_stats(rmed, k, "torch-pruning")
            if k == "torch-pruning":
                rtxt = "1.000 | – | –"
            elif r is None:
                rtxt = f"{NA} | {NA} | {NA}"
            else:
                rtxt = f"{r[0]:.3f} | {r[3]:.3f}–{r[4]:.3f} | {r[1]:.3f}–{r[2]:.3f}"
            print(f"| {threads} | {k} | {pct(50, s):.2f} | {pct(90, s):.2f} | "
                  f"{min(rmed[k]):.2f}–{max(rmed[k]):.2f} | {rtxt} |")
    print()
    print(f"Interleaved: {args.rounds} rounds x {args.runs} runs per model, model order rotated each "
          f"round, {args.warmup} warm-up runs; ratios are per-round median latency over the "
          f"torch-pruning median of the same round.")
    stolen = [f"threads={t}: {100.0 * v:.1f}%" for t, v in steal.items() if v is not None]
    if stolen:
        print(f"CPU time stolen by the hypervisor during timing (/proc/stat): {', '.join(stolen)}.")

    print("\n### Pruning time (ResNet-50, ratio " + f"{args.ratio})\n")
    print("| step | time |")
    print("|---|---:|")
    print(f"| onnxprune CLI wall time (`python -m onnxprune`, incl. interpreter start) | {fmt_times(cli)} |")
    print(f"| onnxprune API `prune()` + `save()` (load, analyze, rewrite, save) | {fmt_times(api)} |")
    if api.get("ok"):
        pt = api["prune_times"]
        print(f"| of which `prune()` | {statistics.median(pt):.2f} s (min–max {min(pt):.2f}–{max(pt):.2f}) |")
        print(f"| `import onnxprune` (once; onnx and numpy already loaded) | {api['import_seconds']:.2f} s |")
    print(f"| Torch-Pruning `pruner.step()` (in memory, no export) | {fmt_s(tp_seconds)} |")

    # ---- checks ----------------------------------------------------------
    def verdict(ok: Optional[bool]) -> str:
        return NA if ok is None else ("pass" if ok else "FAIL")

    print("\n### Checks\n")
    print("| check | value | result |")
    print("|---|---:|---|")
    pdiff = None if n_op is None else 100.0 * (n_op - n_tp) / n_tp
    print(f"| params within {PARAM_TOL_PCT:g}% of Torch-Pruning | {diff} | "
          f"{verdict(None if pdiff is None else abs(pdiff) <= PARAM_TOL_PCT)} |")
    for threads, (_, rmed) in timing.items():
        r = ratio_stats(rmed, "onnxprune", "torch-pruning")
        print(f"| onnxprune no slower than Torch-Pruning, threads={threads} (median round ratio "
              f"<= {1 + LATENCY_TOL:g}) | {NA if r is None else f'{r[0]:.3f}'} | "
              f"{verdict(None if r is None else r[0] <= 1 + LATENCY_TOL)} |")
    for name, t in (("CLI", cli), ("API", api)):
        sec = t.get("seconds")
        print(f"| onnxprune {name} end to end < {TIME_LIMIT_S:g} s (median) | {fmt_s(sec)} | "
              f"{verdict(None if sec is None else sec < TIME_LIMIT_S)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
