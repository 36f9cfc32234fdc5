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

import contextlib
import importlib
import os
import pickle
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import AnalogizeError
from .model_io import load_model

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
    exporter: str = "legacy"
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
    if torch_import is not None and torch_import != TorchImport():
        raise AnalogizeError(f"{source} is an ONNX model: --input-shape, --state-dict, --exporter, --opset and "
                             f"--static-batch apply to torch models only")
    model, external = load_model(source)
    return model, external, None


def torch_to_onnx(source, options: TorchImport = TorchImport()) -> tuple[onnx.ModelProto, dict]:
    """The ONNX model of the torch model ``source``, and a record of how it was exported."""
    if options.exporter not in EXPORTERS:
        raise AnalogizeError(f"unknown exporter {options.exporter!r}: choose from {', '.join(EXPORTERS)}")
    try:
        import torch
    except ImportError:
        raise AnalogizeError("torch models need torch: pip install 'analogize[torch]'") from None
    path = Path(str(source))
    if path.is_file():
        kind = _archive_kind(path)
        if kind == "program":
            if options.exporter != "dynamo" and options.exporter != TorchImport.exporter:
                raise AnalogizeError("a .pt2 program exports with the dynamo exporter only; drop --exporter")
            module, example = _load_program(torch, path), None
            exporter = "dynamo"
        else:
            module, example, exporter = _load_script(torch, path), _example(torch, options, path), options.exporter
    else:
        if options.state_dict is None:
            raise AnalogizeError(f"{source}: a factory needs the trained weights: give --state-dict PATH (a "
                                 f"checkpoint of model.state_dict())")
        module, kind = _from_factory(torch, str(source), options.state_dict), "factory"
        example, exporter = _example(torch, options, source), options.exporter
    model = _export(torch, module, example, exporter, options)
    record = {"from": str(source), "kind": kind, "exporter": exporter, "opset": options.opset,
              "dynamic_batch": options.dynamic_batch if kind != "program" else "as the program was exported",
              "input_shape": None if example is None else list(example.shape[1:])}
    if options.state_dict:
        record["state_dict"] = options.state_dict
    return model, record


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


def _load_program(torch, path: Path):
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
    if os.getcwd() not in sys.path:  # as `python -m` does: the user's own modules where they run the command
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except ImportError as error:
        raise AnalogizeError(f"{source}: cannot import {module_name} ({error}); run from the folder that holds it "
                             f"or install it") from None
    except AttributeError:
        raise AnalogizeError(f"{source}: module {module_name} has no {factory_name}") from None
    try:
        module = factory()
    except Exception as error:  # the user's own code: say where it failed, in one line
        raise AnalogizeError(f"{source}() failed: {type(error).__name__}: {error}") from None
    if not isinstance(module, torch.nn.Module):
        raise AnalogizeError(f"{source} returned a {type(module).__name__}, not a torch.nn.Module")
    try:
        weights = torch.load(state_dict, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AnalogizeError(f"--state-dict {state_dict}: no such file") from None
    except Exception as error:
        raise AnalogizeError(f"--state-dict {state_dict} is not a checkpoint of tensors ({type(error).__name__}); "
                             f"save it with torch.save(model.state_dict(), path)") from None
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]  # the Lightning-style wrapper
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AnalogizeError(f"--state-dict {state_dict} does not fit {source}: {first}") from None
    return module.eval()


def _example(torch, options: TorchImport, source):
    if options.input_shape is None:
        raise AnalogizeError(f"{source}: give --input-shape (one sample's shape without the batch, e.g. 3,224,224) "
                             f"to export the model with")
    return torch.zeros(2, *options.input_shape)


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

