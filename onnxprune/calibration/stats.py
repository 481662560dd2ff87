"""Per-channel statistics reduced as batches arrive, so memory never grows with the sample count."""

from __future__ import annotations

import numpy as np


class ChannelStats:
    """Running sums along one axis: mean, variance, mean |x|, fraction of zeros, L2 norm."""

    def __init__(self, axis: int):
        self.axis = axis
        self.count = 0
        #: NaN and Inf values seen (the model's own, e.g. a Log of zero): scores from these
        #: statistics are not finite, and the criterion falls back for the groups they reach
        self.non_finite = 0
        self.sum = self.sumsq = self.sumabs = self.zeros = None
        #: consuming node name -> the Gram statistics of its input rows, where a criterion needs them
        self.grams: dict[str, GramStats] = {}

    def update(self, x: np.ndarray) -> None:
        flat = np.moveaxis(np.asarray(x), self.axis, -1)
        flat = flat.reshape(-1, flat.shape[-1]).astype(np.float64)
        if self.sum is None:
            c = flat.shape[1]
            self.sum, self.sumsq, self.sumabs, self.zeros = (np.zeros(c) for _ in range(4))
        self.count += flat.shape[0]
        self.non_finite += int(flat.size - np.count_nonzero(np.isfinite(flat)))
        self.sum += flat.sum(axis=0)
        self.sumsq += (flat * flat).sum(axis=0)
        self.sumabs += np.abs(flat).sum(axis=0)
        self.zeros += (flat == 0).sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.count

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.sumsq / self.count - self.mean ** 2, 0.0)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.sumabs / self.count

    @property
    def zero_fraction(self) -> np.ndarray:
        return self.zeros / self.count

    @property
    def l2(self) -> np.ndarray:
        return np.sqrt(self.sumsq)


class GramStats:
    """Running ``XᵀX`` and column sums of a consuming layer's input rows (its input as the layer
    sees it, e.g. a conv's patches), from which the centred Gram matrix follows: what a
    least-squares refit with a bias can still explain is decided by it."""

    def __init__(self):
        self.count = 0
        self.xtx: np.ndarray | None = None
        self.sum: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)  # float32 products per batch, float64 totals
        if self.xtx is None:
            self.xtx = np.zeros((rows.shape[1], rows.shape[1]))
            self.sum = np.zeros(rows.shape[1])
        self.count += rows.shape[0]
        self.xtx += cross_product(rows, rows)
        self.sum += rows.sum(axis=0, dtype=np.float64)

    @property
    def finite(self) -> bool:
        """Whether every sum is a number (non-finite activations make the matrix unusable)."""
        return self.xtx is not None and bool(np.isfinite(self.xtx).all() and np.isfinite(self.sum).all())

    @property
    def centred(self) -> np.ndarray:
        """``Σ (x - mean)(x - mean)ᵀ`` over all rows seen."""
        return self.xtx - np.outer(self.sum, self.sum) / max(self.count, 1)


def cross_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``aᵀb`` in float32 (half the time of float64, ample for one batch), redone in float64
    where float32 overflows (large but finite activations), so only true NaN/Inf stay."""
    out = a.T @ b
    if not np.isfinite(out).all() and np.isfinite(a).all() and np.isfinite(b).all():
        out = a.astype(np.float64).T @ b.astype(np.float64)
    return out
