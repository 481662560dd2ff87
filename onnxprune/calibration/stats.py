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
        """Add a batch: reduced over every axis but the channel's, in float64 totals, without
        a float64 copy of the whole tensor (a detector's maps are hundreds of MB)."""
        x = np.asarray(x)
        axis = self.axis % x.ndim if x.ndim else 0
        others = tuple(i for i in range(x.ndim) if i != axis)
        if self.sum is None:
            c = x.shape[axis] if x.ndim else 1
            self.sum, self.sumsq, self.sumabs, self.zeros = (np.zeros(c) for _ in range(4))
        x = x.reshape(1) if not x.ndim else x
        self.count += x.size // max(x.shape[axis], 1)
        self.non_finite += int(x.size - np.count_nonzero(np.isfinite(x)))
        self.sum += x.sum(axis=others, dtype=np.float64)
        self.sumsq += np.square(x, dtype=np.float64).sum(axis=others) if x.dtype != np.float32 \
            else np.einsum(_einsum_spec(x.ndim, axis), x, x, dtype=np.float64)
        self.sumabs += np.abs(x).sum(axis=others, dtype=np.float64)
        self.zeros += np.count_nonzero(x == 0, axis=others) if others else (x == 0)

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


def _einsum_spec(ndim: int, axis: int) -> str:
    """``x * x`` summed over all axes but ``axis``, e.g. "abcd,abcd->b"."""
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return f"{letters},{letters}->{letters[axis]}"


class GramStats:
    """Running ``XᵀX`` and column sums of a consuming layer's input rows (its input as the layer
    sees it, e.g. a conv's patches), from which the centred Gram matrix follows: what a
    least-squares refit with a bias can still explain is decided by it."""

    def __init__(self):
        self.count = 0
        self._xtx: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self._pending = PendingRows()

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)  # float32 products per block, float64 totals
        if self._xtx is None:
            self._xtx = np.zeros((rows.shape[1], rows.shape[1]))
            self.sum = np.zeros(rows.shape[1])
        self.count += rows.shape[0]
        self.sum += rows.sum(axis=0, dtype=np.float64)
        if self._pending.add(rows):
            self._flush()

    def _flush(self) -> None:
        if self._pending.rows:
            (rows,) = self._pending.take()
            with np.errstate(all="ignore"):  # the model's own NaN/Inf: counted (``finite``), not warned of
                self._xtx += cross_product(rows, rows)

    @property
    def xtx(self) -> np.ndarray | None:
        """``Σ x xᵀ`` over all rows seen."""
        self._flush()
        return self._xtx

    @property
    def finite(self) -> bool:
        """Whether every sum is a number (non-finite activations make the matrix unusable)."""
        return self.xtx is not None and bool(np.isfinite(self.xtx).all() and np.isfinite(self.sum).all())

    @property
    def centred(self) -> np.ndarray:
        """``Σ (x - mean)(x - mean)ᵀ`` over all rows seen."""
        return self.xtx - np.outer(self.sum, self.sum) / max(self.count, 1)


#: Rows held back before their products are taken: one product over thousands of rows instead
#: of one per small batch (16 sentences are a few hundred token rows, where BLAS spends more
#: on starting its threads than on arithmetic). Bounded in bytes per matrix, so the memory held
#: stays small next to the Gram matrices themselves.
FLUSH_ROWS = 4096
FLUSH_BYTES = 16 << 20


class PendingRows:
    """Row blocks (one or more aligned matrices: rows and their targets) waiting to be
    multiplied together; the sums are the same whatever the blocks, up to rounding."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.rows = 0
        self.bytes = 0

    def add(self, *arrays: np.ndarray) -> bool:
        """Hold ``arrays`` (same number of rows); True when the held rows should be taken now."""
        self.parts.append(arrays)
        self.rows += arrays[0].shape[0]
        self.bytes += sum(a.nbytes for a in arrays)
        return self.rows >= FLUSH_ROWS or self.bytes >= FLUSH_BYTES

    def take(self) -> tuple[np.ndarray, ...]:
        """The held rows, each matrix stacked, and nothing held any more."""
        parts, self.parts, self.rows, self.bytes = self.parts, [], 0, 0
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(block) for block in zip(*parts))


def cross_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``aᵀb`` in float32 (half the time of float64, ample for one batch), redone in float64
    where float32 overflows (large but finite activations), so only true NaN/Inf stay."""
    out = a.T @ b
    if not np.isfinite(out).all() and np.isfinite(a).all() and np.isfinite(b).all():
        out = a.astype(np.float64).T @ b.astype(np.float64)
    return out
