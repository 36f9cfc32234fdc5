"""``train``: a zoo model trained from scratch under analog noise, optionally critically initialised.

The model is built in torch (:mod:`analogize.zoo`), sized to the data, exported to ONNX, converted with the
convert options and then trained exactly as ``finetune`` trains (same noise, same training rules, same
ONNX Runtime evaluation of the written model), so a trained and a fine-tuned model are measured alike.
"""
from __future__ import annotations

import inspect
import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx
import torch

from ..convert import PAPER_RANGES, ConvertOptions
from ..data import Dataset
from ..errors import AnalogizeError
from .finetune import FinetuneOptions, finetune

INITIALISATIONS = ("default", "critical")


@dataclass(frozen=True)
class TrainSetup:
    """What to build: a zoo model, its options (sized to the data unless given) and how to initialise it."""

    model: str = "convnet"
    config: dict = field(default_factory=dict)
    init: str = "default"  # "critical": weights N(0, C_W*/fan_in), biases N(0, C_b*) for the activation

    def check(self) -> "TrainSetup":
        from ..zoo import MODELS

        if self.model not in MODELS:
            raise AnalogizeError(f"unknown zoo model {self.model!r}: choose from {', '.join(MODELS)}")
        if self.init not in INITIALISATIONS:
            raise AnalogizeError(f"unknown initialisation {self.init!r}: choose from {', '.join(INITIALISATIONS)}")
        return self


def activation_setting(options: ConvertOptions) -> str:
    """The convert options' activation as an analysis setting (``interp-gelu:factor=0.5`` ...); ``relu`` for
    ``keep``, since zoo models are built with ReLU."""
    if options.activation == "keep":
        return "relu"
    given = {name: getattr(options, name) for name in ("factor", "scale", "alpha", "temperature")}
    from ..passes.activations import ACTIVATIONS

    parameters = [f"{name}={value!r}" for name, value in given.items()
                  if value is not None and name in ACTIVATIONS[options.activation].settable]
    return ":".join([options.activation, *parameters])


def image_shape(dataset: Dataset) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the data's images."""
    if dataset.layout == "nchw" and dataset.x.ndim == 4:
        return tuple(dataset.x.shape[1:])
    if dataset.layout == "nhwc" and dataset.x.ndim == 4:
        return dataset.x.shape[3], dataset.x.shape[1], dataset.x.shape[2]
    raise AnalogizeError(f"{dataset.name}: zoo models take images, but the data has shape {dataset.x.shape[1:]} "
                         f"({dataset.layout}); give image data (or reshape it into an .npz of images)")


def sized_config(setup: TrainSetup, train: Dataset) -> dict:
    """The zoo options with the input channels, image size, class count (and a ConvNet's stages) read off the data
    where not given."""
    from ..zoo import MODELS, convnet_stages_that_fit

    channels, height, width = image_shape(train)
    if height != width:
        raise AnalogizeError(f"{train.name}: zoo models take square images, got {height}x{width}; use --resize")
    if train.y is None:
        raise AnalogizeError(f"{train.name} has no labels; training needs labelled data")
    accepted = inspect.signature(MODELS[setup.model]).parameters
    inferred = {"in_channels": channels, "image_size": height, "num_classes": int(train.y.max()) + 1}
    if setup.model == "convnet":  # as many of its stages as the images leave room for (8x8 digits: one)
        inferred["stages"] = convnet_stages_that_fit(setup.config.get("image_size", height),
                                                     accepted["stages"].default)
    return {**{k: v for k, v in inferred.items() if k in accepted}, **setup.config}


def initialise_critically(module: torch.nn.Module, weight_variance: float, bias_variance: float,
                          generator: torch.Generator) -> int:
    """Redraw every linear and convolution layer: weights ``N(0, C_W / fan_in)``, biases ``N(0, C_b)``.
    Returns the number of layers drawn."""
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))]
    with torch.no_grad():
        for layer in layers:
            fan_in = layer.weight[0].numel()
            layer.weight.normal_(0.0, math.sqrt(weight_variance / fan_in), generator=generator)
            if layer.bias is not None:
                layer.bias.normal_(0.0, math.sqrt(bias_variance), generator=generator)
    return len(layers)


def build(setup: TrainSetup, train: Dataset, convert_options: ConvertOptions, seed: int) -> tuple[onnx.ModelProto, dict]:
    """The untrained zoo model as clean ONNX, and what was built (config, initialisation)."""
    from ..analysis import critical_variances
    from ..zoo import create_model, export_onnx

    setup.check()
    config = sized_config(setup, train)
    torch.manual_seed(seed)
    module = create_model(setup.model, **config)
    built = {"model": setup.model, "config": config, "init": setup.init, "parameters":
             sum(p.numel() for p in module.parameters())}
    if setup.init == "critical":
        activation = activation_setting(convert_options)
        weight_variance, bias_variance = critical_variances(activation)
        layers = initialise_critically(module, weight_variance, bias_variance, torch.Generator().manual_seed(seed))
        built["critical"] = {"activation": activation, "c_w": weight_variance, "c_b": bias_variance, "layers": layers}
    # models without a channel or size option (resnet18) take the data's own
    channels, height, _ = image_shape(train)
    channels, size = config.get("in_channels", channels), config.get("image_size", height)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{setup.model}.onnx"
        export_onnx(module, path, (channels, size, size))
        return onnx.load(path), built


def train(setup: TrainSetup, train_data: Dataset, validation: Dataset, options: FinetuneOptions = FinetuneOptions(),
          convert_options: ConvertOptions = ConvertOptions(**PAPER_RANGES), *, checkpoint_dir=None, resume: bool = False,
          progress: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Build, convert and train a zoo model under noise; return the trained converted model and the report
    (finetune's report, whose ``accuracy_before`` is the untrained model's, plus what was built)."""
    options.check()
    if convert_options.seed is None:
        convert_options = replace(convert_options, seed=options.seed)
    clean, built = build(setup, train_data, convert_options, options.seed)
    trained, report = finetune(clean, train_data, validation, options, convert_options,
                               checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
    report["built"] = built
    return trained, report


def train_file(destination, setup: TrainSetup, data: str, options: FinetuneOptions = FinetuneOptions(),
               convert_options: ConvertOptions = ConvertOptions(**PAPER_RANGES), *, eval_data: str | None = None,
               limit: int | None = None, checkpoint_dir=None, resume: bool = False, progress: bool = False,
               plot=None) -> dict:
    """:func:`train` on a data spec, writing the trained model (the CLI's ``analogize train``)."""
    from .finetune import plot_curves, split_data
    from ..model_io import save_model

    train_data, validation = split_data(data, limit, eval_data, options.seed)
    trained, report = train(setup, train_data, validation, options, convert_options, checkpoint_dir=checkpoint_dir,
                            resume=resume, progress=progress)
    if "rank" in report:
        return report
    save_model(trained, destination)
    report.update(output=str(destination), data=data, eval_data=eval_data,
                  convert_options={k: v for k, v in asdict(convert_options).items() if v not in (None, ())})
    if plot:
        plot_curves(report, plot)
    return report

