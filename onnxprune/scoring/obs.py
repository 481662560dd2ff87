"""Structured Optimal Brain Surgeon scores: the channels whose loss a least-squares refit of
their consuming layers can best make up for (the structured OBS of ZipLM and SparseGPT-style
structured pruning).

For a consumer ``Y = X W + b`` of a group's channels, with ``H`` the centred Gram matrix of its
input rows (dampened by ``DAMP`` times its mean diagonal), removing the rows ``R`` one channel
owns (one row of a matrix, a kernel's worth of a conv's patch rows) and refitting the rest
optimally raises the squared output error by ``tr(W_Rᵀ ([H⁻¹]_RR)⁻¹ W_R)``. Channels go greedily,
cheapest first; after each removal ``H⁻¹`` drops the channel (Schur complement) and ``W`` takes
the OBS update, so later losses count the compensation that reconstruction will make. With
several consumers their losses, each relative to the consumer's output variance, are summed.

In very large groups the cheapest few channels go together per step, to bound the work.
A channel's score is the group's relative output error at the moment it is removed, so the
removal order is kept (kept channels score higher) on a scale comparable across layers. Where a
consumer's Gram matrix is not available the group is scored by ``fluctuation`` instead, and a
note says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis import Analysis, Group
from ..calibration.collect import gram_sites, gram_view
from ..calibration.stats import ChannelStats
from .activation import fluctuation

#: Work (multiply-adds) up to which a group's channels are removed strictly one at a time;
#: above it, as many per step as keep the work near this. Each step costs Python-level work and
#: a loss over every channel left besides the update itself, so fewer, larger steps are faster
#: (a quarter of the steps at 5e9 in the groups above it; all-MiniLM-L6-v2 at ratio 0.3 keeps
#: its mean output cosine, 0.9694, either way).
MAX_EXACT_COST = 1.25e9

#: Steps per group at most, whatever the cost bound allows: a wide group of cheap channels
#: (a transformer's 1,536 FFN channels, one row each) pays the per-step work (a loss over every
#: channel left, the Python around it) more than the updates (all-MiniLM-L6-v2 at ratio 0.3:
#: mean output cosine 0.96940 at 2 channels per step, 0.96943 at 6, its 256 steps).
MAX_STEPS = 256

#: Dampening of the Gram matrix, relative to its mean diagonal (keeps H invertible when
#: channels are dead or collinear).
DAMP = 1e-2

#: Compact ``H⁻¹`` once the live share of its blocks falls to this: each removal updates the
#: whole held matrix, so dropping dead rows early saves more than the copy costs (at 0.5 about
#: 0.57 N³ multiply-adds to remove N channels one at a time, at 0.8 about 0.41 N³).
COMPACT_AT = 0.8


#: Updates of ``H⁻¹`` held back before they are applied: each removal's Schur complement is a
#: product of thin factors, applied together as one matrix product per this many rows (compute
#: bound) instead of one pass over the whole matrix per removal (memory bound). The columns and
#: diagonal a step reads are brought up to date from the factors held.
LAZY_RANK = 256
#: Smaller matrices are updated at once (they stay in cache, where holding buys nothing).
LAZY_MIN_ROWS = 1024


@dataclass
class _Consumer:
    """One consuming layer, restricted to the rows of one group's channels, in class blocks.

    A removed block's rows and columns of ``H⁻¹`` (and its weight rows) become zero through the
    update itself, so blocks are only marked gone and the arrays compacted now and then.
    ``H⁻¹`` is ``hinv - left @ right`` (updates not applied yet, ``LAZY_RANK``); its diagonal
    (its diagonal blocks, for blocks of several rows) is kept current."""

    hinv: np.ndarray  # (q*k, q*k) inverse Hessian of the rows still held (before the held updates)
    w: np.ndarray  # (q*k, outputs) their weights
    classes: np.ndarray  # (q,) class index (within the group) of each block held
    k: int  # rows per channel (its block)
    energy: float  # the layer's output variance (sum over outputs), the loss's unit

    def __post_init__(self):
        self.alive = np.ones(len(self.classes), dtype=bool)
        self.position = {int(c): i for i, c in enumerate(self.classes)}
        q, k = len(self.classes), self.k
        self.diag = np.diagonal(self.hinv).copy()
        self.blocks = self.hinv.reshape(q, k, q, k)[np.arange(q), :, np.arange(q), :].copy() if k > 1 else None
        n = self.hinv.shape[0]
        rank = LAZY_RANK if n >= LAZY_MIN_ROWS else 0
        self._left, self._right, self._held = np.zeros((n, rank)), np.zeros((rank, n)), 0

    def losses(self, n: int) -> np.ndarray:
        """Per class of the group: the error added by removing it next (0 for gone ones)."""
        out = np.zeros(n)
        live = np.flatnonzero(self.alive)
        q, k = len(self.classes), self.k
        if k == 1:
            out[self.classes[live]] = np.einsum("ij,ij->i", self.w[live], self.w[live]) / self.diag[live]
        else:
            wb = self.w.reshape(q, k, -1)[live]
            out[self.classes[live]] = (wb * np.linalg.solve(self.blocks[live], wb)).sum(axis=(1, 2))
        return out / self.energy

    def remove(self, classes: list[int]) -> None:
        """Drop channels together: OBS update of the weights, Schur complement of ``H⁻¹``."""
        ps = [self.position[c] for c in classes]
        rows = (np.asarray(ps)[:, None] * self.k + np.arange(self.k)).ravel()
        col = self.hinv[:, rows]
        if self._held:
            col = col - self._left[:, :self._held] @ self._right[:self._held, rows]
        col_scaled = col / col[rows] if len(rows) == 1 else col @ np.linalg.inv(col[rows])
        _subtract_in_blocks(self.w, col_scaled, self.w[rows])  # a copy: the rows are read first
        self.diag -= np.einsum("ij,ij->i", col_scaled, col)
        if self.blocks is not None:
            q = len(self.classes)
            self.blocks -= np.einsum("qai,qbi->qab", col_scaled.reshape(q, self.k, -1), col.reshape(q, self.k, -1))
        self._hold(col_scaled, col.T)  # H⁻¹ is symmetric: its row block is col.T
        self.alive[ps] = False
        if self.alive.sum() <= COMPACT_AT * len(self.alive) and self.alive.any():
            self._compact()

    def _hold(self, left: np.ndarray, right: np.ndarray) -> None:
        """Hold the update ``H⁻¹ -= left @ right``, applying what is held when it is full."""
        r, rank = left.shape[1], self._left.shape[1]
        if self._held + r > rank:
            self._apply()
        if r > rank:
            _subtract_in_blocks(self.hinv, left, right)
            return
        self._left[:, self._held:self._held + r] = left
        self._right[self._held:self._held + r] = right
        self._held += r

    def _apply(self) -> None:
        if self._held:
            _subtract_in_blocks(self.hinv, self._left[:, :self._held], self._right[:self._held])
            self._held = 0

    def cost(self) -> float:
        """Multiply-adds of removing every channel one at a time (a rank-k update each)."""
        return float(len(self.classes)) * self.k * float(self.hinv.shape[0]) ** 2 * 0.6

    def _compact(self) -> None:
        self._apply()
        keep = np.repeat(self.alive, self.k)
        self.hinv = np.ascontiguousarray(self.hinv[np.ix_(keep, keep)])
        self.w = self.w[keep]
        self.classes = self.classes[self.alive]
        self.__post_init__()


def _consumer(site, stats: dict[str, ChannelStats], analysis: Analysis, group: Group) -> _Consumer | str | None:
    """The consumer of ``site`` seen by ``group``; a reason string where it cannot be; None where
    it carries nothing (no output variance)."""
    view, why = gram_view(site)
    if view is None:
        return f"{site.node.name}: {why}"
    gram = _gram(site, stats)
    if gram is None or not gram.count:
        return f"{site.node.name}: no Gram matrix gathered"
    k = view.rows_per_input()
    index = {r: i for i, r in enumerate(group.classes)}
    row_class = np.array([index.get(r, -1) for r in analysis.root[np.repeat(site.atoms, k)].tolist()])
    rows = np.flatnonzero(row_class >= 0)
    rows = rows[np.argsort(row_class[rows], kind="stable")]  # each class's rows together
    counts = np.bincount(row_class[rows], minlength=len(group.classes))
    if not (counts == counts[0]).all() or counts[0] == 0:
        return f"{site.node.name}: channels own unequal numbers of input rows"
    k = int(counts[0])  # a kernel's area, a head's width, a flattened map's size...
    h = gram.centred
    w = view.weight().astype(np.float64)
    energy = float(np.sum(w * (h @ w)))
    if not np.isfinite(energy):
        return f"{site.node.name}: its output variance is not finite"
    if energy <= 0:
        return None
    damp = DAMP * max(float(np.mean(np.diag(h))), 1e-12)
    try:
        hinv = np.linalg.inv(h + damp * np.eye(len(h)))
    except np.linalg.LinAlgError:
        return f"{site.node.name}: its dampened Gram matrix is singular"
    return _Consumer(hinv[np.ix_(rows, rows)], w[rows], np.arange(len(group.classes)), k, energy)


#: Rows of ``H⁻¹`` updated at a time: the product's temporary stays in cache instead of a
#: second full-size matrix going through memory (about twice as fast for rank-1 updates).
UPDATE_ROWS = 128


def _subtract_in_blocks(target: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
    """``target -= left @ right``, in place, a block of rows at a time (rank 1: an outer product)."""
    rank_one = left.shape[1] == 1
    for start in range(0, target.shape[0], UPDATE_ROWS):
        block = left[start:start + UPDATE_ROWS]
        target[start:start + UPDATE_ROWS] -= block * right if rank_one else block @ right


def _step_size(consumers: list[_Consumer], n: int) -> int:
    """Channels removed per step: 1 where removing them one at a time costs at most
    ``MAX_EXACT_COST`` multiply-adds, else as many as keep the cost near that bound; and
    enough that a group takes ``MAX_STEPS`` steps at most."""
    steps = sum(c.cost() for c in consumers) / MAX_EXACT_COST
    return min(n, max(1, int(np.ceil(steps)), -(-n // MAX_STEPS))) if np.isfinite(steps) else n


def _gram(site, stats: dict[str, ChannelStats]):
    """The Gram statistics gathered for the consumer of ``site``, or None."""
    channel_stats = stats.get(site.node.inputs[0].name)
    return channel_stats.grams.get(site.node.name) if channel_stats is not None else None


def _width(site, stats: dict[str, ChannelStats]) -> int:
    """The width of the Gram matrix gathered for the consumer of ``site`` (0 where none)."""
    g = _gram(site, stats)
    return 0 if g is None or g.sum is None else int(g.sum.shape[0])


def _greedy(consumers: list[_Consumer], n: int) -> np.ndarray | None:
    """Remove all ``n`` channels greedily; each one's score is the error reached when it goes.
    None where a loss is not a number (a degenerate Gram matrix): the ranking means nothing then.

    In a bigger group (a wide residual stream with many consumers, conv kernels) the cheapest
    few go together per step (``_step_size``). Bounded by construction: a fixed number of steps,
    each taking only channels still there (cheapest first, ties to the lower index)."""
    scores = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    chunk = _step_size(consumers, n)
    total = 0.0
    for _ in range(-(-n // chunk)):
        live = np.flatnonzero(alive)
        loss = sum(c.losses(n) for c in consumers)[live]
        if not np.isfinite(loss).all():
            return None
        take = live[np.argsort(loss, kind="stable")[:chunk]]
        for j, value in zip(take.tolist(), np.sort(loss, kind="stable")[:chunk].tolist()):
            total += max(value, 0.0)
            scores[j] = total
        alive[take] = False
        for c in consumers:
            c.remove(take.tolist())
    return scores


def obs(analysis: Analysis, stats: dict[str, ChannelStats], notes: list[str] | None = None) -> dict[int, float]:
    """Scores per class; ``notes`` gets one line per group scored by the fallback. A group a
    non-finite Gram matrix reaches (NaN or Inf activations) scores NaN, for ``score_groups``
    to fall back from with the tensors named."""
    fallback = fluctuation(analysis, stats)
    out = dict(fallback)
    sites = gram_sites(analysis)
    from ..report.progress import track

    mine_of = {group.id: [s for s in sites if not set(group.classes).isdisjoint(analysis.root[s.atoms].tolist())]
               for group in analysis.prunable_groups}
    # the bar counts per cent of the work, not groups: a group costs about the cube of its
    # consumers' Gram widths (so the time left is not skewed by a few wide groups)
    cost = {g.id: 1 + sum(_width(s, stats) ** 3 for s in mine_of[g.id]) for g in analysis.prunable_groups}
    whole = sum(cost.values())
    for group in track(analysis.prunable_groups, "scoring (obs)", 100, unit="%",
                       size=lambda g: 100 * cost[g.id] / whole):
        mine = mine_of[group.id]
        if any((g := _gram(s, stats)) is not None and g.count and not g.finite for s in mine):
            out.update({r: float("nan") for r in group.classes})
            continue
        consumers, reasons = [], []
        for site in mine:
            c = _consumer(site, stats, analysis, group)
            if isinstance(c, str):
                reasons.append(c)
            elif c is not None:
                consumers.append(c)
        if not consumers and not reasons:
            reasons.append("no consumer with output variance")
        scores = None if reasons else _scores(consumers, group.channels, reasons)
        if scores is None:
            if notes is not None:
                notes.append(f"group {group.id} ({group.name}) scored by fluctuation: {'; '.join(reasons)}")
            continue
        for r, s in zip(group.classes, scores.tolist()):
            out[r] = s
    return out


def _scores(consumers: list[_Consumer], n: int, reasons: list[str]) -> np.ndarray | None:
    """The greedy scores of a group, or None with the reason added to ``reasons``."""
    with np.errstate(all="ignore"):  # a degenerate update shows as a loss that is not finite
        try:
            scores = _greedy(consumers, n)
        except np.linalg.LinAlgError:
            scores = None
    if scores is None:
        reasons.append("the OBS losses are not finite (degenerate Gram matrix)")
    return scores
