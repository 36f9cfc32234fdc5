"""Loading and saving ONNX models (and result files) with one-line errors and atomic writes."""
from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, EncodeError
from onnx import external_data_helper

from .errors import AnalogizeError
from .native.build import FUSED_DOMAIN
from .untrusted import check_regular_file
from .weight_files import external_weight_files


def load_model(path) -> tuple[onnx.ModelProto, bool]:
    """The model at ``path`` with its weights, and whether it stored them as external data."""
    path = Path(path)
    check_regular_file(path, "the model", "give the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise AnalogizeError(f"{path} is not a readable ONNX model (truncated or another format: {error}); "
                             f"re-export it, or give a torch model (.pt2, TorchScript, module.path:factory with "
                             f"--state-dict)") from None
    except OSError as error:
        raise AnalogizeError(f"cannot read {path}: {error.strerror or error}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise AnalogizeError(f"{path} is not an ONNX model with a graph (no nodes found); re-export it")
    tensors, sparse_tensors = _check_text_and_nodes(model, path)
    stored, external = [], []
    for tensor in tensors:
        (external if external_data_helper.uses_external_data(tensor) else stored).append(tensor)
    _check_tensors(stored, sparse_tensors, path)  # refuses a sparse tensor's external parts, which onnx leaves
    check_graph_structure(model.graph, str(path))
    _check_fused_chain_calls(model, path)
    has_external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as error:
            raise AnalogizeError(f"{path}: cannot read its external weight data ({str(error).splitlines()[0]}); "
                                 f"keep the data file next to the model") from None
        _check_tensors(external, [], path)  # a length in the model's own record need not fit the shape
    return model, has_external


def save_model(model: onnx.ModelProto, path, external_data: bool = False, overwrite_input=None) -> Path:
    """Write ``model`` to ``path`` as :func:`atomic_output` writes: nothing appears at ``path`` unless the whole
    write succeeds.

    With ``external_data`` (forced for models over 2 GiB) weights go to :func:`weight_file` beside it.
    ``overwrite_input`` names the input model, which is never replaced unless it is ``path`` itself and the
    caller passed it on purpose.
    """
    path = Path(path)
    if overwrite_input is not None and path.resolve() == Path(overwrite_input).resolve():
        raise AnalogizeError(f"output {path} is the input model; choose another -o path (or pass --overwrite)")
    serialized = None
    if not external_data:
        try:  # serialised once: protobuf refuses messages over 2 GiB, which then need external data
            serialized = model.SerializeToString()
        except (ValueError, EncodeError):
            external_data = True
    data = weight_file(path)
    if external_data:
        check_output_target(data)
    with _staged(path) as staging:
        staged = staging / path.name
        if external_data:
            model = copy_model(model)  # writing external data rewrites the tensors in place
            _store_weights_in(model, data.name)
            onnx.save_model(model, str(staged))
        else:
            staged.write_bytes(serialized)
        moves = [(staging / data.name, data)] if (staging / data.name).exists() else []
        moves.append((staged, path))
    _hand_over(staging, moves)
    return path


def weight_file(path) -> Path:
    """Where :func:`save_model` puts the external weights of a model written to ``path``."""
    path = Path(path)
    return path.with_name(f"{path.name}.data")


def _store_weights_in(model: onnx.ModelProto, location: str, size_threshold: int = 1024) -> None:
    """Mark the weights of ``model`` (of at least ``size_threshold`` bytes) to be written to ``location``, as
    onnx.save_model's save_as_external_data does, without its check that ``location`` does not exist relative to
    the working directory (not the model's): it refused to write a model again from the directory it is in."""
    for tensor in external_data_helper._get_initializer_tensors(model):
        if tensor.HasField("raw_data") and sys.getsizeof(tensor.raw_data) >= size_threshold:
            external_data_helper.set_external_data(tensor, location)


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
_SUB_BYTE_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
                   if hasattr(onnx.TensorProto, name)}
_COMPLEX_TYPES = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


@functools.cache
def _field_kind(field) -> tuple[int, bool]:
    """(type, repeated) of a field, cached: a walk meets the same few dozen fields thousands of times."""
    return field.type, field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


_TENSOR = onnx.TensorProto.DESCRIPTOR
_TENSOR_TEXT_AND_MESSAGE_FIELDS = tuple(field for field in _TENSOR.fields
                                        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE))


def _tensor_fields(tensor: onnx.TensorProto) -> list:
    """(field, value) of each text or message field set in ``tensor``: ListFields, one call for all the fields of
    other messages, would copy its weights out."""
    return [(field, getattr(tensor, field.name)) for field in _TENSOR_TEXT_AND_MESSAGE_FIELDS
            if _field_kind(field)[1] or tensor.HasField(field.name)]


_NODE, _GRAPH, _SPARSE_TENSOR = onnx.NodeProto.DESCRIPTOR, onnx.GraphProto.DESCRIPTOR, onnx.SparseTensorProto.DESCRIPTOR


def _check_text_and_nodes(model: onnx.ModelProto, path: Path) -> tuple[list, list]:
    """Refuse text that is not UTF-8 (protobuf hands such a name over as bytes, which every pass trips on),
    nodes without outputs and unnamed initializers, anywhere in the model, before any pass reads it; the dense
    and sparse tensors found on the way (initializers, attribute values such as a Constant's, at any depth) are
    returned for :func:`_check_tensors`. (Message types are told apart by descriptor, and text lists checked by
    one join: a model's shape annotations alone can be tens of thousands of messages.)"""
    pending, tensors, sparse_tensors = [model], [], []
    while pending:  # a loop, not recursion: the nesting of subgraphs is the file's to choose
        message = pending.pop()
        descriptor = message.DESCRIPTOR
        if descriptor is _TENSOR:
            tensors.append(message)
            fields = _tensor_fields(message)
        else:
            if descriptor is _NODE and not message.output:
                raise AnalogizeError(f"{path}: node {message.name or message.op_type!r} has no output, which no "
                                     f"ONNX op allows; the file is damaged or was written wrongly, re-export it")
            if descriptor is _GRAPH and (any(not tensor.name for tensor in message.initializer) or
                                         any(not t.values.name for t in message.sparse_initializer)):
                raise AnalogizeError(f"{path}: graph {message.name!r} has an initializer without a name, which "
                                     f"would stand for every input left out (named ''); re-export the model")
            if descriptor is _SPARSE_TENSOR:
                sparse_tensors.append(message)
            fields = message.ListFields()
        for field, value in fields:
            kind, repeated = _field_kind(field)
            if kind == FieldDescriptor.TYPE_MESSAGE:
                if repeated:
                    pending.extend(value)
                else:
                    pending.append(value)
            elif kind == FieldDescriptor.TYPE_STRING and not _all_text(value, repeated):
                text = next(item for item in value if isinstance(item, bytes)) if repeated else value
                raise AnalogizeError(f"{path}: a {descriptor.name} {field.name} is not UTF-8 text ({text[:40]!r}); "
                                     f"the file is damaged, re-export it")
    return tensors, sparse_tensors


def _all_text(value, repeated: bool) -> bool:
    if not repeated:
        return type(value) is str
    try:
        "".join(value)
    except TypeError:  # bytes among them
        return False
    return True


def _check_tensors(tensors: list, sparse_tensors: list, path: Path) -> None:
    """Refuse tensors whose stored values do not fill their declared shape and sparse tensors whose indices
    leave it (a damaged file), before any pass reads them."""
    for tensor in tensors:
        problem = _tensor_problem(tensor)
        if problem:
            raise AnalogizeError(f"{path}: tensor {tensor.name!r} {problem}; the file is damaged, re-export it")
    for sparse in sparse_tensors:
        problem = _sparse_problem(sparse)
        if problem:
            raise AnalogizeError(f"{path}: sparse tensor {sparse.values.name!r} {problem}; the file is damaged, "
                                 f"re-export it")


def _check_fused_chain_calls(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a fast form's fused chain that does not give the inputs its function body reads (taking the chains
    apart, as evaluate, finetune and export do, would look for them)."""
    bodies = {(function.name, function.overload): function for function in model.functions
              if function.domain == FUSED_DOMAIN}
    for node in model.graph.node:
        body = bodies.get((node.op_type, node.overload)) if node.domain == FUSED_DOMAIN else None
        if body is not None and (len(node.input) < len(body.input) or not all(node.input[:len(body.input)])):
            raise AnalogizeError(f"{path}: {node.op_type} node {node.name!r} gives {len(node.input)} of the "
                                 f"{len(body.input)} inputs its function body reads; the file is damaged or was "
                                 f"written wrongly, write it again (analogize fast)")


def _tensor_problem(tensor: onnx.TensorProto) -> str | None:
    if tensor.HasField("segment"):  # a part of a tensor split over several messages: onnx cannot read one
        return "is one segment of a tensor split over several messages, which ONNX's readers do not take"
    if tensor.data_type in _SUB_BYTE_TYPES:
        return None
    declared = 1
    for size in tensor.dims:
        declared *= size
    width = _item_width(tensor.data_type)
    if width is None:  # a type numpy has no width for: left to the reader
        return None
    stored = len(tensor.raw_data)  # read once: protobuf (upb) copies the bytes out on every read
    if stored:
        held = stored // width if stored % width == 0 else f"{stored} bytes of {width}-byte"
    else:
        held = max(len(getattr(tensor, field)) for field in _TYPED_FIELDS)
        held = held // 2 if tensor.data_type in _COMPLEX_TYPES else held
    if min(tensor.dims, default=0) < 0 or held != declared:
        shown = declared if 0 <= declared < 10**15 else "an impossible number of"
        return f"declares {shown} values but holds {held}"
    return None


@functools.cache
def _item_width(data_type: int) -> int | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _sparse_problem(sparse: onnx.SparseTensorProto) -> str | None:
    """What is wrong with a sparse tensor whose values and indices passed :func:`_tensor_problem`: values must be
    a list, and the indices (linear, or one row of coordinates per value) must point inside its shape."""
    values, indices, shape = sparse.values, sparse.indices, tuple(sparse.dims)
    if min(shape, default=0) < 0 or len(values.dims) != 1:
        return f"has shape {list(shape)} and values of shape {list(values.dims)}; values must be a list"
    count = values.dims[0]
    if indices.data_type != onnx.TensorProto.INT64 or tuple(indices.dims) not in ((count,), (count, len(shape))):
        return (f"has {count} values but indices of shape {list(indices.dims)} and type "
                f"{onnx.helper.tensor_dtype_to_string(indices.data_type)}; ONNX wants int64 indices of shape "
                f"[{count}] or [{count}, {len(shape)}]")
    if external_data_helper.uses_external_data(values) or external_data_helper.uses_external_data(indices):
        return ("keeps its values or indices in an external file, which neither onnx nor ONNX Runtime reads for a "
                "sparse tensor")
    at = onnx.numpy_helper.to_array(indices)
    bounds = np.array(shape if at.ndim == 2 else [min(math.prod(shape), np.iinfo(np.int64).max)], np.int64)
    if at.size and ((at < 0).any() or (at >= bounds).any()):
        return f"has an index outside its shape {list(shape)}"
    return None


def check_graph_structure(graph: onnx.GraphProto, where: str) -> None:
    """Refuse in one line a graph (or body, at any depth) that reads a tensor nothing produces, produces a tensor
    twice or loops back on itself: passes and ONNX's version converter (a segfault) take such a graph on trust.
    A body may read the names of the graphs around it."""
    pending, read_from_outside = [(graph, ())], {}
    while pending:  # a loop, not recursion: the nesting of bodies is the file's to choose
        body, outer = pending.pop()
        problem, inner = _structure_problem(body, outer, read_from_outside)
        if problem:
            raise AnalogizeError(f"{where}: {problem}; the file is damaged or was written wrongly, re-export it")
        pending.extend(inner)


def _structure_problem(graph: onnx.GraphProto, outer: tuple, read_from_outside: dict) -> tuple[str | None, list]:
    """What is wrong with ``graph``'s own nodes and outputs (None: nothing), and its bodies with the names they may
    read. ``outer`` holds the name sets of the graphs around it, shared, not merged: a merged copy per body made
    models with thousands of If nodes take minutes. ``read_from_outside`` is :func:`_names_read_from_outside`'s
    memo, shared by the whole check."""
    given, defined = _names_defined(graph)
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in filter(None, node.output):  # "": an optional output left out
            if name in producer or name in given:
                return f"tensor {name!r} is produced twice (node {_node_name(node)} produces it again)", []
            producer[name] = index
    scope = (defined, *outer)
    needs, bodies = [], []
    for node in graph.node:
        inputs = set(node.input)
        unknown = inputs - defined  # set arithmetic: a generator per node took most of the check's time
        if unknown and outer:
            unknown = {name for name in unknown if not _in_scope(name, outer)}
        if unknown:
            missing = next(name for name in node.input if name in unknown)
            return f"node {_node_name(node)} reads {missing!r}, which no node, initializer or graph input produces", []
        reads = inputs
        for body in _bodies_of(node):
            bodies.append(body)
            reads = reads | _names_read_from_outside(body, read_from_outside)
        needs.append({producer[name] for name in reads if name in producer})
    unproduced = next((value.name for value in graph.output if not value.name or not _in_scope(value.name, scope)),
                      None)
    if unproduced is not None:
        return f"graph output {unproduced!r} is produced by no node, initializer or graph input", []
    cycle = _node_in_cycle(needs)
    if cycle is not None:
        return f"the nodes form a cycle (node {_node_name(graph.node[cycle])} reads what it helps produce, or " \
               f"comes after such a node)", []
    return None, [(body, scope) for body in bodies]


def _names_defined(graph: onnx.GraphProto) -> tuple[set, set]:
    """The names a graph gives its nodes (inputs, initializers), and all it defines: those, its nodes' outputs and
    "" (an optional input left out)."""
    given = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | \
        {tensor.values.name for tensor in graph.sparse_initializer}
    return given, given | {name for node in graph.node for name in node.output} | {""}


def _in_scope(name: str, scope: tuple) -> bool:
    return any(name in names for names in scope)


def _bodies_of(node: onnx.NodeProto) -> list:
    return [body for attribute in node.attribute for body in (
        (attribute.g,) if attribute.type == onnx.AttributeProto.GRAPH else
        attribute.graphs if attribute.type == onnx.AttributeProto.GRAPHS else ())]


def _names_read_from_outside(body: onnx.GraphProto, memo: dict) -> set:
    """The names the nodes of ``body`` and of its own bodies read (and its outputs name) that none of them defines:
    those tie the node that holds ``body`` to the nodes around it that produce them. Found bottom up, each body's
    once: ``memo`` maps a body's id to (the body, kept alive so that its id stays its own, its names), and a body
    nested n deep was walked n times over without it."""
    pending = [(body, False)]
    while pending:  # a loop, not recursion: the nesting of bodies is the file's to choose
        graph, children_done = pending.pop()
        if id(graph) in memo:
            continue
        children = [child for node in graph.node for child in _bodies_of(node)]
        if not children_done:
            pending.append((graph, True))
            pending.extend((child, False) for child in children)
            continue
        reads = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
        for child in children:
            reads |= memo[id(child)][1]
        memo[id(graph)] = (graph, reads - _names_defined(graph)[1])
    return memo[id(body)][1]


def _node_in_cycle(needs: list) -> int | None:
    """A node on a cycle of the graph whose node ``i`` needs the outputs of nodes ``needs[i]``, or None (Kahn's
    topological sort: the nodes it never reaches are on a cycle or after one)."""
    waiting = [len(needed) for needed in needs]
    users: list[list[int]] = [[] for _ in needs]
    for index, needed in enumerate(needs):
        for source in needed:
            users[source].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    while ready:
        for user in users[ready.pop()]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    return next((index for index, count in enumerate(waiting) if count), None)


def _node_name(node: onnx.NodeProto) -> str:
    return f"{node.name!r} ({node.op_type})" if node.name else node.op_type


def refuse_overwrites(inputs: dict, outputs: dict, models=(), replaceable: str | None = None,
                      overwrite: bool = False) -> None:
    """Refuse, before any work, outputs that would replace an input or each other: ``inputs`` and ``outputs`` map
    what to call each path in the message (a flag, "the model") to the path (None or "-": not a file). Paths are
    the same when they resolve to the same place or are the same file (a hard link). ``models`` names the inputs
    that are ONNX models: the files their external weights are kept in are inputs too. ``replaceable`` names the
    input that --overwrite lets ``-o`` replace: with ``overwrite``, ``-o`` may be that very file, and then the
    weight file written beside it may be one of that input's weight files; nothing else is ever replaced."""
    seen: dict = {}  # identity -> (what to call it, the input it belongs to)
    for label, path in inputs.items():
        if path not in (None, "-"):
            seen.setdefault(_identity(path), (label, label))
    if any(path not in (None, "-") and os.path.isfile(path) for path in outputs.values()):
        # only a file that exists can be replaced, and a model's weight files must exist for it to load: where
        # they are is read (off the model's wire format) only when an output exists
        for label in models:
            for weights in external_weight_files(inputs.get(label)):
                seen.setdefault(_identity(weights), (f"{_owner(label)} weight file {weights}", label))
    to_stdout = [label for label, path in outputs.items() if path == "-"]
    if len(to_stdout) > 1:
        raise AnalogizeError(f"{' and '.join(to_stdout)} would both write to stdout ('-'); send one to a file")
    # -o must name the model itself: a hard link to it is replaced by the rename while the model, unchanged, still
    # reads the weight file that would go with it
    replaced_by_output = overwrite and replaceable is not None and \
        outputs.get("-o") not in (None, "-") and inputs.get(replaceable) not in (None, "-") and \
        Path(outputs["-o"]).resolve() == Path(inputs[replaceable]).resolve()
    may_replace = {"-o", f"{_owner('-o')} weight file"} if replaced_by_output else set()
    for label, path in outputs.items():
        if path in (None, "-"):
            continue
        identity = _identity(path)
        if identity in seen:
            replaced, owner = seen[identity]
            if not (owner == replaceable and label in may_replace):
                remedy = " (or pass --overwrite)" if owner == replaceable and label == "-o" and not overwrite else ""
                raise AnalogizeError(f"{label} {path} would replace {replaced}; choose another path{remedy}")
        seen[identity] = (label, label)


def model_output(label: str, path) -> dict:
    """An output model for :func:`refuse_overwrites`: the model and the weight file :func:`save_model` may write
    beside it."""
    return {label: path} if path in (None, "-") else {label: path, f"{_owner(label)} weight file": weight_file(path)}


def _owner(label: str) -> str:
    return f"{label}'" if label.endswith("s") else f"{label}'s"


def _identity(path):
    """What makes two paths the same file: device and inode of an existing file, else the resolved path."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return Path(path).resolve()
    return status.st_dev, status.st_ino


def check_output_target(path) -> None:
    """Refuse an output path that is not a regular file or a new name: a device, a pipe or a socket (the atomic
    rename would replace the node itself: as root, -o /dev/null destroyed it), or a symbolic link (the rename
    replaces the link, not the file it names; which of the two was meant is the user's to say)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:  # a name too long, a directory not searchable
        raise AnalogizeError(f"cannot write {path}: {error.strerror or error}") from None
    if stat.S_ISLNK(mode):
        raise AnalogizeError(f"{path} is a symbolic link (to {os.readlink(path)}); give the path of the file itself, "
                             f"or remove the link")
    if stat.S_ISDIR(mode):
        raise AnalogizeError(f"{path} is a directory; give a file name")
    if not stat.S_ISREG(mode):
        raise AnalogizeError(f"{path} is not a regular file (a device, pipe or socket); give a file path")


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    duplicate = onnx.ModelProto()
    duplicate.CopyFrom(model)
    return duplicate


@contextlib.contextmanager
def atomic_output(path, keep_on_failure: bool = False):
    """Yield a path to write ``path``'s content to; it becomes ``path`` only if the block completes, and inside
    :func:`outputs_together` only when that block completes too, unless ``keep_on_failure`` (a checkpoint, which
    must outlive a later failure)."""
    path = Path(path)
    with _staged(path) as staging:
        yield staging / path.name
    _hand_over(staging, [(staging / path.name, path)], keep_on_failure)


# The staged outputs of the open outputs_together block: (staging directory, its (staged, final) moves)
_held: list | None = None


@contextlib.contextmanager
def outputs_together():
    """Within the block, the files :func:`atomic_output` and :func:`save_model` write appear only when the whole
    block completes, all at once: a command that fails leaves none of its outputs, not the first few."""
    global _held
    outer, _held = _held, []
    try:
        yield
        _commit(_held)
    finally:
        for staging, _ in _held:
            shutil.rmtree(staging, ignore_errors=True)
        _held = outer


def _hand_over(staging: Path, moves: list, now: bool = False) -> None:
    if _held is None or now:
        _commit([(staging, moves)])
    else:
        _held.append((staging, moves))


def _commit(staged: list) -> None:
    """Move each staged file to its final path, one rename each (a final path holds the old file or the new one at
    every moment), all or nothing: on a failure or an interrupt the files already moved are removed again. What
    they replaced is not kept: a hard link kept for it made onnx refuse the model's weight file ("multiple hard
    links") to every reader while a save ran, and a copy costs what the file weighs."""
    done = []
    try:
        for _, moves in staged:
            for source, target in moves:
                os.replace(source, target)
                done.append(target)
    except BaseException as error:
        for moved in done:  # all or nothing: they were written together
            moved.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise AnalogizeError(f"cannot write {target}: {error.strerror or error}") from None
        raise
    finally:
        for staging, _ in staged:
            shutil.rmtree(staging, ignore_errors=True)


# how much of the output's name the staging directory's holds: the whole, with this host and process added, went
# past the 255 bytes a file name may have where the output's own name fit
STAGED_NAME_CHARACTERS = 100


@contextlib.contextmanager
def _staged(path: Path):
    """A new hidden directory beside ``path`` to write it in, removed with what it holds if the block fails. Its
    name holds this host and process, so that the next write of ``path`` can remove what a killed process left."""
    check_output_target(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise AnalogizeError(f"cannot write {path}: directory {directory} does not exist")
    prefix = f".{path.name[:STAGED_NAME_CHARACTERS]}.staging-"
    _remove_abandoned_staging(directory, prefix)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{socket.gethostname()}-{os.getpid()}-", dir=directory))
    except OSError as error:
        raise AnalogizeError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        yield staging
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise AnalogizeError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def _remove_abandoned_staging(directory: Path, prefix: str) -> None:
    """Remove the staging directories of ``prefix`` that a process of this host left when it was killed."""
    try:
        names = [name for name in os.listdir(directory) if name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        owner = name[len(prefix):].rpartition("-")[0]  # HOST-PID, before mkdtemp's random part
        host, _, pid = owner.rpartition("-")
        if host == socket.gethostname() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(directory / name, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True
