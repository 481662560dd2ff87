"""The joint refit of an MLP's two projections through their activation (``--reconstruct nonlinear``).

Least squares refits a down-projection alone, on the hidden units the pruning kept: what those
units cannot express stays as error (MiniLM's FFNs at half their units keep a relative output
error of 4 to 7% after the refit). Here the up-projection's kept units (weights and bias) and the
down-projection are fitted together through the activation between them, by gradient descent
(Adam, mini-batches) on the rows reconstruction already gathers: the pruned model's input to the
MLP and the original's output plus the drift of the residual it is added to. That is training,
but of one MLP at a time on its own inputs and outputs, so it needs no labels, no loss of the
model and no autograd: the activation runs as the graph's own nodes (any element-wise chain,
GELU as Erf or Tanh, ReLU, SiLU, QuickGelu) and its derivative is taken by central differences,
exact enough for an element-wise function. The MLP is found in the graph, never by name; the
result is kept only where its error on the calibration rows it was not fitted on beats the
least-squares refit's (checked on the same rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.state import const
from .ops import linear_view_for
from .ops.elementwise import BROADCASTING, UNARY
from .ops.linear_view import LinearView
from .runtime.capture import capture, subgraph_session

#: rows (inputs and targets) held per MLP for the joint fit: 256 MB; rows past it are not used
MAX_ROW_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Mlp:
    """An up-projection, the element-wise activation after it, and the down-projection it feeds."""

    up: gs.Node
    #: the activation's input (the up-projection's output after its bias) and output (the
    #: down-projection's input)
    pre: str
    hidden: str
    #: the activation's nodes, in graph order
    nodes: tuple[gs.Node, ...]


def find_mlp(graph: gs.Graph, down: gs.Node) -> tuple[Mlp | None, str | None]:
    """The MLP whose down-projection is ``down``, or why there is none that can be fitted jointly:
    the activation must be element-wise (its constants scalars), read nothing but the
    up-projection's output, and feed nothing but ``down``."""
    hidden = down.inputs[0]
    path: dict[int, gs.Node] = {}
    sources, stack, seen = [], [hidden], set()
    while stack:
        t = stack.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        producer = t.inputs[0] if t.inputs else None
        if producer is not None and _pointwise(producer):
            path[id(producer)] = producer
            stack.extend(i for i in producer.inputs if const(i) is None)
        else:
            sources.append(t)
    if not path:
        return None, "no activation between it and a linear layer"
    if len(sources) != 1:
        return None, "its activation reads more than one tensor"
    pre = sources[0]
    up = _up_projection(pre)
    if up is None:
        return None, "its activation's input is not a linear layer's output"
    own = set(path) | {id(down)}
    outputs = {t.name for t in graph.outputs}
    for t in [pre, *(o for n in path.values() for o in n.outputs)]:
        if t.name in outputs or any(id(c) not in own for c in t.outputs):
            return None, f"{t.name} is also read outside the MLP"
    nodes = tuple(n for n in graph.nodes if id(n) in path)
    return Mlp(up, pre.name, hidden.name, nodes), None


def _pointwise(node: gs.Node) -> bool:
    """An element-wise node whose constant inputs are scalars: a function of each element alone."""
    op = node.op if node.domain in (None, "", "ai.onnx") else f"{node.domain}:{node.op}"
    if op not in UNARY and op not in BROADCASTING:
        return False
    values = [const(t) for t in node.inputs if t.name]
    return all(v is None or v.size == 1 for v in values)


def _up_projection(pre: gs.Variable) -> gs.Node | None:
    """The linear layer whose output after its bias is ``pre``."""
    producer = pre.inputs[0] if pre.inputs else None
    if producer is None:
        return None
    candidates = [producer] + [t.inputs[0] for t in producer.inputs if const(t) is None and t.inputs]
    for node in candidates:
        view_cls = linear_view_for(node)
        if view_cls is not None and view_cls(node).supported() is None and \
                view_cls(node).output_after_bias().name == pre.name:
            return node
    return None


class Activation:
    """The graph's activation nodes as a function of an array, with its element-wise derivative."""

    def __init__(self, graph: gs.Graph, mlp: Mlp, threads: int | None = None):
        self.mlp = mlp
        self.session = subgraph_session(graph, list(mlp.nodes), [mlp.pre], [mlp.hidden], threads)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return capture(self.session, {self.mlp.pre: z})[self.mlp.hidden]

    def with_slope(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and slopes at ``z``; the slope by central differences (one run for the three)."""
        step = (1e-2 * np.maximum(np.abs(z), 1.0)).astype(z.dtype)
        h, up, down = np.split(self(np.concatenate([z, z + step, z - step])), 3)
        return h, (up - down) / (2 * step)


@dataclass
class Rows:
    """The rows of one MLP for the joint fit, in two folds: its input, and the target output."""

    inputs: tuple[list, list]
    targets: tuple[list, list]
    bytes: int = 0

    @classmethod
    def empty(cls) -> "Rows":
        return cls(([], []), ([], []))

    def add(self, fold: int, x: np.ndarray, target: np.ndarray) -> None:
        size = x.nbytes + target.nbytes
        if self.bytes + size <= MAX_ROW_BYTES:
            self.inputs[fold].append(x.astype(np.float32, copy=False))
            self.targets[fold].append(target.astype(np.float32, copy=False))
            self.bytes += size

    def fold(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.inputs[i]:
            return None
        return np.concatenate(self.inputs[i]), np.concatenate(self.targets[i])


@dataclass(frozen=True)
class Params:
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def forward(self, x: np.ndarray, act: Activation) -> np.ndarray:
        return act(x @ self.w1 + self.b1) @ self.w2 + self.b2


def relative_error(params: Params, x: np.ndarray, t: np.ndarray, act: Activation,
                   block: int = 8192) -> float:
    """Sum of squared errors over the targets' total sum of squares about their mean."""
    sse = 0.0
    for i in range(0, x.shape[0], block):
        e = params.forward(x[i:i + block], act) - t[i:i + block]
        sse += float(np.einsum("ij,ij->", e, e, dtype=np.float64))
    centred = t - t.mean(axis=0, dtype=np.float64).astype(np.float32)
    sst = float(np.einsum("ij,ij->", centred, centred, dtype=np.float64))
    return sse / sst if sst > 0 else 0.0


@dataclass(frozen=True)
class FitResult:
    params: Params
    start_error: float  # held-out error of the starting (least-squares) parameters
    error: float  # held-out error of ``params``
    #: Adam's step (relative) in each epoch up to the best one: what :func:`replay` repeats
    rates: tuple[float, ...]


#: Adam's step per tensor, relative to the root mean square of the layer's weight
LEARNING_RATE = 2e-3
BATCH_ROWS = 256
MAX_EPOCHS = 30


def fit(start: Params, fit_rows: tuple[np.ndarray, np.ndarray], check_rows: tuple[np.ndarray, np.ndarray],
        act: Activation, seed: int = 0) -> FitResult:
    """Adam on ``fit_rows`` from ``start``; the epoch with the lowest error on ``check_rows`` wins.
    The step halves when an epoch does not improve that error; after three halvings it stops."""
    best = start_error = relative_error(start, *check_rows, act)
    best_params, rates, rate, halvings = start, (), LEARNING_RATE, 0
    trainer = _Adam(start, fit_rows, act, seed)
    for epoch in range(1, MAX_EPOCHS + 1):
        trainer.epoch(rate)
        candidate = trainer.params()
        error = relative_error(candidate, *check_rows, act)
        if np.isfinite(error) and error < best:
            best, best_params, rates = error, candidate, trainer.rates
        else:
            halvings += 1
            if halvings > 3:
                break
            rate /= 2
    return FitResult(best_params, start_error, best, rates)


def replay(start: Params, rows: tuple[np.ndarray, np.ndarray], act: Activation, rates: tuple[float, ...],
           seed: int = 0) -> Params:
    """The epochs :func:`fit` chose on a held-out fold, run on ``rows`` (all of them) from ``start``:
    like a ridge strength chosen on held-out rows, then fitted on all."""
    trainer = _Adam(start, rows, act, seed)
    for rate in rates:
        trainer.epoch(rate)
    return trainer.params()


class _Adam:
    """Adam (mini-batches, float32) on the MLP's squared error over ``rows``."""

    NAMES = ("w1", "b1", "w2", "b2")

    def __init__(self, start: Params, rows: tuple[np.ndarray, np.ndarray], act: Activation, seed: int):
        self.x, self.t = rows
        self.act = act
        self.p = {k: getattr(start, k).astype(np.float32).copy() for k in self.NAMES}
        self.scale = {k: float(np.sqrt(np.mean(np.square(self.p["w1" if k in ("w1", "b1") else "w2"])))) or 1.0
                      for k in self.NAMES}
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.rng = np.random.default_rng(seed)
        self.norm = 1.0 / max(float(np.var(self.t, axis=0).sum()), 1e-30)
        self.step, self.rates = 0, ()

    def epoch(self, rate: float) -> None:
        order = self.rng.permutation(self.x.shape[0])
        for i in range(0, len(order), BATCH_ROWS):
            rows = order[i:i + BATCH_ROWS]
            grads = _gradients(self.p, self.x[rows], self.t[rows], self.act, self.norm / len(rows))
            self.step += 1
            for k in self.NAMES:
                self.m[k] = 0.9 * self.m[k] + 0.1 * grads[k]
                self.v[k] = 0.999 * self.v[k] + 0.001 * grads[k] * grads[k]
                m_hat, v_hat = self.m[k] / (1 - 0.9 ** self.step), self.v[k] / (1 - 0.999 ** self.step)
                self.p[k] -= (rate * self.scale[k]) * m_hat / (np.sqrt(v_hat) + 1e-12)
        self.rates = (*self.rates, rate)

    def params(self) -> Params:
        return Params(*(self.p[k].copy() for k in self.NAMES))


def _gradients(p: dict, x: np.ndarray, t: np.ndarray, act: Activation, norm: float) -> dict:
    """The gradients of ``norm`` times the squared error of the MLP on one mini-batch."""
    z = x @ p["w1"] + p["b1"]
    h, slope = act.with_slope(z)
    dy = (h @ p["w2"] + p["b2"] - t) * np.float32(2 * norm)
    dz = (dy @ p["w2"].T) * slope
    return {"w1": x.T @ dz, "b1": dz.sum(axis=0), "w2": h.T @ dy, "b2": dy.sum(axis=0)}


def refit_down(params: Params, rows: tuple[np.ndarray, np.ndarray], act: Activation, strength: float,
               prior: bool) -> Params:
    """``params`` with the down-projection refit by ridge on ``rows`` at ``strength`` (relative to
    the mean diagonal of the hidden units' Gram matrix; toward its current weights with ``prior``,
    toward zero otherwise): least squares on one fold, the joint fit's fair start there."""
    x, t = rows
    h = act(x @ params.w1 + params.b1).astype(np.float64)
    h = np.hstack([h, np.ones((h.shape[0], 1))])
    g, k = h.T @ h, h.shape[1] - 1
    shift = strength * (float(np.trace(g[:k, :k])) / max(k, 1) or 1.0)
    g[np.arange(k), np.arange(k)] += shift
    b = h.T @ t.astype(np.float64)
    if prior:
        b[:k] += shift * params.w2
    solution = np.linalg.lstsq(g, b, rcond=None)[0] if not np.isfinite(g).all() else np.linalg.solve(g, b)
    return Params(params.w1, params.b1, solution[:-1].astype(np.float32), solution[-1].astype(np.float32))


def params_of(up: LinearView, down: LinearView) -> Params:
    return Params(up.weight().astype(np.float32), np.asarray(up.bias(), np.float32),
                  down.weight().astype(np.float32), np.asarray(down.bias(), np.float32))


def store_params(params: Params, up: LinearView, down: LinearView, graph: gs.Graph) -> str | None:
    """Write ``params`` into both layers; why not (a quantized weight's scales), before any change."""
    why = up.refit_refused(params.w1) or down.refit_refused(params.w2)
    if why:
        return why
    up.set_weight(params.w1)
    up.set_bias(params.b1, graph)
    down.set_weight(params.w2)
    down.set_bias(params.b2, graph)
    return None
