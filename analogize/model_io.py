"""Loading and saving ONNX models (and result files) with one-line errors and atomic writes."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path

import onnx
import onnx.parser
from google.protobuf import json_format as google_json_format
from google.protobuf import text_format as google_text_format
from google.protobuf.message import DecodeError, EncodeError
from onnx import external_data_helper, serialization

from .errors import AnalogizeError
from .model_checks import check_model, check_tensors
from .untrusted import check_regular_file
from .weight_files import external_weight_files, initializer_data_sizes


def load_model(path) -> tuple[onnx.ModelProto, bool]:
    """The model at ``path`` with its weights, and whether it stored them as external data."""
    path = Path(path)
    check_regular_file(path, "the model", "give the path of an .onnx file")
    # the format as onnx.load takes it from the name (.onnx, .pb: protobuf; .textproto, .onnxtxt, .json: text)
    form = serialization.registry.get_format_from_file_extension(path.suffix) or "protobuf"
    try:
        with _file_bytes(path, mapped=form == "protobuf") as data:
            model = _parsed(data, form)
            # for the check, off the file's bytes while they are at hand (a text form has none to read)
            sizes = initializer_data_sizes(data) if form == "protobuf" else None
    except (DecodeError, RuntimeWarning, ValueError, *_TEXT_PARSE_ERRORS) as error:
        error = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise AnalogizeError(f"{path} is not a readable ONNX model (truncated or another format: {error}); "
                             f"re-export it, or give a torch model (.pt2, TorchScript, module.path:factory with "
                             f"--state-dict)") from None
    except OSError as error:
        raise AnalogizeError(f"cannot read {path}: {error.strerror or error}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise AnalogizeError(f"{path} is not an ONNX model with a graph (no nodes found); re-export it")
    external = check_model(model, path, sizes)
    has_external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as error:
            raise AnalogizeError(f"{path}: cannot read its external weight data ({str(error).splitlines()[0]}); "
                                 f"keep the data file next to the model") from None
        check_tensors(external, path)  # a length in the model's own record need not fit the shape
    return model, has_external


@contextlib.contextmanager
def _file_bytes(path: Path, mapped: bool):
    """The bytes of the file at ``path``: with ``mapped``, its pages mapped into memory for the block (read into a
    new buffer, as onnx.load reads a model, they cost a page fault each: reading a 29 MB model took longer than
    parsing it), else read. A file that cannot be mapped (empty, or on a file system without mmap) is read. Keep
    the block short (a parse): another process cutting the file short while it runs stops this one (SIGBUS),
    where a read would have given bytes that fail to parse."""
    pages = _mapped(path) if mapped else None
    if pages is None:
        yield path.read_bytes()
        return
    view = memoryview(pages)
    try:
        yield view
    finally:
        with contextlib.suppress(BufferError):  # a slice still held (by a traceback): the collector closes it
            view.release()
            pages.close()


def _mapped(path: Path) -> mmap.mmap | None:
    try:
        with open(path, "rb") as handle:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # the mapping outlives the handle
    except (ValueError, OSError):  # empty, or no mmap here: the caller reads the file (and reports its errors)
        return None


def _parsed(data, form: str) -> onnx.ModelProto:
    """The model in ``data`` (bytes, or a buffer of them for the protobuf form), as onnx.load parses it."""
    if form != "protobuf":
        return onnx.load_model_from_string(bytes(data), format=form)
    model = onnx.ModelProto()
    decoded = model.ParseFromString(data)
    if decoded is not None and decoded != len(data):
        raise DecodeError(f"Protobuf decoding consumed too few bytes: {decoded} out of {len(data)}")
    return model


# what onnx's text formats raise on text that is no model
_TEXT_PARSE_ERRORS = (google_text_format.ParseError, google_json_format.ParseError, onnx.parser.ParseError)


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


def refuse_overwrites(inputs: dict, outputs: dict, models=(), replaceable: str | None = None,
                      overwrite: bool = False) -> None:
    """Refuse, before any work, outputs that would replace an input or each other, or be written inside a folder
    that is an input: ``inputs`` and ``outputs`` map what to call each path in the message (a flag, "the model") to
    the path (None or "-": not a file). Paths are the same when they resolve to the same place or are the same
    file (a hard link). ``models`` names the inputs that are ONNX models: the files their external weights are
    kept in are inputs too. ``replaceable`` names the input that --overwrite lets ``-o`` replace: with
    ``overwrite``, ``-o`` may be that very file, and then the weight file written beside it may be one of that
    input's weight files; nothing else is ever replaced."""
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
    folders = {label: Path(path).resolve() for label, path in inputs.items()
               if path not in (None, "-") and os.path.isdir(path)}
    for label, path in outputs.items():
        inside = next((folder for folder in folders.items() if path not in (None, "-") and
                       folder[1] in Path(path).resolve().parents), None)
        if inside is not None:
            raise AnalogizeError(f"{label} {path} would be written inside {inside[1]}, the folder {inside[0]} reads; "
                                 f"choose a path outside it")
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
    committing = False
    try:
        yield
        committing = True  # from here _commit clears the staging directories: they may hold replaced files
        _commit(_held)
    finally:
        if not committing:
            for staging, _ in _held:
                shutil.rmtree(staging, ignore_errors=True)
        _held = outer


def _hand_over(staging: Path, moves: list, now: bool = False) -> None:
    if _held is None or now:
        _commit([(staging, moves)])
    else:
        _held.append((staging, moves))


def _commit(staged: list) -> None:
    """Move each staged file to its final path, all or nothing. A final path that exists swaps names with its
    staged file (:func:`_exchange`): it names the old file or the new one at every moment, and the old one waits
    in the staging directory until all are in, to be put back if a later move fails or the user interrupts. A new
    path is taken by a rename, and removed again on a failure. Where names cannot be swapped, a rename replaces
    the old file, which a failure then does not bring back (a hard link kept for it made onnx refuse the model's
    weight file, "multiple hard links", to every reader while a save ran)."""
    done = []  # (final path, where its old file now lies or None)
    try:
        for _, moves in staged:
            for source, target in moves:
                if _exchange(source, target):
                    done.append((target, source))
                else:
                    os.replace(source, target)
                    done.append((target, None))
    except BaseException as error:
        for moved, old in reversed(done):  # all or nothing: they were written together
            _put_back(moved, old)
        if isinstance(error, OSError):
            raise AnalogizeError(f"cannot write {target}: {error.strerror or error}") from None
        raise
    finally:
        for staging, moves in staged:
            _clear_staging(staging, moves)


def _put_back(moved: Path, old: Path | None) -> None:
    """Undo one move of :func:`_commit`: the new file goes, and the file it replaced (at ``old``, if any) comes
    back, swapped in, or renamed in where the final path has gone meanwhile."""
    try:
        if old is None:
            moved.unlink(missing_ok=True)
        elif not _exchange(old, moved):
            os.replace(old, moved)
    except (OSError, AnalogizeError):
        with contextlib.suppress(OSError):  # a directory made there meanwhile is someone's: the undo goes on
            moved.unlink(missing_ok=True)


def _clear_staging(staging: Path, moves: list | None = None) -> None:
    """Remove a staging directory after :func:`_commit`, but for a directory at a staged file's place: in a race,
    what a swap of names took from a final path may be one (someone's folder), which then stays there. Without
    ``moves`` (a staging directory a killed process left), every directory in it stays."""
    swapped = None if moves is None else {Path(source) for source, _ in moves}
    with contextlib.suppress(OSError), os.scandir(staging) as entries:
        for entry in list(entries):
            if not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif swapped is not None and Path(entry.path) not in swapped:
                shutil.rmtree(entry.path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(staging)


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
# what renameat2 answers where the path to swap with does not exist or names cannot be swapped: rename instead
_CANNOT_EXCHANGE = {errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM}


def _exchange(source: Path, target: Path) -> bool:
    """Swap the names ``source`` and ``target`` in one atomic step (Linux's ``renameat2`` with
    ``RENAME_EXCHANGE``); False, with nothing done, where ``target`` does not exist or the system or file system
    cannot swap names. A rename over an existing file makes ext4 start writing the new one out at once
    (auto_da_alloc), which made the rename of a model cost about half its write; a swap does not. Neither syncs
    to disk (nor does onnx.save). What ``target`` was must come out a regular file: anything else (a path that
    became a directory after the output was checked) is swapped back and refused."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in _CANNOT_EXCHANGE:
            return False
        raise OSError(code, os.strerror(code), str(target))
    if not stat.S_ISREG(os.lstat(source).st_mode):
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) != 0:
            raise AnalogizeError(f"cannot write {target}: it is no longer a regular file (it changed while the "
                                 f"command ran), and it could not be put back: it is now {source}")
        raise AnalogizeError(f"cannot write {target}: it is no longer a regular file (it changed while the command "
                             f"ran); give a file path")
    return True


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
            _clear_staging(directory / name)  # a folder in it may be one a swap of names took: it stays


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True
