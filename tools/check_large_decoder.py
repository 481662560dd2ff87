#!/usr/bin/env python
"""Prune a generated decoder-shaped model over 2 GB with calibration, OBS and lstsq.

The model (``tests/large_model.make_large_decoder``: pre-norm blocks of multi-head attention
and a ReLU MLP, fp32, weights in external data) is pruned through the CLI in a fresh
interpreter, left in its files (over ``io.LAZY_LOAD_THRESHOLD``), once with ``--reconstruct
lstsq`` and once with ``--reconstruct none``. For each run it prints the time, the peak RSS
above the interpreter's baseline against the model's size on disk (the bound is 1.5x), the
disk the run used beyond its output (temporary files), and the fidelity on held-out samples
(cosine of each sample's output, original vs pruned; the calibration samples are not among them).

Usage::

    python tools/check_large_decoder.py [--hidden 2048] [--mlp 8192] [--layers 12] [--heads 16]
        [--seq 16] [--calib-samples 32] [--heldout 16] [--ratio 0.3] [--criterion obs] [--dir DIR] [--keep]
        [--modes lstsq,none,params] [--target-params 0.7]

Needs about 2.5x the model's size of free disk and the model's size of free memory. Exit
status 1 if pruning fails or a bound is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from large_model import disk_size, make_large_decoder, prune_and_measure  # noqa: E402

BOUND = 1.5
TEMP_BOUND = 0.10


class DiskWatch:
    """The peak bytes of files in ``folders`` (and onnxprune's temporary folders) that were not
    there at the start, sampled while a run goes on."""

    def __init__(self, *folders: Path):
        self.folders = folders
        self.before = set(self._files())
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _files(self):
        tmp = Path(tempfile.gettempdir())
        for folder in (*self.folders, *tmp.glob("onnxprune-*")):
            for f in (folder.rglob("*") if folder.is_dir() else []):
                yield f

    def _new_bytes(self) -> int:
        total = 0
        for f in self._files():
            if f not in self.before:
                try:
                    total += f.stat().st_size if f.is_file() else 0
                except OSError:
                    pass
        return total

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self._new_bytes())

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def heldout_fidelity(model: Path, pruned: Path, samples: np.ndarray) -> dict:
    """Mean and minimum cosine of each sample's flattened output, original vs pruned (ONNX
    Runtime maps both models' data files)."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]) for m in (model, pruned)]
    cosines = []
    for x in samples:
        a, b = (s.run(None, {"x": x[None]})[0].ravel().astype(np.float64) for s in sessions)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {"mean_cosine": float(np.mean(cosines)), "min_cosine": float(np.min(cosines)), "samples": len(cosines)}


def run_one(model: Path, folder: Path, calib: Path, heldout: np.ndarray, mode: str, args) -> dict:
    out = folder / f"pruned_{mode}.onnx"
    report = folder / f"report_{mode}.json"
    amount = ["--target-params", args.target_params] if mode == "params" else ["--ratio", args.ratio]
    refit = ["--no-reconstruct"] if mode == "none" else ["--reconstruct", "lstsq" if mode == "params" else mode]
    with DiskWatch(folder) as watch:
        probe = prune_and_measure(model, out, *amount, "--calib", str(calib), "--criterion", args.criterion,
                                  *refit, "--report", str(report), lazy_load_threshold=args.lazy_load_threshold)
    if probe["code"] != 0:
        print(probe["stderr"].strip(), file=sys.stderr)
        return {"mode": mode, "failed": True}
    written = disk_size(out) + report.stat().st_size
    data = json.loads(report.read_text())
    row = {"mode": mode, "seconds": probe["seconds"], "peak_extra": probe["extra"], "baseline": probe["baseline"],
           "disk_peak": watch.peak, "temp": max(0, watch.peak - written), "output": disk_size(out),
           "params": (data["before"]["params"], data["after"]["params"]),
           "search": {k: data["search"].get(k) for k in ("status", "baseline", "achieved")} if data.get("search") else None,
           "calib_fidelity": data.get("fidelity", {}).get("outputs", {}).get("y"),
           "reported_peak": data.get("memory", {}).get("peak_rss"),
           "heldout": heldout_fidelity(model, out, heldout)}
    out.unlink()
    Path(str(out) + ".data").unlink()
    return row


def print_table(rows: list[dict], size: int) -> None:
    print(f"\nmodel size on disk {size / 1e9:.2f} GB; peak RSS as the report gives it (whole process): "
          + ", ".join(f"{r['mode']} {r['reported_peak'] / 1e9:.2f} GB" for r in rows if r.get("reported_peak")))
    print("| run | time (s) | peak RSS above baseline | x size on disk | temp disk | output | params kept | "
          "held-out cosine mean / min | calib cosine |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("failed"):
            print(f"| {r['mode']} | failed |")
            continue
        calib = r["calib_fidelity"]["mean_cosine"] if r["calib_fidelity"] else float("nan")
        print(f"| {r['mode']} | {r['seconds']:.0f} | {r['peak_extra'] / 1e9:.2f} GB | {r['peak_extra'] / size:.2f} | "
              f"{r['temp'] / 1e6:.1f} MB | {r['output'] / 1e9:.2f} GB | {r['params'][1] / r['params'][0]:.3f} | "
              f"{r['heldout']['mean_cosine']:.4f} / {r['heldout']['min_cosine']:.4f} | {calib:.4f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("hidden", 2048), ("mlp", 8192), ("layers", 12), ("heads", 16), ("seq", 16),
                          ("calib-samples", 32), ("heldout", 16)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--ratio", default="0.3")
    ap.add_argument("--criterion", default="obs")
    ap.add_argument("--modes", default="lstsq,none,params",
                    help="runs, in order: --reconstruct values at --ratio, or 'params': --target-params with lstsq")
    ap.add_argument("--target-params", default="0.7")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the model [default: a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the generated model")
    ap.add_argument("--lazy-load-threshold", type=int, default=None,
                    help="override onnxprune.io.LAZY_LOAD_THRESHOLD (bytes) in the pruning process")
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="onnxprune-decoder-", dir=args.dir))
    try:
        model = folder / "decoder.onnx"
        t0 = time.perf_counter()
        size = make_large_decoder(model, hidden=args.hidden, mlp=args.mlp, layers=args.layers, heads=args.heads,
                                  seq=args.seq)
        print(f"generated {model} ({size / 1e9:.2f} GB on disk) in {time.perf_counter() - t0:.1f} s")
        rng = np.random.default_rng(7)
        data = rng.standard_normal((args.calib_samples + args.heldout, 1, args.seq, args.hidden), dtype=np.float32)
        calib = folder / "calib.npz"
        np.savez(calib, x=data[:args.calib_samples, 0])
        rows = [run_one(model, folder, calib, data[args.calib_samples:, 0], mode, args)
                for mode in args.modes.split(",")]
        print_table(rows, size)
        print(json.dumps({"size": size, "rows": rows}))
        ok = all(not r.get("failed") and r["peak_extra"] <= BOUND * size and r["temp"] <= TEMP_BOUND * size
                 and (r["mode"] != "params" or (r["search"] or {}).get("status") == "met") for r in rows)
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
