"""Config files beside a model that fix one head count and one MLP width for all its layers.

A model folder made by optimum or transformers (``config.json``) or by the ONNX Runtime GenAI
builder (``genai_config.json``) says how many attention heads, K/V heads and MLP units every
layer has; the runtimes that load the folder size their caches and buffers from it. When such a
file sits beside the input model, pruning must keep it true:

- **uniform counts**: every layer keeps the same number of K/V heads (with their query heads)
  and, where the file fixes it, of MLP units. :func:`tie_groups` finds the groups the file speaks
  of (one head group of ``num_key_value_heads`` per layer; one channel group of
  ``intermediate_size`` per layer) and ties each kind together (``Analysis.ties``): the
  selection keeps in every tied group the smallest count any of them would keep, each group its
  own best-scored channels (the same rank cut in every layer; ``selection.select_by_counts``),
  and a group kept whole keeps its whole kind whole. Where the groups do not match the file
  (another count, another number of layers) or are of another width (the hidden size, which the
  file also fixes), they are kept whole, with the reason.
- **the updated file**: written beside the output with the new counts (``head_dim`` kept, and
  written where the file only implied it; ``hidden_size`` unchanged).

- **the folder**: a kind whose file names the model (GenAI's ``model.decoder.filename``) gets
  that name updated to the output's, and its companion files (tokenizer files) are copied
  beside the output; such a folder may be given as MODEL (:func:`model_in_folder`), the output
  then being a folder too (:func:`folder_output`).

One :class:`ConfigKind` per file kind reads the counts (:meth:`ConfigKind.counts`) and writes
them back (:meth:`ConfigKind.update`); :data:`KINDS` lists them by file name. Adding a kind is a
subclass and one entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .analysis import Analysis
from .errors import BadInputError


@dataclass(frozen=True)
class LayerCounts:
    """What a config fixes for every layer (None: the file does not say)."""

    layers: int
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    intermediate: int | None = None


@dataclass
class ModelConfig:
    """One config file beside the input: its kind, path, parsed content and counts."""

    kind: ConfigKind
    path: Path
    data: dict
    counts: LayerCounts
    #: the counts after pruning (set by :func:`pruned_counts`)
    pruned: LayerCounts | None = None
    #: the name of the file it is written to beside the output
    file_name: str = field(default="")
    #: the output model's file name, where the file names the model (set by :func:`config_outputs`)
    model_file: str | None = None

    def updated(self) -> dict:
        data = self.kind.update(self.data, self.counts, self.pruned or self.counts)
        return data if self.model_file is None else self.kind.with_model_file(data, self.model_file)

    def notes(self) -> list[str]:
        """What the reader of this kind of file should know about the update (warnings)."""
        return self.kind.notes(self.data, self.counts, self.pruned or self.counts)

    def changes(self) -> dict[str, list[int]]:
        """{key: [before, after]} of the values the update changes or adds."""
        before, after = _flat(self.data), _flat(self.updated())
        return {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}


class ConfigKind:
    """How one kind of config file holds the per-layer counts."""

    file_name = ""
    #: files beside it that the folder's runtime also reads (tokenizer files), copied unchanged
    companions: tuple[str, ...] = ()

    def model_file(self, data: dict) -> str | None:
        """The model file the config names (None: it names none)."""
        return None

    def with_model_file(self, data: dict, name: str) -> dict:
        """``data`` naming ``name`` as its model file (unchanged for a kind that names none)."""
        return data

    def counts(self, data: dict) -> LayerCounts | None:  # pragma: no cover
        raise NotImplementedError

    def update(self, data: dict, before: LayerCounts, after: LayerCounts) -> dict:  # pragma: no cover
        raise NotImplementedError

    def notes(self, data: dict, before: LayerCounts, after: LayerCounts) -> list[str]:
        return []


class TransformersConfig(ConfigKind):
    """transformers/optimum ``config.json``: ``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads`` (absent: as many as the query heads), ``head_dim`` (absent:
    ``hidden_size / num_attention_heads``), ``intermediate_size``."""

    file_name = "config.json"

    def counts(self, data: dict) -> LayerCounts | None:
        layers, heads = data.get("num_hidden_layers"), data.get("num_attention_heads")
        if not _positive(layers) or not _positive(heads):
            return None
        kv = data.get("num_key_value_heads") or heads
        head_dim = data.get("head_dim") or (data.get("hidden_size", 0) // heads if _positive(data.get("hidden_size")) else None)
        intermediate = data.get("intermediate_size")
        return LayerCounts(layers, heads, kv if _positive(kv) else None, head_dim,
                           intermediate if _positive(intermediate) else None)

    def update(self, data: dict, before: LayerCounts, after: LayerCounts) -> dict:
        out = dict(data)
        if after.heads != before.heads or after.kv_heads != before.kv_heads:
            out["num_attention_heads"], out["num_key_value_heads"] = after.heads, after.kv_heads
            if "head_dim" not in out and before.head_dim:  # the default would change with the head count
                out["head_dim"] = before.head_dim
        if after.intermediate != before.intermediate:
            out["intermediate_size"] = after.intermediate
        return out

    #: model types for which optimum's ORTModelForCausalLM reads ``head_dim`` (optimum-onnx 0.1,
    #: ``modeling_decoder.py``); for the others it takes ``hidden_size // num_attention_heads``
    OPTIMUM_READS_HEAD_DIM = ("gemma", "gemma3_text", "gpt_oss", "nemotron")

    def notes(self, data: dict, before: LayerCounts, after: LayerCounts) -> list[str]:
        hidden = data.get("hidden_size")
        if after.heads == before.heads or not _positive(hidden) or not after.heads or \
                data.get("model_type") in self.OPTIMUM_READS_HEAD_DIM or hidden // after.heads == before.head_dim:
            return []
        return [f"config.json: with {after.heads} attention heads, optimum's ORTModelForCausalLM sizes the first "
                f"step's empty cache from hidden_size / num_attention_heads = {hidden // after.heads}, not head_dim "
                f"{before.head_dim}, for model type '{data.get('model_type')}': its generate() fails on this folder "
                "(ONNX Runtime and transformers go by head_dim; --prune channels keeps the heads)"]


class GenAIConfig(ConfigKind):
    """ONNX Runtime GenAI ``genai_config.json`` (the GenAI model builder's):
    ``model.decoder.num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
    ``head_size``; it fixes no MLP width. GenAI sizes the KV cache of every layer from it, and
    loads ``model.decoder.filename`` from the folder with the tokenizer files beside it."""

    file_name = "genai_config.json"
    companions = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")

    @staticmethod
    def _decoder(data: dict) -> dict:
        model = data.get("model")
        decoder = model.get("decoder") if isinstance(model, dict) else None
        return decoder if isinstance(decoder, dict) else {}

    def counts(self, data: dict) -> LayerCounts | None:
        d = self._decoder(data)
        layers, heads = d.get("num_hidden_layers"), d.get("num_attention_heads")
        if not _positive(layers) or not _positive(heads):
            return None
        kv = d.get("num_key_value_heads") or heads
        head = d.get("head_size")
        return LayerCounts(layers, heads, kv if _positive(kv) else None, head if _positive(head) else None, None)

    def update(self, data: dict, before: LayerCounts, after: LayerCounts) -> dict:
        out = json.loads(json.dumps(data))  # a deep copy
        d = self._decoder(out)
        if after.heads != before.heads or after.kv_heads != before.kv_heads:
            d["num_attention_heads"], d["num_key_value_heads"] = after.heads, after.kv_heads
        return out

    def model_file(self, data: dict) -> str | None:
        name = self._decoder(data).get("filename")
        return name if isinstance(name, str) and name else None

    def with_model_file(self, data: dict, name: str) -> dict:
        if self.model_file(data) is None or self.model_file(data) == name:
            return data
        out = json.loads(json.dumps(data))
        self._decoder(out)["filename"] = name
        return out


#: the config kinds by file name
KINDS: dict[str, ConfigKind] = {k.file_name: k for k in (TransformersConfig(), GenAIConfig())}


def model_in_folder(path: str | os.PathLike) -> Path | None:
    """The model a model folder given as MODEL holds: the file its config names
    (``genai_config.json``'s ``model.decoder.filename``, as ``og.Model(folder)`` loads it); None
    for a path that is not such a folder (a plain directory stays an error of its own). A config
    naming a file that is not in the folder is bad input."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    for config in find_configs(folder / "model.onnx"):
        name = config.kind.model_file(config.data)
        if name is None:
            continue
        if Path(name).name != name or not (folder / name).is_file():
            raise BadInputError(f"{config.path}: names model file '{name}', which is not in {folder}")
        return folder / name
    return None


def folder_output(model_folder: str | os.PathLike, model_file: Path, output: str | os.PathLike | None) -> Path:
    """Where the pruned model of a folder given as MODEL goes: under its own file name in the
    output folder (``output``, default ``MODEL.pruned`` beside the input folder)."""
    folder = Path(model_folder)
    out_folder = Path(output) if output is not None else folder.with_name(folder.name + ".pruned")
    return out_folder / model_file.name


def find_configs(model_path: str | os.PathLike | None) -> list[ModelConfig]:
    """The config files beside ``model_path`` that fix per-layer counts (none for a model given
    as a proto). A file that is not JSON, or not an object, is bad input; one without the
    counts (another model family's config) is not used."""
    if model_path is None:
        return []
    folder = Path(model_path).parent
    found = []
    for name, kind in KINDS.items():
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise BadInputError(f"{path}: not a readable JSON file ({type(exc).__name__}: {exc})") from exc
        if not isinstance(data, dict):
            raise BadInputError(f"{path}: not a JSON object")
        counts = kind.counts(data)
        if counts is not None:
            found.append(ModelConfig(kind, path, data, counts, file_name=name))
    return found


def tie_groups(analysis: Analysis, configs: list[ModelConfig]) -> None:
    """Tie the groups each config fixes (``analysis.ties``), and keep whole those it fixes
    otherwise or that do not match it (their reasons say which file and why)."""
    for config in configs:
        c, name = config.counts, config.file_name
        heads = [g for g in analysis.prunable_groups if g.kind == "heads"]
        channels = [g for g in analysis.prunable_groups if g.kind == "channels"]
        mlp = [g for g in channels if c.intermediate is not None and g.channels == c.intermediate]
        for kind, groups, size, label in (("heads", heads, c.kv_heads, "K/V heads"),
                                          ("channels", mlp, c.intermediate, "MLP units")):
            if not groups:
                continue
            if size is None or len(groups) != c.layers or any(g.channels != size for g in groups):
                found = sorted({g.channels for g in groups})
                why = (f"{name} beside the model says {c.layers} layers of {size} {label}; found {len(groups)} "
                       f"group(s) of {', '.join(map(str, found))}: kept whole")
                for g in groups:
                    g.reasons.append(why)
                continue
            analysis.ties.append(tuple(g.id for g in groups))
        for g in channels:
            if c.intermediate is not None and g not in mlp:
                g.reasons.append(f"{name} beside the model fixes this width for every layer "
                                 f"({g.channels} channels, not its intermediate size {c.intermediate})")


def pruned_counts(analysis: Analysis, configs: list[ModelConfig], kept: dict[int, tuple[int, int]]) -> None:
    """Set each config's counts after pruning from the selection's kept counts (uniform by
    :func:`tie_groups`)."""
    by_id = {g.id: g for g in analysis.groups}
    for config in configs:
        c = config.counts
        after = c
        for tie in analysis.ties:
            widths = {kept.get(gid, (by_id[gid].channels,))[0] for gid in tie}
            if len(widths) != 1:
                raise AssertionError(f"tied groups kept {sorted(widths)} channels")  # the selection's contract
            width = widths.pop()
            if by_id[tie[0]].kind == "heads" and c.heads and c.kv_heads:
                after = replace(after, kv_heads=width, heads=width * (c.heads // c.kv_heads))
            elif by_id[tie[0]].kind == "channels":
                after = replace(after, intermediate=width)
        config.pruned = after


def config_outputs(configs: list[ModelConfig], model_out: str | os.PathLike) -> list[tuple[ModelConfig, Path]]:
    """Where each config goes beside the output (its own file name in the output's folder)."""
    folder = Path(model_out).parent
    for c in configs:
        if c.kind.model_file(c.data) is not None:
            c.model_file = Path(model_out).name
    return [(c, folder / c.file_name) for c in configs]


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_config(config: ModelConfig, path: Path) -> list[Path]:
    """Write the updated config to ``path`` and copy its companion files (tokenizer files) beside
    it, unchanged; returns what was written (removed again if a copy fails)."""
    from .io import atomic_write_text, copy_file

    atomic_write_text(path, json.dumps(config.updated(), indent=2) + "\n")
    written = [path]
    try:
        for name in config.kind.companions:
            src, dst = config.path.parent / name, path.parent / name
            if src.is_file() and not same_file(src, dst):
                copy_file(src, dst)
                written.append(dst)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out
