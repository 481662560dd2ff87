"""The op rules moved to :mod:`onnxprune.ops` (one module per op family, one registry); these
names stay importable from here for code written against the old module."""

from ..ops import WEIGHT_LAYERS, quantized_weight
from ..ops import spec_key as rule_key

__all__ = ["WEIGHT_LAYERS", "quantized_weight", "rule_key"]
