"""Loading and saving models: input validation up front, atomic writes at the end.

Every problem with the input file becomes a :class:`BadInputError` with one line that names it,
so that a build step sees a clear message and no partial output.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Collection, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper
from onnx_graphsurgeon.importers.onnx_importer import get_numpy_type, get_onnx_tensor_dtype
from onnx_graphsurgeon.ir.tensor import LazyValues

from .errors import BadInputError, OnnxPruneError
from .tempfiles import temp_beside
from .validate import check_structure

#: Opsets of the default domain we have rules and tests for.
MIN_OPSET = 9
MAX_OPSET = 23
#: Protobuf cannot serialise a message over 2 GiB; above this we write external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: A model whose external data reaches this many bytes is not loaded whole: its weights stay in
#: their files and are read one at a time when needed (scoring, slicing, saving), and the output
#: is written with external data. Smaller models are loaded whole, so that every pass (ONNX
#: Runtime sessions included) sees an ordinary in-memory proto.
LAZY_LOAD_THRESHOLD = EXTERNAL_DATA_THRESHOLD
#: With external data, tensors of at least this many bytes go to the data file (onnx's default).
EXTERNAL_TENSOR_MIN_BYTES = 1024
#: ``location`` of a weight whose bytes are not in the proto yet (they are in the graph, see
#: :func:`export_deferred`); :func:`save_model` writes them and names the real data file.
DEFERRED_LOCATION = "onnxprune-deferred-weights.data"


def load_model(path: str | os.PathLike, extension_ops: Collection[str] = ()) -> onnx.ModelProto:
    """Read an ONNX file and check it is something we can prune.

    ``extension_ops`` are default-domain op types that ONNX Runtime implements beyond ONNX's
    opsets (:func:`onnxprune.ops.registry.runtime_extensions`): accepted where ONNX has no schema.

    External data is checked (its file exists, inside the model's folder, and holds as many
    bytes as each tensor's shape needs) and loaded, except for models too large for one protobuf
    (:data:`LAZY_LOAD_THRESHOLD`): their main-graph initializers stay in their files, read on
    demand (see :class:`ExternalValues`).
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise BadInputError(f"{p}: file is empty")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for garbage input
        raise BadInputError(f"{p}: not a valid ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise BadInputError(f"{p}: not a valid ONNX model (no graph)")
    check_opset(model, str(p))
    check_domains(model, str(p), extension_ops)
    check_structure(model, str(p), extension_ops)
    _attach_external_data(model, p)
    return model


def _attach_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Check every external tensor's data, then load it, or (main-graph initializers of a model
    whose external data reaches :data:`LAZY_LOAD_THRESHOLD`) leave it in its file for
    :class:`ExternalValues` to read on demand, with its location made absolute."""
    base = str(path.resolve().parent)
    external = [t for t in external_data_helper._get_all_tensors(model)
                if t.data_location == onnx.TensorProto.EXTERNAL]
    regions = [_checked_region(t, base, path) for t in external]
    top_level = list(model.graph.initializer)  # kept alive, so that ids stay unique
    top = {id(t) for t in top_level}
    lazy = sum(length for _, _, length in regions) >= LAZY_LOAD_THRESHOLD
    for t, (location, offset, length) in zip(external, regions):
        if lazy and id(t) in top:
            del t.external_data[:]
            for key, value in (("location", os.path.join(base, location)), ("offset", str(offset)),
                               ("length", str(length))):
                t.external_data.add(key=key, value=value)
            continue
        try:
            external_data_helper.load_external_data_for_tensor(t, base)
        except Exception as exc:
            raise BadInputError(f"{path}: cannot read external data of tensor '{t.name}' ({_first_line(exc)})") \
                from exc


def _checked_region(t: onnx.TensorProto, base: str, path: Path) -> tuple[str, int, int]:
    """Location, offset and length of an external tensor, after checking the file holds them."""
    try:
        with warnings.catch_warnings():  # unknown keys: onnx ignores them, and so do we
            warnings.simplefilter("ignore")
            info = external_data_helper.ExternalDataInfo(t)
    except ValueError as exc:
        raise BadInputError(f"{path}: bad external data entry for tensor '{t.name}' ({exc})") from exc
    if not info.location:
        raise BadInputError(f"{path}: tensor '{t.name}' is marked external but names no data file")
    if not os.path.lexists(os.path.join(base, info.location)):
        raise BadInputError(f"{path}: missing external data file {info.location}")
    try:  # onnx's own check: relative, inside the model's folder, a regular file, not a link
        fd = external_data_helper._open_external_data_fd(base, info.location, t.name, True)
    except AttributeError as exc:  # older onnx: open it ourselves after the same lexical checks
        if os.path.isabs(info.location) or ".." in Path(info.location).parts:
            raise BadInputError(f"{path}: external data location '{info.location}' is outside the model's folder") \
                from exc
        fd = os.open(os.path.join(base, info.location), os.O_RDONLY)
    except Exception as exc:
        raise BadInputError(f"{path}: cannot read external data of tensor '{t.name}' ({_first_line(exc)})") from exc
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    offset = info.offset or 0
    expected = _expected_nbytes(t)
    length = info.length if info.length is not None else (expected if expected is not None else size - offset)
    if expected is not None and length != expected:
        raise BadInputError(f"{path}: external data of tensor '{t.name}' is {length} bytes, its shape needs {expected}")
    if offset + length > size:
        raise BadInputError(f"{path}: external data file {info.location} is truncated "
                            f"(tensor '{t.name}' needs bytes {offset} to {offset + length}, the file has {size})")
    return info.location, offset, length


#: Sub-byte element types, packed several to a byte in raw data.
_SUB_BYTE = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "FLOAT6E2M3", "FLOAT6E3M2",
                                                       "INT2", "UINT2") if hasattr(onnx.TensorProto, n)}


def element_dtype(data_type: int) -> np.dtype | None:
    """The numpy dtype (ml_dtypes for bfloat16 and float8) whose bytes are the raw data of an ONNX
    element type; None for strings and sub-byte types, which are not stored one element per
    ``itemsize`` bytes."""
    if data_type in _SUB_BYTE or data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).newbyteorder("<")
    except (KeyError, TypeError, ValueError):
        return None


def _expected_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes a tensor's raw data must have, for element types of a whole number of bytes."""
    dtype = element_dtype(t.data_type)
    if dtype is None:
        return None
    return math.prod(int(d) for d in t.dims) * dtype.itemsize  # Python ints: hostile dims do not wrap


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_opset(model: onnx.ModelProto, where: str = "model") -> int:
    """Return the default-domain opset, refusing versions outside the supported range."""
    version = default_opset(model)
    if version is None:
        raise BadInputError(f"{where}: model imports no default-domain opset")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise BadInputError(f"{where}: opset {version} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})")
    return version


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _canonical_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def check_domains(model: onnx.ModelProto, where: str = "model", extension_ops: Collection[str] = ()) -> None:
    """Refuse what cannot be processed at all: a node of a domain the model does not import, an
    imported version of an ONNX domain (``ai.onnx.ml``...) that ONNX does not define, or an
    operator that the imported version of an ONNX domain does not have.

    Domains ONNX does not define (``com.microsoft`` fused ops, custom ops), and the default-domain
    ``extension_ops`` ONNX Runtime implements, are accepted: the analysis blocks the channels their
    nodes touch unless an op spec knows them.
    """
    known = onnx.defs.C.schema_version_map()
    imported = {_canonical_domain(imp.domain): imp.version for imp in model.opset_import}
    for domain, version in imported.items():
        if domain and domain in known:
            low, high = known[domain]
            if not low <= version <= high:
                raise BadInputError(f"{where}: opset {domain} {version} is not supported "
                                    f"(supported: {low} to {high})")
    local_functions = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model.graph):
        domain = _canonical_domain(node.domain)
        if domain not in imported:
            raise BadInputError(f"{where}: node '{node.name or node.op_type}' ({domain}:{node.op_type}) uses domain "
                                f"'{domain}', which the model does not import")
        if domain in known and (node.domain, node.op_type) not in local_functions:
            try:
                onnx.defs.get_schema(node.op_type, imported[domain], domain)
            except onnx.defs.SchemaError as exc:
                if domain == "" and node.op_type in extension_ops:
                    continue
                raise BadInputError(f"{where}: node '{node.name or node.op_type}': {domain or 'ai.onnx'} opset "
                                    f"{imported[domain]} has no operator {node.op_type}") from exc
    for function in model.functions:
        f_imported = {_canonical_domain(imp.domain) for imp in function.opset_import}
        for node in function.node:
            if _canonical_domain(node.domain) not in f_imported | set(imported):
                raise BadInputError(f"{where}: function '{function.name}' uses domain '{node.domain}', "
                                    "which it does not import")


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


# --- weights read on demand ------------------------------------------------------------------

def _file_stamp(path: str) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ExternalValues(LazyValues):
    """The values of an initializer kept in an external data file, read when asked for.

    ``load()`` returns a read-only memory map of the tensor's bytes: reading a weight to score
    or slice it costs no copy, and the pages are released when the array is dropped. Nothing is
    cached, so a model's weights are never all in memory at once. ``tensor`` (what
    onnx-graphsurgeon exports) is a full in-memory ``TensorProto``, read on each call.
    The file is checked unchanged (same inode, size and time) on every read.
    """

    def __init__(self, tensor: onnx.TensorProto):
        # Not LazyValues.__init__: ``tensor`` is a property here.
        info = external_data_helper.ExternalDataInfo(tensor)
        if not os.path.isabs(info.location):
            raise BadInputError(f"tensor '{tensor.name}' has external data that was not loaded: pass the model's "
                                "path, or load it with its external data")
        self.path = info.location
        self.offset = info.offset or 0
        self.length = info.length if info.length is not None else _expected_nbytes(tensor)
        self._meta = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        self.shape = list(tensor.dims)
        self.dtype = get_onnx_tensor_dtype(self._meta)
        self.nbytes = self.length
        self.stamp = _file_stamp(self.path)

    def _check(self) -> None:
        if _file_stamp(self.path) != self.stamp:
            raise OnnxPruneError(f"{self.path}: external data file changed since the model was loaded")

    def load(self) -> np.ndarray:
        dtype = element_dtype(self._meta.data_type)
        if dtype is None:
            return np.array(onnx.numpy_helper.to_array(self.tensor))
        if int(np.prod(self.shape, dtype=np.int64)) == 0:
            return np.zeros(self.shape, dtype=dtype)
        self._check()
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self.offset, shape=tuple(self.shape))

    def chunks(self, size: int = 1 << 24) -> Iterator[bytes]:
        """The raw bytes, a piece at a time."""
        self._check()
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            left = self.length
            while left > 0:
                piece = fh.read(min(size, left))
                if not piece:
                    raise OnnxPruneError(f"{self.path}: external data file is shorter than when it was loaded")
                left -= len(piece)
                yield piece

    @property
    def tensor(self) -> onnx.TensorProto:
        t = onnx.TensorProto()
        t.CopyFrom(self._meta)
        t.raw_data = b"".join(self.chunks())
        return t

    def __str__(self) -> str:
        return f"ExternalValues({self.path}@{self.offset}, shape={self.shape}, dtype={self.dtype})"


class SlicedValues(ExternalValues):
    """The kept part of a weight left in its file: ``cuts`` (axis, kept mask) applied to the
    mapped values each time they are read, never kept. A pruned model's sliced weights stay
    deferred this way until written (``save_model``, one at a time) or handed to a session:
    pruning a model over 2 GB never holds all its sliced weights at once."""

    def __init__(self, source: ExternalValues, cuts: list[tuple[int, np.ndarray]]):
        # Not ExternalValues.__init__: the source was checked when it was loaded.
        self.source, self.cuts = source, [(int(axis), np.asarray(mask, bool)) for axis, mask in cuts]
        self.path, self.offset, self.stamp = source.path, source.offset, source.stamp
        shape = list(source.shape)
        for axis, mask in self.cuts:
            shape[axis] = int(mask.sum())
        self.shape, self.dtype = shape, source.dtype
        self._meta = onnx.TensorProto(name=source._meta.name, data_type=source._meta.data_type, dims=shape)
        # the stored element size (``dtype`` may be an ONNX type number: bfloat16, float8)
        per_element = source.length // max(int(np.prod(source.shape, dtype=np.int64)), 1)
        self.nbytes = self.length = int(np.prod(shape, dtype=np.int64)) * per_element

    def load(self) -> np.ndarray:
        values = self.source.load()
        for axis, mask in self.cuts:
            values = np.compress(mask, values, axis=axis)
        return np.array(values, order="C")

    def chunks(self, size: int = 1 << 24) -> Iterator[bytes]:
        """The kept bytes, in one piece (the sliced weight, built once per call)."""
        yield memoryview(self.load().reshape(-1).view(np.uint8))

    @property
    def tensor(self) -> onnx.TensorProto:
        t = onnx.TensorProto()
        t.CopyFrom(self._meta)
        t.raw_data = b"".join(bytes(c) for c in self.chunks())
        return t

    def __str__(self) -> str:
        return f"SlicedValues({self.source}, shape={self.shape})"


def lazy_external_values(graph: gs.Graph) -> int:
    """Make every constant of ``graph`` whose proto points at external data read on demand;
    return how many there are."""
    count = 0
    sources = set()
    for tensor in graph.tensors().values():
        values = getattr(tensor, "_values", None)
        if isinstance(values, LazyValues) and not isinstance(values, ExternalValues) \
                and isinstance(values.tensor, onnx.TensorProto) \
                and values.tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor._values = ExternalValues(values.tensor)
            tensor.data_location = None  # where it is written is decided on export
            sources.add(tensor._values.path)
            count += 1
    # The input's data files, even once every weight read from them has been replaced: saving
    # must not overwrite them (see _refuse_overwriting_sources).
    graph._onnxprune_data_files = sources
    return count


def read_values(tensor: gs.Constant) -> np.ndarray:
    """A constant's values without keeping them: weights in external data files are mapped
    for the caller only, everything else is what ``tensor.values`` gives."""
    values = tensor._values
    if isinstance(values, ExternalValues):
        return values.load()
    if isinstance(values, LazyValues) and isinstance(values.tensor, onnx.TensorProto) \
            and get_numpy_type(values.tensor.data_type) is None:
        # bfloat16, float8: onnx reads them as ml_dtypes arrays, which export back to the same
        # type; onnx-graphsurgeon's own loader would warn on stderr that it cannot.
        tensor._values = np.array(onnx.numpy_helper.to_array(values.tensor))
    return tensor.values


def has_external_values(graph: gs.Graph) -> bool:
    return any(isinstance(getattr(t, "_values", None), ExternalValues) for t in graph.tensors().values())


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


# --- export with weights deferred ------------------------------------------------------------

class _StubValues(LazyValues):
    """Stands in for a constant's values while exporting: onnx-graphsurgeon exports ``tensor``."""

    def __init__(self, tensor: onnx.TensorProto, shape, dtype, nbytes):
        self.tensor, self.shape, self.dtype, self.nbytes = tensor, shape, dtype, nbytes


def _goes_external(const: gs.Constant) -> bool:
    if isinstance(const._values, gs.ir.tensor.SparseValues):
        return False
    nbytes = _constant_nbytes(const)
    if nbytes < EXTERNAL_TENSOR_MIN_BYTES:
        return False
    from .dtypes import is_floating

    # Shape inference and the checker read integer tensors (shape vectors); keep small ones inline.
    return is_floating(const.dtype) or nbytes >= 1 << 20


def _constant_nbytes(const: gs.Constant) -> int:
    values = const._values
    nbytes = getattr(values, "nbytes", None)
    if nbytes is None:
        nbytes = int(np.prod(const.shape, dtype=np.int64)) * np.dtype(const.dtype).itemsize
    return int(nbytes)


def weights_nbytes(graph: gs.Graph) -> int:
    return sum(_constant_nbytes(t) for t in graph.tensors().values() if isinstance(t, gs.Constant))


def export_deferred(graph: gs.Graph) -> onnx.ModelProto:
    """Export ``graph`` with every large constant as an external-data reference to
    :data:`DEFERRED_LOCATION` (dims and type only, no bytes): the proto stays small whatever the
    model's size. :func:`save_model` with the same graph writes the bytes."""
    from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

    swaps = []
    try:
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and _goes_external(tensor):
                stub = onnx.TensorProto(name=tensor.name, data_type=dtype_to_onnx(tensor.export_dtype),
                                        dims=[int(d) for d in tensor.shape],
                                        data_location=onnx.TensorProto.EXTERNAL)
                stub.external_data.add(key="location", value=DEFERRED_LOCATION)
                swaps.append((tensor, tensor._values))
                tensor._values = _StubValues(stub, tensor.shape, tensor.dtype, _constant_nbytes(tensor))
        return gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor, values in swaps:
            tensor._values = values


#: Element types ONNX Runtime takes as ``OrtValue``s straight from numpy (no copy).
_RUNTIME_DTYPES = (np.float32, np.float16, np.float64)


def export_by_reference(graph: gs.Graph) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``graph`` exported for ONNX Runtime without serializing its weights, when some are still in
    their files: each large float constant becomes a stub initializer (dims and type), its values
    returned by name (memory maps for weights still in their files, arrays for changed ones,
    :class:`SlicedValues` for sliced ones, to ``load()`` only where a session needs them) to
    hand over as initializers. The proto stays small and no weight is copied. Each stub names an
    existing data file of the input, at its end (ONNX Runtime checks the file exists; a read
    there would fail, never give wrong values). Graphs with no weight left in a file are exported
    whole (the dict is empty)."""
    anchor = next((t._values.path for t in graph.tensors().values()
                   if isinstance(getattr(t, "_values", None), ExternalValues)), None)
    if anchor is None:
        return gs.export_onnx(graph, do_type_check=False), {}
    from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

    swaps, arrays = [], {}
    end = str(os.path.getsize(anchor))
    try:
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and _goes_external(tensor) \
                    and np.dtype(tensor.dtype) in _RUNTIME_DTYPES:
                arrays[tensor.name] = tensor._values if isinstance(tensor._values, SlicedValues) \
                    else read_values(tensor)
                stub = onnx.TensorProto(name=tensor.name, data_type=dtype_to_onnx(tensor.export_dtype),
                                        dims=[int(d) for d in tensor.shape],
                                        data_location=onnx.TensorProto.EXTERNAL)
                for key, value in (("location", anchor), ("offset", end), ("length", str(_constant_nbytes(tensor)))):
                    stub.external_data.add(key=key, value=value)
                swaps.append((tensor, tensor._values))
                tensor._values = _StubValues(stub, tensor.shape, tensor.dtype, _constant_nbytes(tensor))
        return gs.export_onnx(graph, do_type_check=False), arrays
    finally:
        for tensor, values in swaps:
            tensor._values = values


def is_deferred(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL and _location(t) == DEFERRED_LOCATION
               for t in model.graph.initializer)


def _location(t: onnx.TensorProto) -> str | None:
    return next((e.value for e in t.external_data if e.key == "location"), None)


def check_deferred(model: onnx.ModelProto, full_check: bool = True) -> None:
    """``onnx.checker.check_model`` for a model with deferred weights: the checker wants the data
    file to exist, so the (small) proto is checked from a temporary folder beside an empty one."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as tmp:
        Path(tmp, DEFERRED_LOCATION).touch()
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as fh:
            fh.write(model.SerializeToString())
        onnx.checker.check_model(path, full_check=full_check)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, graph: gs.Graph | None = None) -> list[Path]:
    """Write atomically: temporary files beside the target, then renames.

    A reader never sees a half-written model, and a failure leaves nothing behind. A model with
    deferred weights (:func:`export_deferred`) needs the ``graph`` it was exported from; its
    weights are streamed one at a time to ``<name>.data`` beside the target. So is a model too
    large for one protobuf. Returns the files written (the model, and its data file if any).
    """
    target = Path(path)
    if is_deferred(model) and graph is None:
        raise ValueError("this model's weights are kept in its graph until saved: save it with "
                         "PruneResult.save() or save_model(model, path, graph)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{target}: cannot create its folder {target.parent} ({exc.strerror or exc})") from exc
    try:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        return _save(model, target, graph)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG):
            raise OnnxPruneError(f"{target}: writing failed ({reason}); nothing was written") from exc
        raise BadInputError(f"{target}: cannot write there ({reason})") from exc


def _save(model: onnx.ModelProto, target: Path, graph: gs.Graph | None) -> list[Path]:
    if is_deferred(model):
        return _save_external(model, graph, target)
    if not _size_is_cheap(model):
        graph = gs.import_onnx(model)
        skeleton = export_deferred(graph)
        copy_model_fields(model, skeleton)
        return _save_external(skeleton, graph, target)
    with temp_beside(target) as (fd, tmp):
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
        os.chmod(tmp, 0o666 & ~_umask())  # temporary files are 0600; give the usual permissions
        os.replace(tmp, target)
    return [target]


def copy_model_fields(source: onnx.ModelProto, dest: onnx.ModelProto) -> None:
    """Carry a model's identity over to a model exported from its graph: IR version, producer,
    metadata, opset imports, model-local functions."""
    dest.ir_version = source.ir_version
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(dest, field, getattr(source, field))
    del dest.metadata_props[:]
    dest.metadata_props.extend(source.metadata_props)
    del dest.opset_import[:]
    dest.opset_import.extend(source.opset_import)
    del dest.functions[:]
    dest.functions.extend(source.functions)
    _keep_initializer_inputs(source.graph, dest.graph)


def _keep_initializer_inputs(source: onnx.GraphProto, dest: onnx.GraphProto) -> None:
    """Initializers the input also lists as graph inputs (overridable defaults, and every weight
    of an IR < 4 model) stay inputs, in the input's order: onnx-graphsurgeon drops them, which
    would change the model's interface for a caller that feeds them."""
    inits = {t.name: t for t in dest.initializer}
    listed = {vi.name: vi for vi in dest.input}
    if not any(vi.name in inits and vi.name not in listed for vi in source.input):
        return
    ordered = []
    for vi in source.input:
        if vi.name in listed:
            ordered.append(listed.pop(vi.name))
        elif vi.name in inits:
            t = inits[vi.name]
            ordered.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    ordered.extend(listed.values())
    del dest.input[:]
    dest.input.extend(ordered)


#: Data offsets of tensors this large are page-aligned, so runtimes can map them directly.
_PAGE = 4096


def _save_external(model: onnx.ModelProto, graph: gs.Graph, target: Path) -> list[Path]:
    data_name = target.name + ".data"
    data_path = target.parent / data_name
    _refuse_overwriting_sources(graph, target, data_path)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)  # small: the weights are not in it
    constants = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    with temp_beside(target) as (model_fd, tmp), temp_beside(data_path) as (fd, tmp_data):
        os.close(model_fd)
        with os.fdopen(fd, "wb") as fh:
            for t in skeleton.graph.initializer:
                if t.data_location != onnx.TensorProto.EXTERNAL or _location(t) != DEFERRED_LOCATION:
                    continue
                const = constants.get(t.name)
                if const is None or [int(d) for d in const.shape] != list(t.dims):
                    raise OnnxPruneError(f"weight '{t.name}' no longer matches the exported model; export it again")
                expected = _expected_nbytes(t)
                offset = fh.tell()
                align = _PAGE if (expected or 0) >= _PAGE else 16
                if offset % align:
                    fh.write(b"\0" * (align - offset % align))
                    offset = fh.tell()
                for piece in _tensor_bytes(const):
                    fh.write(piece)
                length = fh.tell() - offset
                if expected is not None and length != expected:
                    raise OnnxPruneError(f"weight '{t.name}': wrote {length} bytes, its shape needs {expected}")
                del t.external_data[:]
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    t.external_data.add(key=key, value=value)
        with open(tmp, "wb") as fh:
            fh.write(skeleton.SerializeToString())
        mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.chmod(tmp_data, mode)
        # Data first, then the model that names it: the window between the two renames is the
        # only time the pair on disk does not match.
        os.replace(tmp_data, data_path)
        os.replace(tmp, target)
    return [target, data_path]


def _tensor_bytes(const: gs.Constant) -> Iterator[bytes | memoryview]:
    """The bytes an exported initializer holds, without building the whole proto where we can."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx

    values = const._values
    same_type = dtype_to_onnx(const.dtype) == dtype_to_onnx(const.export_dtype)
    if isinstance(values, ExternalValues):
        yield from values.chunks()
    elif isinstance(values, np.ndarray) and same_type and not values.dtype.hasobject:
        arr = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
        yield memoryview(arr.reshape(-1)).cast("B")
    else:  # in-memory protos, type conversions: build this one tensor
        proto = OnnxExporter.export_tensor_proto(const)
        if proto.HasField("raw_data"):
            yield proto.raw_data
        else:
            yield onnx.numpy_helper.to_array(proto).astype(
                onnx.helper.tensor_dtype_to_np_dtype(proto.data_type)).newbyteorder("<").tobytes()


def _refuse_overwriting_sources(graph: gs.Graph, target: Path, data_path: Path) -> None:
    """The data file we are about to replace may be where the graph's unpruned weights come
    from. That is only allowed when the model file that names it is the one being replaced too
    (``--force`` over the input); otherwise it would corrupt the input."""
    if not data_path.exists():
        return
    sources = set(getattr(graph, "_onnxprune_data_files", ()))
    sources |= {t._values.path for t in graph.tensors().values() if isinstance(getattr(t, "_values", None), ExternalValues)}
    if not any(os.path.samefile(s, data_path) for s in sources if os.path.exists(s)):
        return
    if target.exists():
        try:
            current = onnx.load(str(target), load_external_data=False)
            if any(_location(t) and os.path.exists(target.parent / _location(t))
                   and os.path.samefile(target.parent / _location(t), data_path)
                   for t in current.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL):
                return
        except Exception:
            pass
    raise BadInputError(f"{target}: its data file {data_path.name} is the input's external data; "
                        "choose another output name")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _size_is_cheap(model: onnx.ModelProto) -> bool:
    """ByteSize() itself fails on messages past 2 GiB; estimate from raw tensors first."""
    total = sum(t.ByteSize() for t in model.graph.initializer)
    return total < EXTERNAL_DATA_THRESHOLD


def copy_file(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy a file byte for byte with the same temporary-file-then-rename discipline (an
    unchanged model: the output is the input)."""
    import shutil

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with temp_beside(target) as (fd, tmp):
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
    except OSError as exc:
        raise OnnxPruneError(f"{target}: writing failed ({exc.strerror or exc}); nothing was written") from exc


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (reports) with the same temporary-file-then-rename discipline."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with temp_beside(target) as (fd, tmp):
            # file names that are not UTF-8 (kept by Python as surrogates) are written escaped
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
                fh.write(text)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
    except OSError as exc:
        raise BadInputError(f"{target}: cannot write here ({exc.strerror or type(exc).__name__})") from exc


def model_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the model's structure and weights, without serializing it whole (large models)."""
    digest = hashlib.sha256()
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    del skeleton.graph.initializer[:]
    digest.update(skeleton.SerializeToString(deterministic=True))
    for init in model.graph.initializer:
        digest.update(init.name.encode())
        digest.update(onnx.numpy_helper.to_array(init).tobytes() if not init.raw_data else init.raw_data)
    return digest.hexdigest()


def is_bulky(t: gs.Constant) -> bool:
    """A float constant of more than 64 values: a weight, whose bytes shape inference never needs."""
    from .dtypes import is_floating

    try:
        return is_floating(t.dtype) and int(np.prod(t.shape)) > 64
    except TypeError:
        return False


def export_skeleton(graph: gs.Graph) -> onnx.ModelProto:
    """``graph`` exported with each bulky constant input (:func:`is_bulky`) replaced by a typed
    graph input of its shape: everything shape inference reads, without serializing the weights.
    The model's inputs are the graph's own, then one per bulky constant; ``graph`` is left as it was."""
    swaps, placeholders = [], {}
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and is_bulky(t):
                if t.name not in placeholders:
                    placeholders[t.name] = gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape))
                swaps.append((node, i, t))
                node.inputs[i] = placeholders[t.name]
    real_inputs = list(graph.inputs)
    graph.inputs = real_inputs + list(placeholders.values())
    try:
        return gs.export_onnx(graph, do_type_check=False)
    finally:
        graph.inputs = real_inputs
        for node, i, t in swaps:
            node.inputs[i] = t
