"""Typed errors, so the CLI can map each failure to an exit code and a one-line message."""


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""

    exit_code = 1


class BadInputError(OnnxPruneError):
    """The user gave us something we cannot use (file, option, model)."""

    exit_code = 2


class MissingRuntimeError(OnnxPruneError):
    """A command needs ONNX Runtime and neither extra is installed."""

    exit_code = 2


class RewriteError(OnnxPruneError):
    """The rewrite produced a model that failed validation; nothing is written."""

    exit_code = 1
