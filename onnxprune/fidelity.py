"""How close the pruned model's outputs stay to the original's, on calibration data.

Reported with every pruning that has calibration data: per output, the
mean cosine similarity of each sample's flattened output and the relative L2 error. A user who
asked for 50 ms wants to know what it cost, in the model's own terms.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: batches of calibration data compared (the first ones); enough for a stable mean
MAX_BATCHES = 16


def output_fidelity(original: bytes, pruned: bytes, batches: Iterable[dict[str, np.ndarray]],
                    max_batches: int = MAX_BATCHES, threads: int | None = None) -> dict:
    """Run both models on the batches; per output: mean cosine, minimum cosine, relative L2 error."""
    from .runtime.session import onnxruntime

    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"]) for m in (original, pruned)]
    names = [o.name for o in sessions[0].get_outputs()]
    wanted = {i.name for i in sessions[0].get_inputs()}
    cosines: dict[str, list[float]] = {n: [] for n in names}
    err: dict[str, list[float]] = {n: [0.0, 0.0] for n in names}
    count = 0
    for batch in batches:
        if count >= max_batches:
            break
        feeds = {k: v for k, v in batch.items() if k in wanted}
        a, b = (s.run(None, feeds) for s in sessions)
        for name, x, y in zip(names, a, b):
            x = np.asarray(x, dtype=np.float64)
            y = np.asarray(y, dtype=np.float64)
            if x.shape != y.shape or not np.issubdtype(x.dtype, np.floating):
                continue
            xs, ys = x.reshape(len(x), -1) if x.ndim else x.reshape(1, 1), y.reshape(len(y), -1) if y.ndim else y.reshape(1, 1)
            norms = np.linalg.norm(xs, axis=1) * np.linalg.norm(ys, axis=1)
            cos = np.where(norms > 0, (xs * ys).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)
            cosines[name].extend(cos.tolist())
            err[name][0] += float(((x - y) ** 2).sum())
            err[name][1] += float((x ** 2).sum())
        count += 1
    outputs = {}
    for name in names:
        if cosines[name]:
            outputs[name] = {"mean_cosine": float(np.mean(cosines[name])), "min_cosine": float(np.min(cosines[name])),
                             "relative_error": float(np.sqrt(err[name][0] / err[name][1])) if err[name][1] else 0.0}
    return {"batches": count, "outputs": outputs}
