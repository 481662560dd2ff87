"""The accuracy guard of a target search: never keep a candidate whose fidelity collapses when
one nearly as fast keeps it.

With calibration data, the chosen candidate's output fidelity (``fidelity.output_fidelity``, on
the first :data:`FIDELITY_SAMPLES` calibration samples, before reconstruction, which comes after
the search) is compared with that of the uniform allocation of the same cost (every group at
about the same fraction, what ``--ratio`` does). Each is summarised by its worst output's mean
cosine ``c``, its error ``1 - c``.

- The chosen candidate's fidelity *collapses* against the alternative when its error is more
  than :data:`COLLAPSE_ERROR_RATIO` times the alternative's and its cosine at least
  :data:`COLLAPSE_MIN_DROP` lower.
- The alternative is *nearly as fast* when it meets the target too and its measured p50 is at
  most :data:`NEARLY_AS_FAST` times the chosen one's (counted targets: when it meets the target).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs

#: calibration samples each candidate's fidelity is measured on (four of calibration's chunks)
FIDELITY_SAMPLES = 64
#: collapse: the error (1 - cosine) is more than this many times the alternative's ...
COLLAPSE_ERROR_RATIO = 2.0
#: ... and the cosine at least this much lower
COLLAPSE_MIN_DROP = 0.02
#: nearly as fast: measured p50 at most this many times the chosen candidate's
NEARLY_AS_FAST = 1.05


def candidate_fidelity(original: bytes | gs.Graph, candidate: bytes | gs.Graph, calibration: Iterable[dict[str, np.ndarray]],
                       threads: int | None = None, io_cuts: dict | None = None) -> dict:
    """``output_fidelity`` on the first batches, plus ``cosine``: the worst output's mean cosine
    (``io_cuts``: the candidate's resized KV-cache I/O, ``Plan.io_cuts``)."""
    from ..fidelity import output_fidelity

    result = output_fidelity(original, candidate, calibration, max_samples=FIDELITY_SAMPLES, threads=threads,
                             io_cuts=io_cuts)
    cosines = [v["mean_cosine"] for v in result["outputs"].values()]
    result["cosine"] = float(min(cosines)) if cosines else None
    return result


def collapses(cosine: float | None, alternative: float | None) -> bool:
    """Whether ``cosine`` collapsed against ``alternative`` (see the module docstring)."""
    if cosine is None or alternative is None or not np.isfinite(alternative):
        return False
    if not np.isfinite(cosine):
        return True
    error, other = 1.0 - cosine, max(1.0 - alternative, 0.0)
    return error > COLLAPSE_ERROR_RATIO * other and alternative - cosine >= COLLAPSE_MIN_DROP


def nearly_as_fast(alternative_ms: float, chosen_ms: float) -> bool:
    return alternative_ms <= NEARLY_AS_FAST * chosen_ms
