"""Calibration data: reading it, checking it against the model, and per-channel statistics."""
