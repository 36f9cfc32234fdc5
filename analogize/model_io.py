"""Loading and saving ONNX models (and result files) with one-line errors and atomic writes."""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, EncodeError
from onnx import external_data_helper

from .errors import AnalogizeError
from .native.build import FUSED_DOMAIN
from .untrusted import check_regular_file


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
    _check_text_and_nodes(model, path)
    _check_initializers(model.graph, path)
    _check_fused_chain_calls(model, path)
    has_external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if has_external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as error:
            raise AnalogizeError(f"{path}: cannot read its external weight data ({str(error).splitlines()[0]}); "
                                 f"keep the data file next to the model") from None
    return model, has_external


def save_model(model: onnx.ModelProto, path, external_data: bool = False, overwrite_input=None) -> Path:
    """Write ``model`` to ``path`` as :func:`atomic_output` writes: nothing appears at ``path`` unless the whole
    write succeeds.

    With ``external_data`` (forced for models over 2 GiB) weights go to ``<path>.data`` beside it.
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
    data = path.with_name(f"{path.name}.data")
    with _staged(path) as staging:
        staged = staging / path.name
        if external_data:
            model = copy_model(model)  # writing external data rewrites the tensors in place
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
        else:
            staged.write_bytes(serialized)
        moves = [(staging / data.name, data)] if (staging / data.name).exists() else []
        moves.append((staged, path))
    _hand_over(staging, moves)
    return path


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
_SUB_BYTE_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
                   if hasattr(onnx.TensorProto, name)}
_COMPLEX_TYPES = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


@functools.cache
def _text_and_message_fields(descriptor) -> tuple:
    """(name, holds messages, repeated) of each text or message field of a message type: bytes fields (weights)
    are never read."""
    kinds = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)
    return tuple((field.name, field.type == FieldDescriptor.TYPE_MESSAGE,
                  field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED)
                 for field in descriptor.fields if field.type in kinds)  # protobuf 7 has is_repeated, no label


def _check_text_and_nodes(model: onnx.ModelProto, path: Path) -> None:
    """Refuse text that is not UTF-8 (protobuf hands such a name over as bytes, which every pass trips on) and
    nodes without outputs, anywhere in the model, before any pass reads it."""
    pending = [model]
    while pending:  # a loop, not recursion: the nesting of subgraphs is the file's to choose
        message = pending.pop()
        if isinstance(message, onnx.NodeProto) and not message.output:
            raise AnalogizeError(f"{path}: node {message.name or message.op_type!r} has no output, which no ONNX "
                                 f"op allows; the file is damaged or was written wrongly, re-export it")
        for name, holds_messages, repeated in _text_and_message_fields(message.DESCRIPTOR):
            if not repeated and not message.HasField(name):
                continue
            values = getattr(message, name) if repeated else (getattr(message, name),)
            if holds_messages:
                pending.extend(values)
                continue
            text = next((value for value in values if isinstance(value, bytes)), None)
            if text is not None:
                raise AnalogizeError(f"{path}: a {message.DESCRIPTOR.name} {name} is not UTF-8 text ({text[:40]!r}); "
                                     f"the file is damaged, re-export it")


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


def _check_initializers(graph: onnx.GraphProto, path: Path) -> None:
    """Refuse initializers whose stored values do not fill their declared shape (a damaged file), before any
    pass reads them."""
    for tensor in graph.initializer:
        if external_data_helper.uses_external_data(tensor) or tensor.data_type in _SUB_BYTE_TYPES:
            continue
        declared = 1
        for size in tensor.dims:
            declared *= size
        try:
            width = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, ValueError, TypeError):  # a type numpy has no width for: left to the reader
            continue
        stored = len(tensor.raw_data)  # read once: protobuf (upb) copies the bytes out on every read
        if stored:
            held = stored // width
        else:
            held = max(len(getattr(tensor, field)) for field in _TYPED_FIELDS)
            held = held // 2 if tensor.data_type in _COMPLEX_TYPES else held
        if min(tensor.dims, default=0) < 0 or held != declared:
            shown = declared if 0 <= declared < 10**15 else "an impossible number of"
            raise AnalogizeError(f"{path}: initializer {tensor.name!r} declares {shown} values but holds {held}; the "
                                 f"file is damaged, re-export it")


def refuse_overwrites(inputs: dict, outputs: dict) -> None:
    """Refuse, before any work, outputs that would replace an input or each other: ``inputs`` and ``outputs`` map
    what to call each path in the message (a flag, "the model") to the path (None or "-": not a file)."""
    seen: dict[Path, str] = {}
    for label, path in inputs.items():
        if path not in (None, "-"):
            seen.setdefault(Path(path).resolve(), label)
    for label, path in outputs.items():
        if path in (None, "-"):
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise AnalogizeError(f"{label} {path} would replace {seen[resolved]}; choose another path")
        seen[resolved] = label


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
    done = []
    try:
        for _, moves in staged:
            for source, target in moves:
                os.replace(source, target)
                done.append(target)
    except OSError as error:
        for target in done:  # all or nothing: they were written together
            target.unlink(missing_ok=True)
        raise AnalogizeError(f"cannot write {target}: {error.strerror or error}") from None
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
