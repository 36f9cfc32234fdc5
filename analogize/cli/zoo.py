"""``analogize zoo``: the paper's architectures, listed with their size options or exported to ONNX with random
initial weights."""
from __future__ import annotations

import json

import click

from .options import SEEDS, json_flag, zoo_model_config, zoo_model_option, writable_file


@click.group()
def zoo():
    """The paper's architectures (ConvNet, VGG-A, ResNet-18, ViT): list them or export one to ONNX."""


@zoo.command("list")
@json_flag("Print as JSON.")
def zoo_list(as_json):
    """List the models and their size options."""
    import inspect

    from ..zoo import MODELS

    entries = {name: {p.name: p.default for p in inspect.signature(f).parameters.values()} for name, f in MODELS.items()}
    if as_json:
        click.echo(json.dumps(entries, indent=2, allow_nan=False))
        return
    for name, options in entries.items():
        click.echo(f"{name:10s} " + " ".join(f"{k}={v}" for k, v in options.items()))


@zoo.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=writable_file, required=True,
              help="Output .onnx path.")
@zoo_model_option("A size option, e.g. --option width=0.5 --option image_size=32 (see 'analogize zoo list').")
@click.option("--exporter", type=click.Choice(["legacy", "dynamo"]), default="legacy", show_default=True)
@click.option("--opset", type=click.IntRange(13, 23), default=18, show_default=True)
@click.option("--image-size", type=click.IntRange(min=1),
              help="Input height and width [default: the model's image_size option, else 32].")
@click.option("--seed", type=SEEDS, default=0, show_default=True, help="Seed of the random initial weights.")
def zoo_export(name, output, model_options, exporter, opset, image_size, seed):
    """Export zoo model NAME (randomly initialised, eval mode) with a dynamic batch axis."""
    import inspect

    import torch

    from ..zoo import MODELS, create_model, export_onnx

    config = zoo_model_config(model_options)
    if image_size is not None:
        if config.get("image_size", image_size) != image_size:
            raise click.UsageError("--image-size and --option image_size differ; give the size once")
        if name in MODELS and "image_size" in inspect.signature(MODELS[name]).parameters:
            config["image_size"] = image_size  # built for the size it is exported at: its layers' sizes follow
    torch.manual_seed(seed)
    model = create_model(name, **config)
    channels, size = config.get("in_channels", 3), image_size or config.get("image_size", 32)
    export_onnx(model, output, (channels, size, size), exporter=exporter, opset=opset)
    click.echo(f"wrote {output} ({name}, input {channels}x{size}x{size}, {exporter} exporter, opset {opset})")
