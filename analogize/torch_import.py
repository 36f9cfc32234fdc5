"""Trained PyTorch models in: a ``torch.export`` program (``.pt2``), a TorchScript file, or ``module.path:factory``
plus a state-dict checkpoint, exported to ONNX in memory so that convert, evaluate and finetune proceed as with
any ONNX model.

What runs, and what is only read: a ``.pt2`` program and a TorchScript file are read as data (torch's loaders
with every pickle path restricted to tensors, so a file cannot run Python of its own; TorchScript code runs in
TorchScript's interpreter, not Python's); a state dict is read with ``torch.load(weights_only=True)``; the one
Python that runs is the factory the user names, imported as ``import module.path``. A whole pickled module
(``torch.save(model)``) is refused: unpickling it would run code from the file.

Exporters: TorchScript and factory models go through ``torch.onnx``'s TorchScript-based exporter ("legacy",
the default, as :func:`analogize.zoo.export_onnx`) or "dynamo"; a ``.pt2`` program through "dynamo", the only
one that takes programs. Opset 18 unless told, batch axis dynamic unless ``dynamic_batch`` is off.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import AnalogizeError
from .model_io import load_model
from .untrusted import check_regular_file

EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = 18
# what torch.save, torch.jit.save and torch.export.save put in their zip archives
_PROGRAM_MARK, _SCRIPT_MARK, _PICKLE_MARK = "archive_format", "/code/", "data.pkl"


@dataclass(frozen=True)
class TorchImport:
    """How a torch model becomes ONNX: the flags ``--input-shape``, ``--state-dict``, ``--exporter``, ``--opset``
    and ``--static-batch``."""

    input_shape: tuple[int, ...] | None = None  # one sample's shape, without the batch axis
    state_dict: str | None = None
    exporter: str | None = None  # None: legacy, or dynamo for a program
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True


def is_torch_source(source) -> bool:
    """Whether ``source`` names a torch model: a zip archive torch wrote, or ``module.path:factory``."""
    text = str(source)
    path = Path(text)
    if path.is_file():
        return zipfile.is_zipfile(path)
    module, separator, factory = text.rpartition(":")
    return bool(separator and module and factory.isidentifier() and all(part.isidentifier()
                                                                        for part in module.split(".")))


def load_any_model(source, torch_import=None) -> tuple[onnx.ModelProto, bool, dict | None]:
    """An ONNX file, or a torch model (:mod:`analogize.torch_import`: ``.pt2``, TorchScript, or
    ``module.path:factory``) exported to ONNX with ``torch_import``'s settings: the model, whether it stored its
    weights as external data, and how it was exported (None for ONNX)."""
    if Path(str(source)).suffix.lower() != ".onnx" and is_torch_source(source):
        model, record = torch_to_onnx(source, torch_import or TorchImport())
        return model, False, record
    if torch_import is not None and torch_import != TorchImport() and Path(str(source)).is_file():
        raise AnalogizeError(f"{source} is an ONNX model: --input-shape, --state-dict, --exporter, --opset and "
                             f"--static-batch apply to torch models only")
    model, external = load_model(source)
    return model, external, None


def torch_to_onnx(source, options: TorchImport = TorchImport()) -> tuple[onnx.ModelProto, dict]:
    """The ONNX model of the torch model ``source``, and a record of how it was exported."""
    if options.exporter not in (None, *EXPORTERS):
        raise AnalogizeError(f"unknown exporter {options.exporter!r}: choose from {', '.join(EXPORTERS)}")
    try:
        import torch
    except ImportError:
        raise AnalogizeError("torch models need torch: pip install 'analogize[torch]'") from None
    path = Path(str(source))
    kind = _archive_kind(path) if path.is_file() else "factory"
    _check_flags(kind, options)
    with _quiet_torch_logs():
        if kind == "program":
            module, example, exporter = _load_program(torch, path), None, "dynamo"
        elif kind == "torchscript":
            module, example, exporter = _load_script(torch, path), _example(torch, options, path), "legacy"
        else:
            module = _from_factory(torch, str(source), options.state_dict)
            example, exporter = _example(torch, options, source), options.exporter or "legacy"
        model = _export(torch, module, example, exporter, options)
    record = {"from": str(source), "kind": kind, "exporter": exporter, "opset": options.opset,
              "dynamic_batch": options.dynamic_batch if kind != "program" else "as the program was exported",
              "input_shape": None if example is None else list(example.shape[1:])}
    if options.state_dict:
        record["state_dict"] = options.state_dict
    return model, record


def _check_flags(kind: str, options: TorchImport) -> None:
    """Refuse flags the form of torch model cannot use, rather than ignore them."""
    if kind == "factory" and options.state_dict is None:
        raise AnalogizeError("a factory needs the trained weights: give --state-dict PATH (a checkpoint of "
                             "model.state_dict())")
    if kind != "factory" and options.state_dict is not None:
        raise AnalogizeError(f"--state-dict goes with a module.path:factory model; a {kind} file carries its "
                             f"weights")
    if kind == "program" and (options.input_shape or not options.dynamic_batch or options.exporter == "legacy"):
        raise AnalogizeError("a .pt2 program exports with the shapes it was exported with, through the dynamo "
                             "exporter: drop --input-shape, --static-batch and --exporter")
    if kind == "torchscript" and options.exporter == "dynamo":
        raise AnalogizeError("TorchScript exports through the legacy exporter only (torch.export does not take "
                             "ScriptModules): drop --exporter dynamo")


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.onnx and torch.export log warnings (a missing torchvision, package probes) that are not the user's."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _archive_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        raise AnalogizeError(f"{path} is not a readable torch archive ({error})") from None
    if any(name.endswith(_PROGRAM_MARK) for name in names):
        return "program"
    if any(_SCRIPT_MARK in name for name in names):
        return "torchscript"
    if any(name.endswith(_PICKLE_MARK) for name in names):
        raise AnalogizeError(f"{path} is a torch.save checkpoint (a state dict or a pickled module), which holds no "
                             f"network to run: give module.path:factory as the model and this file as "
                             f"--state-dict, or save the model with torch.export.save or torch.jit.save")
    raise AnalogizeError(f"{path} is a zip archive but not one torch wrote (no program, TorchScript or "
                         f"checkpoint inside)")


def _refuse_pickle(*_, **__):
    raise pickle.UnpicklingError("refusing to unpickle Python objects from a model file")


@contextlib.contextmanager
def _tensors_only(torch):
    """torch's loaders with every pickle path limited to tensors (``weights_only``) for the duration."""
    load, loads, load_object = torch.load, pickle.loads, torch._C._pickle_load_obj

    def weights_only(*args, **kwargs):
        kwargs["weights_only"] = True
        return load(*args, **kwargs)

    torch.load, pickle.loads, torch._C._pickle_load_obj = weights_only, _refuse_pickle, _refuse_pickle
    try:
        yield
    finally:
        torch.load, pickle.loads, torch._C._pickle_load_obj = load, loads, load_object


# what a program's JSON may hold where torch.export.load hands strings to sympy.sympify (an eval) or resolves
# them to callables: arithmetic on shape symbols, calls of sympy's capitalised classes, and ops' qualified names
_EXPRESSION_NODES = (ast.Expression, ast.Call, ast.Name, ast.Constant, ast.BinOp, ast.UnaryOp, ast.keyword,
                     ast.Load, ast.operator, ast.unaryop, ast.BoolOp, ast.boolop, ast.Compare, ast.cmpop)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TARGET_PREFIXES = ("torch.ops.", "_operator.", "math.", "torch.sym_", "torch._sym_")


def _safe_expression(text) -> bool:
    try:
        tree = ast.parse(str(text), mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _EXPRESSION_NODES):
            return False
        if isinstance(node, ast.Name) and (node.id.startswith("_") or not _IDENTIFIER.match(node.id)):
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id[:1].isupper()):
            return False
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _IDENTIFIER.match(node.value):
            return False
    return True


def _check_program(path: Path) -> None:
    """Refuse a program whose graph JSON holds anything torch's loader would evaluate beyond shape arithmetic,
    or would resolve to a callable outside torch's op registry."""
    problems = []

    def walk(value, key=None):
        if isinstance(value, dict):
            for name, item in value.items():
                if key == "range_constraints" and not _IDENTIFIER.match(str(name)):
                    problems.append(f"range constraint {str(name)[:40]!r}")
                walk(item, name)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)
        elif key == "expr_str" and not _safe_expression(value):
            problems.append(f"shape expression {str(value)[:60]!r}")
        elif key == "target" and isinstance(value, str) and not value.startswith(_TARGET_PREFIXES):
            problems.append(f"call target {value[:60]!r}")
        elif key == "guards_code" and value:
            problems.append("guard code")

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/models/" in f"/{name}" and name.endswith(".json"):
                try:
                    walk(json.loads(archive.read(name)))
                except (ValueError, UnicodeDecodeError):
                    problems.append(f"unreadable {name}")
    if problems:
        raise AnalogizeError(f"{path}: the program holds {problems[0]}, which torch.export.load would evaluate as "
                             f"Python; analogize loads only shape arithmetic and torch ops (re-export it with "
                             f"torch.export)")


def _load_program(torch, path: Path):
    _check_program(path)
    try:
        with _tensors_only(torch), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except pickle.UnpicklingError as error:
        raise AnalogizeError(f"{path}: the program holds pickled Python objects, which analogize does not load "
                             f"(they could run code): {error}") from None
    except Exception as error:  # torch raises many types for a damaged or foreign archive
        raise AnalogizeError(f"{path} is not a loadable torch.export program ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None


def _load_script(torch, path: Path):
    try:
        with _tensors_only(torch):
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:
        raise AnalogizeError(f"{path} is not a loadable TorchScript file ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None


def _from_factory(torch, source: str, state_dict: str):
    module_name, _, factory_name = source.rpartition(":")
    added = os.getcwd() not in sys.path
    if added:  # as `python -m` does: the user's own modules where they run the command
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
        module = factory()
    except ModuleNotFoundError as error:
        raise AnalogizeError(f"{source}: cannot import {module_name} ({error}); run from the folder that holds it "
                             f"or install it") from None
    except AttributeError as error:
        raise AnalogizeError(f"{source}: {_first_line(error)}") from None
    except (Exception, SystemExit) as error:  # the user's own code, importing or building: one line of it
        raise AnalogizeError(f"{source} failed: {type(error).__name__}: {_first_line(error)}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if not isinstance(module, torch.nn.Module):
        raise AnalogizeError(f"{source} returned a {type(module).__name__}, not a torch.nn.Module")
    check_regular_file(state_dict, "--state-dict", "give the file torch.save(model.state_dict(), path) wrote")
    try:
        weights = torch.load(state_dict, map_location="cpu", weights_only=True)
    except Exception as error:
        raise AnalogizeError(f"--state-dict {state_dict} is not a checkpoint of tensors ({type(error).__name__}: "
                             f"{_first_line(error)}); save it with torch.save(model.state_dict(), path)") from None
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]  # the Lightning-style wrapper
    if not isinstance(weights, dict):
        raise AnalogizeError(f"--state-dict {state_dict} holds a {type(weights).__name__}, not a state dict")
    weights = _without_wrapper_prefix(weights, module.state_dict())
    missing, unexpected = module.state_dict().keys() - weights.keys(), weights.keys() - module.state_dict().keys()
    if missing or unexpected:
        raise AnalogizeError(f"--state-dict {state_dict} does not fit {source}: " + "; ".join(filter(None, [
            f"missing {', '.join(sorted(missing)[:5])}" + (" ..." if len(missing) > 5 else "") if missing else "",
            f"unexpected {', '.join(sorted(unexpected)[:5])}" + (" ..." if len(unexpected) > 5 else "")
            if unexpected else ""])))
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError) as error:
        shapes = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise AnalogizeError(f"--state-dict {state_dict} does not fit {source}: "
                             f"{'; '.join(shapes[:3]) or _first_line(error)}") from None
    return module.eval()


def _without_wrapper_prefix(weights: dict, wanted: dict) -> dict:
    """The weights with one wrapper prefix (``model.``, ``module.``) taken off when that alone makes them fit."""
    if weights.keys() == wanted.keys():
        return weights
    for prefix in ("model.", "module.", "net."):
        stripped = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
        if stripped.keys() == wanted.keys():
            return stripped
    return weights


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _example(torch, options: TorchImport, source):
    if options.input_shape is None:
        raise AnalogizeError(f"{source}: give --input-shape (one sample's shape without the batch, e.g. 3,224,224) "
                             f"to export the model with")
    # batch 2 for a dynamic batch axis: exporters specialise a size-1 axis to a constant
    return torch.zeros(2 if options.dynamic_batch else 1, *options.input_shape)


def _export(torch, module, example, exporter: str, options: TorchImport) -> onnx.ModelProto:
    """``module`` exported to ONNX in a temporary folder and read back."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "exported.onnx"
        try:
            if example is None:  # a program carries its own example inputs and dynamic shapes
                torch.onnx.export(module, (), str(path), opset_version=options.opset, dynamo=True, verbose=False,
                                  external_data=False)
            elif exporter == "legacy":
                axes = {"input": {0: "batch"}, "output": {0: "batch"}} if options.dynamic_batch else None
                torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                                  dynamic_axes=axes, opset_version=options.opset, dynamo=False)
            else:
                shapes = ({0: torch.export.Dim("batch", min=1)},) if options.dynamic_batch else None
                torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                                  dynamic_shapes=shapes, opset_version=options.opset, dynamo=True, verbose=False,
                                  external_data=False)
        except AnalogizeError:
            raise
        except Exception as error:
            raise AnalogizeError(f"torch.onnx ({exporter} exporter) could not export the model: "
                                 f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") \
                from None
        model, _ = load_model(path)
        return model

