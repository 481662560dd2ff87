"""What the user asks for: ``--target-latency 50ms``, ``--target-flops 0.5``, ``--target-params 10M``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadInputError

_TIME_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_COUNT_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


@dataclass(frozen=True)
class Target:
    """A budget: ``kind`` is latency (``value`` in ms), flops or params.

    For flops and params ``value`` is absolute, or a fraction of the original when
    ``fraction`` is set (then ``value`` is resolved by :meth:`absolute`).
    """

    kind: str
    value: float
    fraction: bool = False

    def absolute(self, original: float) -> float:
        return self.value * original if self.fraction else self.value

    def describe(self) -> str:
        if self.kind == "latency":
            return f"latency {self.value:g} ms"
        if self.fraction:
            return f"{self.kind} {self.value:.3g} of the original"
        return f"{self.kind} {self.value:.4g}"


def parse_latency(text: str | float) -> float:
    """``50ms``, ``50``, ``0.05s``, ``500us`` -> milliseconds (a bare number is ms)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(us|µs|ms|s)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise BadInputError(f"--target-latency '{text}': expected a duration such as 50ms, 0.05s or 500us")
        value = float(m.group(1)) * _TIME_UNITS[(m.group(2) or "ms").lower()]
    if not value > 0:
        raise BadInputError(f"--target-latency must be positive, got {text}")
    return value


def parse_amount(text: str | float, option: str) -> tuple[float, bool]:
    """``0.5`` or ``50%`` -> a fraction of the original; ``2G``, ``1.5e9``, ``10M`` -> absolute.

    Values up to 1 are fractions, larger ones are absolute counts.
    """
    if isinstance(text, (int, float)):
        value, percent, suffix = float(text), False, ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(%|[kmgt])?\s*", str(text), re.IGNORECASE)
        if not m:
            raise BadInputError(f"{option} '{text}': expected a fraction (0.5, 50%) or a count (2G, 10M, 1.5e9)")
        value, percent, suffix = float(m.group(1)), m.group(2) == "%", (m.group(2) or "").lower()
    if percent:
        value /= 100.0
    elif suffix:
        value *= _COUNT_SUFFIXES[suffix]
    if not value > 0:
        raise BadInputError(f"{option} must be positive, got {text}")
    fraction = percent or (not suffix and value <= 1.0)
    return value, fraction


def parse_target(latency: str | float | None = None, flops: str | float | None = None,
                 params: str | float | None = None) -> Target | None:
    """At most one target; None when none is given."""
    given = [(k, v) for k, v in (("latency", latency), ("flops", flops), ("params", params)) if v is not None]
    if len(given) > 1:
        raise BadInputError("give one target: " + " and ".join(f"--target-{k}" for k, _ in given) + " together")
    if not given:
        return None
    kind, text = given[0]
    if kind == "latency":
        return Target("latency", parse_latency(text))
    value, fraction = parse_amount(text, f"--target-{kind}")
    return Target(kind, value, fraction)
