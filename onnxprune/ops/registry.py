"""The registry of op specs: everything the pruner knows about one op type, in one record.

An :class:`OpSpec` says how an op maps channels (its rule), how the dims of its output follow
from its inputs (``dim``, ``value``: see :mod:`onnxprune.analysis.provenance`), what it costs
(``flops``, one formula for the metrics and the search's probes), how to time it at other
widths (``probe``) and how reconstruction sees it as a linear layer (``linear_view``). Each op
family registers its specs in one module of :mod:`onnxprune.ops`; everything else asks
:func:`spec_for`. An op without a spec blocks every channel it touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import onnx_graphsurgeon as gs

#: (node, state) -> None: reads the tracks of the node's inputs, sets its outputs' (see analysis.state)
RuleFn = Callable[[gs.Node, Any], None]
#: (walk, node, output axis, output rank, depth) -> the output's dim there (int, name) or None
DimFn = Callable[[Any, gs.Node, int, int, int], "int | str | None"]
#: (walk, node, output tensor, depth) -> the entries of a small integer vector the node computes, or None
ValueFn = Callable[[Any, gs.Node, Any, int], "list | None"]


class Shapes(Protocol):
    """The shapes a FLOP formula reads (dynamic dims as 1); each accessor may answer None."""

    attrs: dict

    def x(self) -> list[int] | None: ...

    def w(self) -> list[int] | None: ...

    def y(self) -> list[int] | None: ...


FlopFn = Callable[[Shapes], int]
#: (attributes, input shapes (None where unknown, ``inference.ABSENT`` for an optional input left
#: out), output count) -> each output's shape (None where it cannot tell); dims are ints, names or
#: None. An output whose element type is not input 0's is given as ``Typed(dims, like=i)`` (input
#: i's type) or ``Typed(dims, elem=onnx.TensorProto.INT32)``.
ShapeFn = Callable[[dict, list, int], list]


@dataclass(frozen=True)
class Typed:
    """An inferred output shape with its element type: input ``like``'s, or ``elem`` (a TensorProto type)."""

    dims: list
    like: int = 0
    elem: int | None = None


@dataclass(frozen=True)
class Rule:
    fn: RuleFn
    #: input indices the rule handles when they carry channels; None means all of them.
    channel_inputs: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ZeroPath:
    """How an op's output becomes all zeros: the inputs that must be zero themselves (``through``)
    and the constant inputs to set to zero (``zeroed``). A weight layer has no ``through`` (its
    zeroed weight and bias make the output zero whatever comes in). Block removal's oracle zeroes
    a residual branch's output this way, from the residual Add back to its output projection."""

    through: tuple[int, ...] = ()
    zeroed: tuple[int, ...] = ()


#: (node) -> the node's ZeroPath, or None where zeroing its inputs does not zero its output
ZeroFn = Callable[[gs.Node], "ZeroPath | None"]


@dataclass(frozen=True)
class Join:
    """A node that adds a residual branch into the stream (inputs ``inputs``): a block whose
    branch can be removed, or, with ``refuse``, one whose branch is kept and why."""

    inputs: tuple[int, int] = (0, 1)
    refuse: str | None = None
    #: constant inputs added with the branch (a fused bias): zeroed with it, gone with it
    bias: tuple[int, ...] = ()
    #: the output that is the sum itself, where the node also computes from it (ONNX Runtime's
    #: ``input_skip_bias_sum``): the stream goes on there; the node's other outputs are functions
    #: of that sum, so what reads them depends on the stream
    stream_output: int | None = None
    #: (node, graph output names) -> why its branch cannot go (an output the removal cannot
    #: keep), or None
    check: Callable[[gs.Node, set], str | None] | None = None
    #: (graph, node, stream input) -> rewrites a fused join into what it computes without the
    #: branch; None: the join's output becomes the stream itself (an Add)
    remove: Callable[[gs.Graph, gs.Node, int], None] | None = None


@dataclass(frozen=True)
class OpSpec:
    """What the pruner knows about one op type; every part is optional."""

    rule: Rule | None = None
    #: its constant input 1 is a weight that creates channels and consumes them
    weight_layer: bool = False
    dim: DimFn | None = None
    value: ValueFn | None = None
    flops: FlopFn | None = None
    #: a :class:`onnxprune.ops.probe.Probe`: the layer at other widths, as a one-node model
    probe: Any = None
    #: () -> the reconstruction's LinearView class for this op (imported when asked for)
    linear_view: Callable[[], type] | None = None
    #: inputs holding the layer's parameters (weights, biases, normalisation parameters):
    #: constant folding materialises them even where that makes them larger than what computes them
    parameter_inputs: tuple[int, ...] | None = None
    #: it computes on integer (quantized) weights
    integer_layer: bool = False
    #: ONNX Runtime implements it in the default (ai.onnx) domain, which ONNX itself does not
    #: define (the GenAI model builder writes such nodes): loading accepts it instead of refusing
    #: an operator the imported opset lacks
    runtime_extension: bool = False
    #: output shapes of an op ONNX's shape inference does not know (ONNX Runtime's fused ops):
    #: without them every tensor after the op has an unknown shape and its layers cannot be pruned
    infer: ShapeFn | None = None
    #: (node, input index) -> the float values a packed (quantized) parameter input stands for, in
    #: that input's layout with the packing axis replaced by the values (MatMulNBits' dequantized
    #: weight), or None: what scores read instead of the packed integers
    weight_values: Callable[[gs.Node, int], Any] | None = None
    #: (node) -> {input index: parameters it holds} for packed integer inputs, which the parameter
    #: count (floating-point constants' elements) would otherwise leave out
    packed_params: Callable[[gs.Node], dict] | None = None
    #: (input index, axis) of a packed weight -> the (input index, axis) whose entries set to zero
    #: zero its weights there (MatMulNBits: the scales), for the oracle's zeroed model
    zero_through: Callable[[int, int], tuple] | None = None
    #: (node) -> (float values, codec) for a node of constants that stores a float constant in
    #: another form (DequantizeLinear), or None: normalize folds it into the float constant with
    #: the codec attached (``codec.sliced``, ``codec.snap``, ``codec.computation``: see ops/quantized.py)
    decode: Callable[[gs.Node], Any] | None = None
    #: (node) -> the integer constant a node of constants encodes for readers that decode it
    #: (QuantizeLinear of a float constant read by DequantizeLinear, as ONNX Runtime's quantizer
    #: writes constant inputs of quantized ops), or None: normalize evaluates it (never folded
    #: otherwise) where every reader has a ``decode``, so the pair becomes one float constant with
    #: its codec, as a stored integer weight does
    encode: Callable[[gs.Node], Any] | None = None
    #: how the output is made zero (see :class:`ZeroPath`): the block oracle's walk back from a
    #: residual Add to the branch's output projection
    zero_out: ZeroFn | None = None
    #: it adds a residual branch into the stream (see :class:`Join`): residual blocks end here
    join: Join | None = None


#: op specs by key: the op type, or ``"domain:Op"`` for non-default domains
REGISTRY: dict[str, OpSpec] = {}


def register(*op_types: str, **parts) -> None:
    """Add parts to the specs of ``op_types`` (a family module may register rule and dims apart)."""
    for op in op_types:
        old = REGISTRY.get(op, OpSpec())
        clash = [k for k, v in parts.items() if v is not None and getattr(old, k) not in (None, False)]
        if clash:
            raise ValueError(f"{op}: {', '.join(clash)} registered twice")
        REGISTRY[op] = OpSpec(**{**old.__dict__, **{k: v for k, v in parts.items() if v is not None}})


def rule(*op_types: str, channel_inputs: tuple[int, ...] | None = None) -> Callable[[RuleFn], RuleFn]:
    """Decorator: ``fn`` is the channel rule of ``op_types``."""

    def add(fn: RuleFn) -> RuleFn:
        register(*op_types, rule=Rule(fn, channel_inputs))
        return fn

    return add


def dims(*op_types: str) -> Callable[[DimFn], DimFn]:
    """Decorator: ``fn`` derives an output dim of ``op_types`` from their inputs."""

    def add(fn: DimFn) -> DimFn:
        register(*op_types, dim=fn)
        return fn

    return add


def values(*op_types: str) -> Callable[[ValueFn], ValueFn]:
    """Decorator: ``fn`` computes the small integer vectors ``op_types`` output (shape arithmetic)."""

    def add(fn: ValueFn) -> ValueFn:
        register(*op_types, value=fn)
        return fn

    return add


def spec_key(node: gs.Node) -> str:
    return node.op if node.domain in (None, "", "ai.onnx") else f"{node.domain}:{node.op}"


_EMPTY = OpSpec()


def spec_for(node: gs.Node) -> OpSpec:
    """The spec of ``node``'s op (an empty one for ops the pruner does not know)."""
    return REGISTRY.get(spec_key(node), _EMPTY)


def rule_for(node: gs.Node) -> Rule | None:
    return spec_for(node).rule


def weight_layer_types() -> tuple[str, ...]:
    """Op types whose constant weight (input 1) creates and consumes channels, in registry order."""
    return tuple(k for k, s in REGISTRY.items() if s.weight_layer)


def quantized_weight(node: gs.Node) -> bool:
    """A weight layer whose weight still comes out of DequantizeLinear after normalize (a form it
    does not fold: int4, float8, parameters computed at run time): it is left as it is."""
    return spec_for(node).weight_layer and len(node.inputs) > 1 and \
        any(p.op == "DequantizeLinear" for p in node.inputs[1].inputs)


def parameter_inputs(node: gs.Node) -> tuple[int, ...]:
    """The inputs of ``node`` that hold its parameters (see :attr:`OpSpec.parameter_inputs`)."""
    return spec_for(node).parameter_inputs or ()


def integer_layer(node: gs.Node) -> bool:
    """Whether ``node`` computes on integer (quantized) weights (see :attr:`OpSpec.integer_layer`)."""
    return spec_for(node).integer_layer


def runtime_extensions() -> frozenset[str]:
    """Default-domain op types that ONNX Runtime implements beyond ONNX (see :attr:`OpSpec.runtime_extension`)."""
    return frozenset(k for k, s in REGISTRY.items() if s.runtime_extension)


def decoder(node: gs.Node) -> Callable[[gs.Node], Any] | None:
    """How to fold ``node`` (all inputs constant) into the float constant it stores (see :attr:`OpSpec.decode`)."""
    return spec_for(node).decode


def encoder(node: gs.Node) -> Callable[[gs.Node], Any] | None:
    """How to evaluate ``node`` when it only encodes a constant its readers decode (see
    :attr:`OpSpec.encode`); None otherwise."""
    readers = [r for o in node.outputs for r in o.outputs]
    if not readers or not all(decoder(r) is not None for r in readers):
        return None
    return spec_for(node).encode


def linear_view_for(node: gs.Node) -> type | None:
    """The reconstruction's view of ``node`` as a linear layer, or None when it has none."""
    load = spec_for(node).linear_view
    return None if load is None else load()
