"""Datasets read from disk (or scikit-learn's digits) and fitted to a model's input.

``load_dataset(spec)`` decodes a data spec into a :class:`Dataset`: images as float32 in [0, 1] (NCHW when
the source says so), integer labels or ``None``. ``fit_to_input`` then adapts the images to what the model
expects (layout, channel count, size, normalisation), inferring each from the model's input where the user
gives nothing. Specs:

- ``digits``: scikit-learn's 1797 real 8x8 handwritten digits (split reproducibly into train and test);
- ``npz:PATH``: arrays ``x`` (inputs) and optionally ``y`` (labels);
- ``cifar10:DIR``: the CIFAR-10 python batches (``DIR`` or ``DIR/cifar-10-batches-py``);
- ``imagefolder:DIR``: one sub-folder per class (sorted names give the labels) or images alone (no labels).
"""
from __future__ import annotations

import contextlib
import math
import pickle
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import AnalogizeError
from ..passes.model import fed_inputs
from ..untrusted import check_regular_file

DIGITS_TEST_FRACTION = 0.25
SPLITS = ("train", "test", "all")
INPUTS, LABELS = "x", "y"  # the npz arrays of a dataset: its samples (images or feature vectors) and labels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LAYOUTS = ("auto", "nchw", "nhwc")
_CHANNEL_COUNTS = (1, 3, 4)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, what PIL's "L" conversion uses


@dataclass
class Dataset:
    name: str
    x: np.ndarray
    y: np.ndarray | None
    layout: str  # nchw, nhwc (images) or flat
    class_names: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()  # what loading did to the values, reported with the results

    def __len__(self) -> int:
        return len(self.x)


def input_dims(value: onnx.ValueInfoProto) -> tuple:
    """A graph input's dimensions, ``None`` for each that is symbolic or not a size (exporters store -1 and 0 for
    "any")."""
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in value.type.tensor_type.shape.dim)


@dataclass(frozen=True)
class InputSpec:
    """A model's first graph input: name and shape (``None`` for a symbolic dimension)."""

    name: str
    shape: tuple

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "InputSpec":
        inputs = fed_inputs(model)
        if not inputs:
            raise AnalogizeError("the model has no graph input to feed data to")
        if len(inputs) > 1:
            raise AnalogizeError(f"the model has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); images "
                                 f"feed models with one input: give npz:PATH holding one array per input, named "
                                 f"after it")
        value = inputs[0]
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise AnalogizeError(f"the model's input {value.name!r} is not float32; only float32 inputs are supported")
        return cls(value.name, input_dims(value))


@dataclass(frozen=True)
class Preprocessing:
    """How images are adapted to the model; ``None`` fields are inferred from the model's input."""

    layout: str = "auto"
    size: tuple[int, int] | None = None  # (height, width)
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


SPLIT_SOURCES = ("digits", "cifar10")  # the sources that come with a train/test split


def load_dataset(spec: str, split: str | None = None, limit: int | None = None, seed: int = 0,
                 image_size: tuple[int, int] | None = None, channels: int | None = None) -> Dataset:
    """Decode ``spec``; ``image_size`` and ``channels`` tell the image-folder loader what to decode to.

    ``split`` (default ``test``) applies to digits and cifar10. ``limit`` keeps that many samples evenly
    spaced over the dataset, so a quick look still sees every class of a folder sorted by class.
    """
    kind = spec.partition(":")[0]
    if split is not None and kind in _LOADERS and kind not in SPLIT_SOURCES:
        raise AnalogizeError(f"{kind} data has no train/test split; drop --split (or split the files yourself)")
    split = split or "test"
    if split not in SPLITS:
        raise AnalogizeError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise AnalogizeError(f"--limit must be at least 1, got {limit}")
    kind, _, argument = spec.partition(":")
    if kind == "digits" and not argument:
        x, y = digits(split, seed)
        dataset = Dataset("digits", x, y, "nchw", tuple(str(k) for k in range(10)))
    elif kind in _LOADERS and argument:
        path = data_path(argument)
        if not path.exists():
            raise AnalogizeError(f"data path {path} does not exist; check the --data spec {spec!r}")
        dataset = _LOADERS[kind](path, split, image_size, channels)
    else:
        raise AnalogizeError(f"unknown data spec {spec!r}: use digits, npz:PATH, cifar10:DIR or imagefolder:DIR")
    if dataset.y is not None:
        dataset.y = class_labels(dataset.y, len(dataset.x), dataset.name)
    if limit is not None and limit < len(dataset):
        chosen = evenly_spaced(len(dataset), limit)
        dataset.x = dataset.x[chosen]
        dataset.y = None if dataset.y is None else dataset.y[chosen]
    return dataset


def evenly_spaced(count: int, limit: int) -> np.ndarray:
    """``limit`` indices spread evenly over ``count`` samples (first and last included)."""
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def digits(split: str = "test", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 handwritten digits (1 x 8 x 8, values / 16), split reproducibly.

    ``split`` is ``train``, ``test`` (a fixed, class-stratified quarter) or ``all``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise AnalogizeError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    if split not in SPLITS:
        raise AnalogizeError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    if split == "all":
        return x, y
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(len(members) * DIGITS_TEST_FRACTION)]] = True
    chosen = test if split == "test" else ~test
    return x[chosen], y[chosen]


def spec_file(spec: str | None) -> Path | None:
    """The file or folder a data spec reads, when it names one (``npz:PATH``, ``cifar10:DIR``,
    ``imagefolder:DIR``): an output must not replace it, nor be written inside it."""
    kind, _, argument = (spec or "").partition(":")
    return data_path(argument) if kind in _LOADERS and argument else None


def data_path(argument: str) -> Path:
    """The path a data spec names, ``~`` expanded (pathlib raises a bare RuntimeError for ``~user`` of no such
    user, or where there is no home directory)."""
    try:
        return Path(argument).expanduser()
    except RuntimeError:
        raise AnalogizeError(f"data path {argument}: '~' names no home directory here (no such user); give the "
                             f"path in full") from None


def _load_npz(path: Path, split, image_size, channels) -> Dataset:
    with npz_archive(path, f"npz:{path}") as arrays:
        names = list(arrays.keys())
        if INPUTS not in names:
            raise AnalogizeError(f"{path} holds arrays {', '.join(names) or '(none)'}; expected '{INPUTS}' "
                                 f"(inputs) and optionally '{LABELS}' (labels)")
        x, y = arrays[INPUTS], arrays[LABELS] if LABELS in names else None
    if not 2 <= x.ndim <= 4 or 0 in x.shape:  # no samples, or samples of nothing (resized, they were made up)
        raise AnalogizeError(f"{path}: 'x' has shape {x.shape}; expected (N, C, H, W), (N, H, W, C), (N, H, W) "
                             f"or (N, features), none of them 0")
    layout = "flat" if x.ndim == 2 else _guess_layout(x.shape)
    if x.ndim == 3:
        x = x[:, None]
    notes = () if x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating) else (
        f"{x.dtype} inputs used as they are (only uint8 is divided by 255; rescale with --input-std)",)
    return Dataset(path.name, _to_unit_float(x), None if y is None else y, layout, notes=notes)


_NPY_MAGIC = b"\x93NUMPY"
_DEFLATE_MOST = 1032  # the most DEFLATE expands: 258 bytes from one code of about 2 bits


@contextlib.contextmanager
def npz_archive(path: Path, spec: str, what: str = "data"):
    """The named arrays of the .npz archive at ``path`` (``np.load``, data only), refused in one line when it is
    missing, no regular file, a bare .npy, or damaged, also where the damage shows only as an array is read; and
    when an array's header claims more values than the archive stores, since numpy allocates what the header
    claims before it reads."""
    hint = "save it with numpy.savez(path, x=...)"
    check_regular_file(path, f"{what} file", f"check the spec {spec!r}")
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(_NPY_MAGIC))
        if start == _NPY_MAGIC:
            raise AnalogizeError(f"{what} {spec!r}: {path} holds one bare array, not an .npz archive of named "
                                 f"arrays; {hint}")
        if not start.startswith(b"PK"):
            raise AnalogizeError(f"{what} {spec!r}: {path} is not a readable .npz archive (no zip file of .npy "
                                 f"arrays); {hint}")
        with np.load(path, allow_pickle=False) as stored:
            size = path.stat().st_size
            for info in stored.zip.infolist():
                _check_claim(stored.zip, info, size)
            yield stored
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, tokenize.TokenError) as error:
        if isinstance(error, tokenize.TokenError):  # numpy reads a .npy header as Python tokens: one ends mid-way
            reason = f"an array's header is damaged: {error.args[0] if error.args else 'it ends mid-way'}"
        else:
            reason = str(error).splitlines()[0][:150] if str(error) else type(error).__name__
        raise AnalogizeError(f"{what} {spec!r}: {path} is not a readable .npz archive ({reason}); {hint}") from None


def _check_claim(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int) -> None:
    """ValueError when the member ``info`` is no .npy array or claims more bytes than the archive can hold for
    it: every member counts, since numpy serves one without the .npy suffix too (as an array if it holds one,
    else as bytes)."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
        except ValueError:
            raise ValueError(f"its member {info.filename!r} is not a .npy array") from None
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(member)
        # the zip's own size field is the file's to claim too: bound it by what the archive's bytes can hold
        stored = info.file_size
        if info.compress_type == zipfile.ZIP_STORED:
            stored = min(stored, archive_size)
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            stored = min(stored, min(info.compress_size, archive_size) * _DEFLATE_MOST)
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > stored - member.tell():
            raise ValueError(f"{info.filename} claims shape {shape}, {claimed} bytes, but the archive holds at most "
                             f"{max(stored - member.tell(), 0)} for it")


def _guess_layout(shape) -> str:
    if len(shape) == 3:
        return "nchw"
    if shape[1] in _CHANNEL_COUNTS and shape[3] not in _CHANNEL_COUNTS:
        return "nchw"
    if shape[3] in _CHANNEL_COUNTS:
        return "nhwc"
    return "nchw"


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise AnalogizeError(f"inputs of dtype {x.dtype} are not numbers; store images as uint8 or floats")
    return x.astype(np.float32)


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow only what they hold (dicts, lists, numpy arrays), never code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar10(path: Path, split, image_size, channels) -> Dataset:
    directory = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    names = {"test": ["test_batch"], "train": [f"data_batch_{k}" for k in range(1, 6)]}
    names["all"] = names["train"] + names["test"]
    missing = [n for n in names[split] if not (directory / n).is_file()]
    if missing:
        raise AnalogizeError(f"{directory} has no {', '.join(missing)}: point cifar10: at the extracted "
                             f"CIFAR-10 python batches (cifar-10-batches-py)")
    xs, ys = [], []
    for name in names[split]:
        try:
            with open(directory / name, "rb") as handle:
                batch = _BatchUnpickler(handle, encoding="bytes").load()
            images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[b"labels"], np.int64).reshape(-1)
            if len(labels) != len(images):
                raise ValueError(f"{len(images)} images but {len(labels)} labels")
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, OSError, ValueError) as error:
            raise AnalogizeError(f"{directory / name} is not a CIFAR-10 python batch ({error})") from None
        xs.append(images)
        ys.append(labels)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    return Dataset(f"cifar10-{split}", np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys), "nchw",
                   classes)


def _load_image_folder(path: Path, split, image_size, channels) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise AnalogizeError(f"{path} is not a directory; imagefolder: takes a folder of class sub-folders")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        files = [(f, label) for label, d in enumerate(class_dirs) for f in sorted(d.iterdir()) if _is_image(f)]
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if _is_image(f)]
    if not files:
        raise AnalogizeError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for file, _ in files:
        try:
            with Image.open(file, formats=_RASTER_FORMATS) as image:
                image = image.convert(mode)
                if image_size is not None and image.size != (image_size[1], image_size[0]):
                    image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
                array = np.asarray(image, np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            # ValueError: PIL's limits on a PNG's text and ICC chunks, among others
            reason = str(error).splitlines()[0][:150] if str(error) else type(error).__name__
            raise AnalogizeError(f"cannot read image {file}: {reason}; give images in one of the formats "
                                 f"{', '.join(_RASTER_FORMATS)}, whole and of a sane size") from None
        if images and array.shape != images[0].shape:
            raise AnalogizeError(f"{file} is {array.shape[1]}x{array.shape[0]} but {files[0][0]} is "
                                 f"{images[0].shape[1]}x{images[0].shape[0]}; give --resize HxW")
        images.append(array)
    x = np.stack(images).astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    labels = np.array([label for _, label in files], np.int64) if class_dirs else None
    return Dataset(path.name, x, labels, "nchw", tuple(d.name for d in class_dirs) if class_dirs else None)


# The decoders an image folder's files go to, whatever their content claims: PIL would hand EPS content to
# Ghostscript, a PostScript interpreter, under any name
_RASTER_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


_LOADERS = {"npz": _load_npz, "cifar10": _load_cifar10, "imagefolder": _load_image_folder}


def class_labels(y: np.ndarray, samples: int, name: str) -> np.ndarray:
    """``y`` as int64 class indices, one per sample; refused in one line when it is not."""
    if y.shape != (samples,):
        raise AnalogizeError(f"{name}: labels 'y' has shape {y.shape} but there are {samples} samples; expected "
                             f"({samples},)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise AnalogizeError(f"{name}: labels must be whole class indices, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise AnalogizeError(f"{name}: labels must be class indices >= 0, found {y.min():g}")
    if len(y) and y.max() >= 2**63:  # past int64 (uint64, or floats): the cast would wrap them, or make garbage
        raise AnalogizeError(f"{name}: labels go up to {y.max():g}, past any class index; check that 'y' holds "
                             f"class indices")
    return y.astype(np.int64)


def model_layout(spec: InputSpec, requested: str = "auto") -> str:
    """``nchw``/``nhwc`` for image models (inferred from which axis looks like channels), ``flat`` for rank 2."""
    if requested not in LAYOUTS:
        raise AnalogizeError(f"unknown layout {requested!r}: choose from {', '.join(LAYOUTS)}")
    if len(spec.shape) == 2:
        return "flat"
    if len(spec.shape) != 4:
        raise AnalogizeError(f"the model's input {spec.name!r} has rank {len(spec.shape)}; evaluate feeds images "
                             f"(rank 4) or feature vectors (rank 2)")
    if requested != "auto":
        return requested
    second, last = spec.shape[1], spec.shape[3]
    return "nhwc" if last in _CHANNEL_COUNTS and second not in _CHANNEL_COUNTS else "nchw"


def decode_hints(model: onnx.ModelProto, preprocessing: Preprocessing) -> tuple[tuple[int, int] | None, int | None]:
    """The image size and channel count a loader that decodes files should produce for this model."""
    spec = InputSpec.of(model)
    layout = model_layout(spec, preprocessing.layout)
    if layout == "flat":
        return preprocessing.size, preprocessing.channels
    channels = spec.shape[1] if layout == "nchw" else spec.shape[3]
    size = _image_size(spec, layout, preprocessing)
    return size if None not in size else None, preprocessing.channels or channels


def _image_size(spec: InputSpec, layout: str, preprocessing: Preprocessing) -> tuple:
    """The height and width images are fed at: --resize, else the model's (None where it leaves a side open). A
    --resize the model's fixed size refuses is refused before any image is decoded or resized to it."""
    fixed = tuple(spec.shape[2:4] if layout == "nchw" else spec.shape[1:3])
    size = preprocessing.size
    if size is not None and any(side is not None and side != wanted for side, wanted in zip(fixed, size)):
        shown = "x".join("?" if side is None else str(side) for side in fixed)
        raise AnalogizeError(f"--resize {size[0]}x{size[1]}: the model's input {spec.name!r} takes {shown} images; "
                             f"leave out --resize (images are resized to the model's size)")
    return tuple(size or fixed)


def load_for_model(spec: str, model: onnx.ModelProto, preprocessing: Preprocessing = Preprocessing(),
                   split: str | None = None, limit: int | None = None) -> Dataset:
    """:func:`load_dataset`, decoding image files at the size and channel count ``model`` takes."""
    image_size, channels = decode_hints(model, preprocessing)
    return load_dataset(spec, split=split, limit=limit, image_size=image_size, channels=channels)


def fit_to_input(dataset: Dataset, model: onnx.ModelProto,
                 preprocessing: Preprocessing = Preprocessing()) -> tuple[np.ndarray, list[str]]:
    """The dataset's inputs in the layout, channel count, size and normalisation the model's input takes,
    and a note of each change made to the data on the way (so results say what the model was fed)."""
    spec = InputSpec.of(model)
    layout = model_layout(spec, preprocessing.layout)
    x = dataset.x
    if layout == "flat" and (preprocessing.size or preprocessing.channels):
        raise AnalogizeError("the model takes feature vectors (rank-2 input); --resize and --channels apply to "
                             "image models only")
    x, notes = _fit(dataset, x, spec, layout, preprocessing)
    return x, list(dataset.notes) + notes


def _fit(dataset: Dataset, x: np.ndarray, spec: InputSpec, layout: str, preprocessing: Preprocessing):
    if layout == "flat":
        features = spec.shape[1]
        x = x.reshape(len(x), -1)
        if features is not None and x.shape[1] != features:
            raise AnalogizeError(f"{dataset.name}: samples have {x.shape[1]} values but the model's input "
                                 f"{spec.name!r} takes {features}; check the data or the model")
        return np.ascontiguousarray(_normalise(x, preprocessing, channel_axis=None)), []
    if dataset.layout == "flat":
        wanted = spec.shape[1:]
        if None in wanted or int(np.prod(wanted)) != x.shape[1]:
            raise AnalogizeError(f"{dataset.name}: flat samples of {x.shape[1]} values cannot be shaped to the "
                                 f"model's input {spec.shape}; store x as images (N, C, H, W)")
        x = x.reshape(len(x), *spec.shape[1:])
        return (np.ascontiguousarray(_normalise(x, preprocessing, channel_axis=1 if layout == "nchw" else 3)),
                [f"flat samples reshaped to {spec.shape[1:]}"])
    notes = []
    if dataset.layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    channels = preprocessing.channels or (spec.shape[1] if layout == "nchw" else spec.shape[3])
    if channels is not None and channels != x.shape[1]:
        notes.append(f"{x.shape[1]} -> {channels} channels" + (" (BT.601 luma)" if channels == 1 else ""))
        x = _adapt_channels(x, channels, dataset.name)
    size = _image_size(spec, layout, preprocessing)
    if None not in size and tuple(x.shape[2:]) != tuple(size):
        notes.append(f"resized {x.shape[2]}x{x.shape[3]} -> {size[0]}x{size[1]} (bilinear)")
        x = _resize(x, size)
    x = _normalise(x, preprocessing, channel_axis=1)
    if preprocessing.mean is not None or preprocessing.std is not None:
        notes.append(f"normalised with mean {preprocessing.mean or (0.0,)}, std {preprocessing.std or (1.0,)}")
    if layout != dataset.layout:
        notes.append(f"{dataset.layout.upper()} -> {layout.upper()}")
    if layout == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, np.float32), notes


def _adapt_channels(x: np.ndarray, channels: int | None, name: str) -> np.ndarray:
    have = x.shape[1]
    if channels is None or channels == have:
        return x
    if have == 4 and channels in (1, 3):
        x, have = x[:, :3], 3
    if have == 3 and channels == 1:
        return np.tensordot(x, _LUMA, axes=([1], [0]))[:, None].astype(np.float32)
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    if have == channels:
        return x
    raise AnalogizeError(f"{name}: images have {have} channels but the model takes {channels}; "
                         f"convert the data or pass --channels")


def _resize(x: np.ndarray, size) -> np.ndarray:
    from PIL import Image

    height, width = size
    out = np.empty((*x.shape[:2], height, width), np.float32)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(x[n, c], np.float32), mode="F")
            out[n, c] = np.asarray(plane.resize((width, height), Image.BILINEAR))
    return out


def _normalise(x: np.ndarray, preprocessing: Preprocessing, channel_axis: int | None) -> np.ndarray:
    mean = _float32_values(preprocessing.mean, 0.0, "mean")
    std = _float32_values(preprocessing.std, 1.0, "std")
    if np.any(std <= 0):
        raise AnalogizeError(f"normalisation std must be > 0, got {tuple(std.tolist())}")
    if preprocessing.mean is None and preprocessing.std is None:
        return x
    for values, what in ((mean, "mean"), (std, "std")):
        if values.size not in (1, x.shape[channel_axis] if channel_axis is not None else 1):
            raise AnalogizeError(f"--input-{what} has {values.size} values; give 1 or one per channel")
    if channel_axis is not None:
        shape = [1] * x.ndim
        shape[channel_axis] = -1
        mean, std = mean.reshape(shape), std.reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, in words, rather than warned about
        normalised = ((x - mean) / std).astype(np.float32)
    if not np.isfinite(normalised).all() and np.isfinite(x).all():
        given = {what: ",".join(f"{value:g}" for value in values.ravel()) for what, values in (("mean", mean),
                                                                                              ("std", std))}
        raise AnalogizeError(f"--input-mean {given['mean']} and --input-std {given['std']} make inputs too large for "
                             f"float32; give a larger std or a mean closer to the data")
    return normalised


def _float32_values(values, default: float, what: str) -> np.ndarray:
    """--input-mean or --input-std as float32, refused when a value has no float32 of its size (a std too small
    becomes 0, a value too large infinite)."""
    given = np.asarray(values if values is not None else (default,), np.float64)
    with np.errstate(over="ignore"):
        stored = given.astype(np.float32)
    lost = (~np.isfinite(stored) | ((stored == 0) & (given != 0))) if what == "std" else ~np.isfinite(stored)
    if np.any(lost):
        raise AnalogizeError(f"--input-{what} {given[lost][0]:g} has no float32 of its size (float32 spans about "
                             f"1.2e-38 to 3.4e38); give a value within that")
    return stored
