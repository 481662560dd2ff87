"""Layers that compute on integer (quantized) weights: ONNX's QOperator ops and ONNX Runtime's
quantized contrib ops. The analysis has no channel rule for them yet, so they block the channels
they touch; marking them lets ``analyze`` say that a model has nothing prunable because its
weights are quantized."""

from .registry import register

register("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "com.microsoft:QGemm",
         "com.microsoft:QAttention", "com.microsoft:DynamicQuantizeMatMul", "com.microsoft:MatMulNBits",
         "com.microsoft:MatMulIntegerToFloat", "com.microsoft:QOrderedMatMul", integer_layer=True)
