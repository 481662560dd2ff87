"""Op knowledge, one module per op family, all reachable through one registry.

``spec_for(node)`` gives an op's :class:`OpSpec`: its channel rule, how its output dims follow
from its inputs, its FLOPs, its latency probe and its linear view for reconstruction. Importing
this package registers every family; see docs/architecture.md for how to add an op.
"""

from .registry import REGISTRY, OpSpec, Rule, decoder, integer_layer, linear_view_for, parameter_inputs, quantized_weight, \
    rule_for, spec_for, spec_key, weight_layer_types
from . import attention, conv, grouped_attention, nbits, elementwise, matmul, normalization, pooling, quantized, reduce, reshape, shape  # noqa: F401,E402,I001

#: op types whose constant weight (input 1) creates channels and consumes them
WEIGHT_LAYERS = weight_layer_types()

__all__ = ["REGISTRY", "OpSpec", "Rule", "WEIGHT_LAYERS", "decoder", "integer_layer", "linear_view_for", "parameter_inputs",
           "quantized_weight", "rule_for", "spec_for", "spec_key", "weight_layer_types"]
