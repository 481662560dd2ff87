"""The joint refit of an MLP's two projections through their activation (``--reconstruct nonlinear``).

Least squares refits a down-projection alone, on the hidden units the pruning kept: what those
units cannot express stays as error (MiniLM's FFNs at half their units keep a relative output
error of 4 to 7% after the refit). Here the up-projection's kept units (weights and bias; both of
a SwiGLU's up-projections) and the down-projection are fitted together through the activation between them, by gradient descent
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

#: rows (inputs and targets) held for the joint fits of one reconstruction wave, all its MLPs together:
#: 256 MB; rows past it are not used
MAX_ROW_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Mlp:
    """Up-projections, the element-wise activation after them, and the down-projection it feeds:
    one up-projection (GELU, ReLU, SiLU MLPs) or several reading the same input (SwiGLU:
    ``silu(gate(x)) * up(x)``)."""

    ups: tuple[gs.Node, ...]
    #: the activation's inputs (each up-projection's output after its bias), in the same order
    pres: tuple[str, ...]
    #: the activation's output (the down-projection's input)
    hidden: str
    #: the activation's nodes, in graph order
    nodes: tuple[gs.Node, ...]


def find_mlp(graph: gs.Graph, down: gs.Node) -> tuple[Mlp | None, str | None]:
    """The MLP whose down-projection is ``down``, or why there is none that can be fitted jointly:
    the activation must be element-wise (its constants scalars), read nothing but the
    up-projections' outputs (all of one input), and feed nothing but ``down``."""
    hidden = down.inputs[0]
    path: dict[int, gs.Node] = {}
    sources, stack, seen = {}, [hidden], set()
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
            sources[t.name] = t
    if not path:
        return None, "its input is not an element-wise activation (of a linear layer)"
    ups = {name: _up_projection(t) for name, t in sources.items()}
    if any(up is None for up in ups.values()):
        return None, "its activation reads a tensor that is not a linear layer's output"
    if len({up.inputs[0].name for up in ups.values()}) != 1:
        return None, "its up-projections read different inputs"
    own = set(path) | {id(down)}
    outputs = {t.name for t in graph.outputs}
    for t in [*sources.values(), *(o for n in path.values() for o in n.outputs)]:
        if t.name in outputs or any(id(c) not in own for c in t.outputs):
            return None, f"{t.name} is also read outside the MLP"
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    pres = tuple(sorted(ups, key=lambda name: order[id(ups[name])]))
    nodes = tuple(n for n in graph.nodes if id(n) in path)
    return Mlp(tuple(ups[p] for p in pres), pres, hidden.name, nodes), None


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
    """The graph's activation nodes as a function of arrays (one per up-projection), with its
    element-wise partial derivatives."""

    def __init__(self, graph: gs.Graph, mlp: Mlp, threads: int | None = None):
        self.mlp = mlp
        self.session = subgraph_session(graph, list(mlp.nodes), list(mlp.pres), [mlp.hidden], threads)

    def __call__(self, zs: list[np.ndarray]) -> np.ndarray:
        """The activation of rows ``zs``; shaped like them (a scalar constant of a higher rank in
        the graph only adds leading dimensions of 1)."""
        out = capture(self.session, dict(zip(self.mlp.pres, zs)))[self.mlp.hidden]
        return out.reshape(zs[0].shape)

    def with_slopes(self, zs: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Values and slopes (one per input) at ``zs``, the slopes by central differences, in one
        run: the values, then each input moved up and down by a step, the others kept."""
        steps = [(1e-2 * np.maximum(np.abs(z), 1.0)).astype(z.dtype) for z in zs]
        n = len(zs)
        feeds = [np.concatenate([z] + [z + steps[j] if i == j else z for i in range(n)]
                                + [z - steps[j] if i == j else z for i in range(n)]) for j, z in enumerate(zs)]
        blocks = np.split(self(feeds), 1 + 2 * n)
        return blocks[0], [(blocks[1 + i] - blocks[1 + n + i]) / (2 * steps[i]) for i in range(n)]


@dataclass
class Rows:
    """The rows of one MLP for the joint fit, in two folds: its input, and the target output.
    Rows past ``limit`` bytes are not kept (the first batches' are)."""

    inputs: tuple[list, list]
    targets: tuple[list, list]
    limit: int = MAX_ROW_BYTES
    bytes: int = 0
    dropped: int = 0  # rows not kept

    @classmethod
    def empty(cls, limit: int = MAX_ROW_BYTES) -> "Rows":
        return cls(([], []), ([], []), limit)

    def add(self, fold: int, x: np.ndarray, target: np.ndarray) -> None:
        size = x.nbytes + target.nbytes
        if self.bytes + size <= self.limit:
            self.inputs[fold].append(x.astype(np.float32, copy=False))
            self.targets[fold].append(target.astype(np.float32, copy=False))
            self.bytes += size
        else:
            self.dropped += x.shape[0]

    def fold(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.inputs[i]:
            return None
        return np.concatenate(self.inputs[i]), np.concatenate(self.targets[i])


@dataclass(frozen=True)
class Params:
    """The MLP's parameters: each up-projection's weight and bias, the down-projection's."""

    w1: tuple[np.ndarray, ...]
    b1: tuple[np.ndarray, ...]
    w2: np.ndarray
    b2: np.ndarray

    def hidden(self, x: np.ndarray, act: Activation) -> np.ndarray:
        return act([x @ w + b for w, b in zip(self.w1, self.b1)])

    def forward(self, x: np.ndarray, act: Activation) -> np.ndarray:
        return self.hidden(x, act) @ self.w2 + self.b2

    def named(self) -> dict[str, np.ndarray]:
        """Float32 copies by name (``w1.0``, ``b1.0``, ..., ``w2``, ``b2``): what Adam updates."""
        arrays = {f"{k}.{i}": v for k in ("w1", "b1") for i, v in enumerate(getattr(self, k))}
        arrays.update(w2=self.w2, b2=self.b2)
        return {k: np.array(v, np.float32) for k, v in arrays.items()}

    @classmethod
    def of(cls, named: dict[str, np.ndarray]) -> "Params":
        ups = range(sum(k.startswith("w1.") for k in named))
        return cls(tuple(named[f"w1.{i}"].copy() for i in ups), tuple(named[f"b1.{i}"].copy() for i in ups),
                   named["w2"].copy(), named["b2"].copy())


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
    for _ in range(MAX_EPOCHS):
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

    def __init__(self, start: Params, rows: tuple[np.ndarray, np.ndarray], act: Activation, seed: int):
        self.x, self.t = rows
        self.act = act
        self.p = start.named()
        # each tensor's step is relative to its layer's weights: the up-projections' or the down's
        self.scale = {k: float(np.sqrt(np.mean(np.square(self.p["w2" if k in ("w2", "b2") else "w1." + k[3:]]))))
                      or 1.0 for k in self.p}
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
            for k, g in grads.items():
                self.m[k] = 0.9 * self.m[k] + 0.1 * g
                self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
                m_hat, v_hat = self.m[k] / (1 - 0.9 ** self.step), self.v[k] / (1 - 0.999 ** self.step)
                self.p[k] -= (rate * self.scale[k]) * m_hat / (np.sqrt(v_hat) + 1e-12)
        self.rates = (*self.rates, rate)

    def params(self) -> Params:
        return Params.of(self.p)


def _gradients(p: dict, x: np.ndarray, t: np.ndarray, act: Activation, norm: float) -> dict:
    """The gradients of ``norm`` times the squared error of the MLP on one mini-batch."""
    ups = range(sum(k.startswith("w1.") for k in p))
    h, slopes = act.with_slopes([x @ p[f"w1.{i}"] + p[f"b1.{i}"] for i in ups])
    dy = (h @ p["w2"] + p["b2"] - t) * np.float32(2 * norm)
    dh = dy @ p["w2"].T
    grads = {"w2": h.T @ dy, "b2": dy.sum(axis=0)}
    for i in ups:
        dz = dh * slopes[i]
        grads[f"w1.{i}"], grads[f"b1.{i}"] = x.T @ dz, dz.sum(axis=0)
    return grads


def hidden_products(params: Params, rows: tuple[np.ndarray, np.ndarray], act: Activation,
                    block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``[H,1]ᵀ[H,1]`` and ``[H,1]ᵀT`` over ``rows`` (float64 sums over blocks of rows), ``H`` the
    hidden units at ``params``' up-projections: the down-projection's least-squares statistics,
    from which the refit solves it as it does any layer."""
    x, t = rows
    k = params.w2.shape[0]
    g, b = np.zeros((k + 1, k + 1)), np.zeros((k + 1, t.shape[1]))
    for i in range(0, x.shape[0], block):
        h = np.hstack([params.hidden(x[i:i + block], act), np.ones((min(block, x.shape[0] - i), 1), np.float32)])
        g += h.T.astype(np.float64) @ h.astype(np.float64)
        b += h.T.astype(np.float64) @ t[i:i + block].astype(np.float64)
    return g, b


def finite(params: Params) -> bool:
    return all(np.isfinite(a).all() for a in (*params.w1, *params.b1, params.w2, params.b2))


def params_of(ups: tuple[LinearView, ...], down: LinearView) -> Params:
    return Params(tuple(u.weight().astype(np.float32) for u in ups), tuple(np.asarray(u.bias(), np.float32) for u in ups),
                  down.weight().astype(np.float32), np.asarray(down.bias(), np.float32))


def store_params(params: Params, ups: tuple[LinearView, ...], down: LinearView, graph: gs.Graph) -> str | None:
    """Write ``params`` into the layers; why not (a quantized weight's scales), before any change."""
    why = next((w for w in (*(u.refit_refused(w1) for u, w1 in zip(ups, params.w1)), down.refit_refused(params.w2))
                if w), None)
    if why:
        return why
    for up, w1, b1 in zip(ups, params.w1, params.b1):
        up.set_weight(w1)
        up.set_bias(b1, graph)
    down.set_weight(params.w2)
    down.set_bias(params.b2, graph)
    return None
