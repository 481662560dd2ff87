"""Tensor element types: the one question several layers ask (is this a float?), answered at the bottom."""

from __future__ import annotations

import numpy as np
import onnx

#: Float types numpy has no dtype for; onnx-graphsurgeon gives their ONNX type number instead.
_ONNX_ONLY_FLOATS = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
                     onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ}


def is_floating(dtype) -> bool:
    """Whether a tensor dtype (a numpy dtype, or an ONNX type number for types numpy lacks) is a float."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        return int(dtype) in _ONNX_ONLY_FLOATS
    try:
        return np.issubdtype(np.dtype(dtype), np.floating) or np.dtype(dtype).name in ("bfloat16",) \
            or np.dtype(dtype).name.startswith("float8")
    except TypeError:
        return False
