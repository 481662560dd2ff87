"""ONNX Runtime: sessions on a chosen execution provider, inputs, and interleaved timing.

The only package modules that import onnxruntime; analysis and rewrite never need it.
"""
