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


class PassError(OnnxPruneError):
    """A pass failed for a reason that is not the user's input (a bug, or a pass of one's own);
    ``pass_name`` says which, and the original exception is its ``__cause__``."""

    exit_code = 1

    def __init__(self, pass_name: str, message: str):
        super().__init__(message)
        self.pass_name = pass_name


class PipelineError(PassError):
    """A pipeline was composed without a prerequisite of one of its passes; raised before any runs.
    ``missing`` names the context fields no earlier pass provides."""

    def __init__(self, pass_name: str, missing: tuple[str, ...], message: str):
        super().__init__(pass_name, message)
        self.missing = missing
