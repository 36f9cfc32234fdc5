"""What a model is fed: one array per graph input, samples along the first axis, read from a data spec.

:func:`model_feeds` is how evaluate and calibration read their data. An ``npz:PATH`` holding one array per model
input, named after it, feeds those arrays as they are (cast to each input's element type; an optional ``y``
holds labels): the way in for models with several inputs or integer inputs (token ids, masks, lengths). An
array of one rank more than its input holds one whole input per sample (a recurrent state, a scalar such as a
sample rate): then every sample runs alone. Any
other spec is a dataset (:mod:`.datasets`) adapted to the model's one float input by
:func:`~.datasets.fit_to_input`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import AnalogizeError
from ..passes.model import fed_inputs
from .datasets import (INPUTS, LABELS, Dataset, Preprocessing, class_labels, data_path, evenly_spaced, fit_to_input,
                       input_dims, load_for_model, npz_archive)



@dataclass
class Feeds:
    """The arrays a model is fed, by input name, samples along axis 0; labels and what loading did."""

    name: str
    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    # inputs whose array holds one whole input per sample (one rank more than the input): they cannot be
    # batched along their first axis (a recurrent state [layers, batch, hidden], a scalar), so each sample runs alone
    whole: frozenset = frozenset()

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def shapes(self) -> dict[str, list[int]]:
        """Each input's per-sample shape."""
        return {name: list(array.shape[1:]) for name, array in self.arrays.items()}

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        """The feeds of samples ``start`` to ``start + size``; one sample at a time when inputs come whole."""
        if self.whole and size != 1:
            raise AnalogizeError(f"inputs {', '.join(sorted(self.whole))} come one whole input per sample, so each "
                                 f"sample runs alone (batch size 1)")
        return {name: np.asarray(array[start]) if name in self.whole else array[start:start + size]
                for name, array in self.arrays.items()}


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The batch size the model's inputs fix (a leading dimension with a size), or None when it is free."""
    for value in fed_inputs(model):
        dims = input_dims(value)
        if dims and dims[0] is not None:
            return dims[0]
    return None


def model_feeds(spec: str, model: onnx.ModelProto, preprocessing: Preprocessing = Preprocessing(),
                split: str | None = None, limit: int | None = None, what: str = "data",
                labels: bool = True) -> Feeds:
    """The data spec ``spec`` read for ``model``; ``what`` names the data in error messages; ``labels``: whether
    the caller scores labels (else ``y`` is neither read nor checked)."""
    inputs = fed_inputs(model)
    if not inputs:
        raise AnalogizeError("the model has no graph input to feed data to")
    for value in inputs:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise AnalogizeError(f"the model's input {value.name!r} is a {(kind or 'untyped').replace('_type', '')}"
                                 f", not a tensor; analogize feeds tensors only: give the model tensor inputs")
    if _takes_images(inputs) and not _names_its_input(spec, inputs[0].name):
        feeds = dataset_feeds(load_for_model(spec, model, preprocessing, split=split, limit=limit), model,
                              preprocessing)
        feeds.labels = feeds.labels if labels else None
        return checked_feeds(feeds, inputs, f"{what} {spec!r}")
    if split is not None:
        raise AnalogizeError("npz data has no train/test split; drop --split (or split the files yourself)")
    if preprocessing != Preprocessing():
        raise AnalogizeError("--layout, --resize, --channels, --input-mean and --input-std adapt images for a model "
                             "with one image or feature-vector input; this model's inputs are fed as given")
    arrays, y = _named_arrays(spec, inputs, what)
    feeds = checked_feeds(Feeds(Path(spec.partition(":")[2]).name, arrays, y if labels else None), inputs,
                          f"{what} {spec!r}")
    if limit is not None and limit < len(feeds):
        chosen = evenly_spaced(len(feeds), limit)
        feeds.arrays = {name: array[chosen] for name, array in feeds.arrays.items()}
        feeds.labels = None if feeds.labels is None else feeds.labels[chosen]
    return feeds


def _names_its_input(spec: str, name: str) -> bool:
    """Whether ``spec`` is an npz holding an array named after the model's lone input (other than ``x``, the
    name datasets give images): then it is fed as it is, not adapted as images."""
    kind, _, argument = spec.partition(":")
    if kind != "npz" or name == INPUTS or not data_path(argument).is_file():
        return False
    try:
        with npz_archive(data_path(argument), spec) as stored:
            return name in stored.files
    except AnalogizeError:  # the loader that reads it next says what is wrong
        return False


def _takes_images(inputs: list) -> bool:
    """Whether the model has one float input of rank 2 or 4: feature vectors or images, which datasets adapt."""
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return False
    return len(input_dims(inputs[0])) in (2, 4)


def dataset_feeds(dataset: Dataset, model: onnx.ModelProto, preprocessing: Preprocessing = Preprocessing()) -> Feeds:
    """A dataset adapted to the model's one float input."""
    x, notes = fit_to_input(dataset, model, preprocessing)
    return Feeds(dataset.name, {fed_inputs(model)[0].name: x}, dataset.y, notes)


def as_feeds(data: "Dataset | Feeds", model: onnx.ModelProto, preprocessing: Preprocessing = Preprocessing()) -> Feeds:
    """What the model is fed: ``data`` as it is when it is feeds already, else the dataset fitted to the model's
    one float input and checked against it."""
    if not isinstance(data, Dataset):
        return data
    return checked_feeds(dataset_feeds(data, model, preprocessing), fed_inputs(model), data.name)


def checked_feeds(feeds: Feeds, inputs: list, what: str) -> Feeds:
    """``feeds`` refused in one line unless every array has the same sample count, finite values, and the rank,
    fixed sizes and element type of its input (arrays are cast to that type where no value changes)."""
    flat = [name for name, array in feeds.arrays.items() if np.ndim(array) == 0]
    if flat:
        raise AnalogizeError(f"{what}: array {flat[0]!r} is a single number; store one sample per row (first axis: "
                             f"samples)")
    counts = {len(array) for array in feeds.arrays.values()}
    if len(counts) != 1:
        raise AnalogizeError(f"{what}: the input arrays hold different sample counts "
                             f"({', '.join(map(str, sorted(counts)))}); give each input the same number")
    if not len(feeds):
        raise AnalogizeError(f"{what}: the data holds no samples")
    whole = set()
    for value in inputs:
        feeds.arrays[value.name] = _as_input(feeds.arrays[value.name], value, what)
        if value.type.tensor_type.HasField("shape") and \
                feeds.arrays[value.name].ndim == len(value.type.tensor_type.shape.dim) + 1:
            whole.add(value.name)
    feeds.whole = frozenset(whole)
    if feeds.labels is not None:
        feeds.labels = class_labels(feeds.labels, len(feeds), what)
    return feeds


def _as_input(array: np.ndarray, value: onnx.ValueInfoProto, what: str) -> np.ndarray:
    tensor_type = value.type.tensor_type
    try:
        wanted = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except KeyError:
        raise AnalogizeError(f"the model's input {value.name!r} has element type {tensor_type.elem_type}, which "
                             f"cannot be fed from numpy arrays") from None
    if array.dtype.kind not in "biuf" or wanted.kind not in "biuf":
        raise AnalogizeError(f"{what}: array {value.name!r} holds {array.dtype} values and the model's input takes "
                             f"{wanted.name}; only numbers and booleans can be fed")
    if wanted.kind in "biu" and array.dtype.kind == "f":
        raise AnalogizeError(f"{what}: array {value.name!r} holds {array.dtype} values but the model's input "
                             f"takes {wanted.name}; store whole numbers in an integer array")
    if wanted.kind == "b" and array.dtype.kind != "b" and array.size and not np.isin(array, (0, 1)).all():
        raise AnalogizeError(f"{what}: array {value.name!r} feeds a boolean input but holds values other than 0 "
                             f"and 1")
    if wanted.kind in "iu" and array.dtype.kind != "b" and array.size and (
            array.min() < np.iinfo(wanted).min or array.max() > np.iinfo(wanted).max):
        raise AnalogizeError(f"{what}: array {value.name!r} holds values outside the {wanted.name} the model's "
                             f"input takes")
    dims = input_dims(value)
    # samples along the input's own first (batch) axis, or one whole input per sample on an extra first axis
    sample = dims[1:] if array.ndim == len(dims) else dims
    if tensor_type.HasField("shape") and (array.ndim not in (len(dims), len(dims) + 1) or any(
            want is not None and have != want for want, have in zip(sample, array.shape[1:]))):
        shown = tuple("?" if d is None else d for d in dims)
        raise AnalogizeError(f"{what}: array {value.name!r} of shape {array.shape} does not fit the model's "
                             f"input {shown}: give samples along its first axis, or one whole input per sample "
                             f"on an extra first axis")
    cast = np.ascontiguousarray(array, wanted)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():  # after the cast: float16 overflows to inf
        raise AnalogizeError(f"{what}: input {value.name!r} holds NaN or infinite values (or values too large for "
                             f"its {wanted.name}); clean the data first")
    return cast


def _named_arrays(spec: str, inputs: list, what: str) -> tuple[dict, np.ndarray | None]:
    """The arrays of an ``npz:PATH`` named after the model's inputs (``x`` standing for a lone input), and its
    labels ``y``; refused in one line when the spec is no npz or lacks an input."""
    names = [value.name for value in inputs]
    kind, _, argument = spec.partition(":")
    if kind != "npz" or not argument:
        if len(inputs) > 1:
            raise AnalogizeError(f"the model has {len(inputs)} inputs ({', '.join(names)}); give {what} as npz:PATH "
                                 f"holding one array per input, named {', '.join(names)} (and optionally y: labels)")
        tensor_type = inputs[0].type.tensor_type
        element = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name \
            if tensor_type.elem_type != onnx.TensorProto.FLOAT else f"rank-{len(input_dims(inputs[0]))} float32"
        raise AnalogizeError(f"the model's input {names[0]!r} takes {element} values, not images; give {what} as "
                             f"npz:PATH holding an array named {names[0]!r} (or 'x'; optionally y: labels)")
    path = data_path(argument)
    with npz_archive(path, spec, what) as stored:
        present = set(stored.files)
        if len(names) == 1 and names[0] not in present and INPUTS in present:
            arrays = {names[0]: stored[INPUTS]}
        else:
            missing = [name for name in names if name not in present]
            if missing:
                raise AnalogizeError(f"{what} {spec!r}: no array for the model's input(s) {', '.join(missing)}; "
                                     f"the archive holds {', '.join(sorted(present)) or 'nothing'}")
            arrays = {name: stored[name] for name in names}
        labels = stored[LABELS] if LABELS in present and LABELS not in names else None
    return arrays, labels

