"""What a pass is, and how a list of them is checked before it runs.

A pass declares the context fields it reads (``requires``) and those it fills (``provides``), as
onnx-ir's passes declare pre- and postconditions: a pipeline missing a prerequisite then fails
before anything runs, naming the pass and the missing field, instead of an ``AttributeError``
halfway through.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from ..context import PruningContext
from ..errors import OnnxPruneError, PassError, PipelineError

#: What a context holds before any pass has run.
INITIAL_FIELDS = ("model", "options", "report", "warnings")


class Pass:
    """One step of the pipeline. Subclasses set ``name``, ``requires``/``provides`` (names of
    ``PruningContext`` fields) and implement ``run``."""

    name = "pass"
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    def run(self, ctx: PruningContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PassLike(Protocol):
    """Anything with a ``name`` and ``run(ctx)``; ``requires``/``provides`` are optional."""

    name: str

    def run(self, ctx: PruningContext) -> None: ...


def pass_name(p: PassLike) -> str:
    return str(getattr(p, "name", type(p).__name__))


def check_pipeline(passes: Iterable[PassLike], providers: dict[str, str] | None = None) -> None:
    """Raise ``PipelineError`` at the first pass that requires a field no earlier pass provides.

    ``providers`` maps a field to the built-in pass that provides it, for the message.
    """
    filled = set(INITIAL_FIELDS)
    for p in passes:
        missing = tuple(f for f in _names(getattr(p, "requires", ())) if f not in filled)
        if missing:
            hints = [f"'{f}' (provided by {providers[f]})" if providers and f in providers else f"'{f}'"
                     for f in missing]
            raise PipelineError(pass_name(p), missing,
                                f"pass '{pass_name(p)}' needs {', '.join(hints)}, which no earlier pass provides; "
                                "add that pass before it (a pass of your own declares what it fills in "
                                "`provides`)")
        filled.update(_names(getattr(p, "provides", ())))


def _names(fields) -> tuple[str, ...]:
    """A declaration as a tuple of names (a lone string is one name, not its letters)."""
    return (fields,) if isinstance(fields, str) else tuple(fields or ())


def run_pass(p: PassLike, ctx: PruningContext) -> None:
    """Run one pass. An onnxprune error keeps its type (and exit code) and is told which pass
    raised it; any other exception becomes a ``PassError`` naming the pass, caused by it."""
    name = pass_name(p)
    try:
        p.run(ctx)
    except OnnxPruneError as exc:
        if getattr(exc, "pass_name", None) is None:
            exc.pass_name = name
        raise
    except Exception as exc:
        raise PassError(name, f"internal error in pass '{name}': {type(exc).__name__}: {exc}") from exc
