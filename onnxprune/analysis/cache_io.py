"""Which graph inputs and outputs are a decoder's KV cache, and how they pair up.

A decoder exported with a cache reads the keys and values of earlier steps as graph inputs
(*past*) and returns them, grown by the new tokens, as graph outputs (*present*); the caller feeds
each present back as the next step's past. Both carry the key/value-head axis, so pruning K/V
heads changes their shapes. That is allowed (unless ``--keep-io-shapes``) only for a tensor that
is a cache both by its **name** and by its **place in the graph**:

- name: ``past_key_values.N.key`` / ``.value`` (inputs) with ``present.N.key`` / ``.value``
  (outputs), as transformers, optimum and the ONNX Runtime GenAI builder name them;
  ``past_key_N`` / ``past_value_N`` with ``present_key_N`` / ``present_value_N``; and
  ``past.N.key`` / ``past_key_values_N_key`` style variants of the same two words (see
  :data:`PATTERNS`); a *past* name must be a graph input, a *present* name a graph output;
- structure: the tensor is a float graph input (not an initializer) or graph output whose dim on
  the axis tied to the heads is static and equals their channel count (the rule that ties it,
  e.g. the Concat that appends the new keys to the past ones, decides which axis that is);
- pairing: a layer's past and present of the same kind (key or value) lose the same heads (they
  are tied together), and where a graph has both names, both must be tied to heads: a past whose
  present is not (or the reverse) keeps its heads, since the decoding loop would break.

The mechanism is :meth:`analysis.state.State.cache_io`; this module only reads names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: (regex, role): group "layer" is the layer index, group "kind" is key or value
PATTERNS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(p), role) for p, role in (
        (r"^past_key_values[._](?P<layer>\d+)[._](?P<kind>key|value)$", "past"),
        (r"^past[._](?P<layer>\d+)[._](?P<kind>key|value)$", "past"),
        (r"^past_(?P<kind>key|value)_(?P<layer>\d+)$", "past"),
        (r"^present[._](?P<layer>\d+)[._](?P<kind>key|value)$", "present"),
        (r"^present_key_values[._](?P<layer>\d+)[._](?P<kind>key|value)$", "present"),
        (r"^present_(?P<kind>key|value)_(?P<layer>\d+)$", "present"),
    ))


@dataclass(frozen=True)
class CacheName:
    """What a cache tensor's name says: past (input) or present (output), layer, key or value."""

    role: str
    layer: int
    kind: str

    @property
    def partner_role(self) -> str:
        return "present" if self.role == "past" else "past"


def parse(name: str) -> CacheName | None:
    """The cache a tensor name denotes, or None for any other name."""
    for pattern, role in PATTERNS:
        m = pattern.match(name or "")
        if m:
            return CacheName(role, int(m.group("layer")), m.group("kind"))
    return None
