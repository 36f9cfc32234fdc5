"""The paper's architectures in PyTorch, with size options, and their export to ONNX.

``create_model(name, **config)`` builds a registered model; ``export_onnx`` writes it with either torch
exporter. Every model uses ``nn.ReLU`` so that ``analogize convert --activation`` can swap it.
Architectures follow ``shared/reference/analog-semantics.md`` section 6.
"""
from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import AnalogizeError

MODELS: dict[str, Callable[..., nn.Module]] = {}
EXPORTERS = ("legacy", "dynamo")


def register_model(function):
    MODELS[function.__name__] = function
    return function


def create_model(name: str, **config) -> nn.Module:
    if name not in MODELS:
        raise AnalogizeError(f"unknown zoo model {name!r}: choose from {', '.join(MODELS)}")
    accepted = inspect.signature(MODELS[name]).parameters
    unknown = set(config) - set(accepted)
    if unknown:
        raise AnalogizeError(f"{name} takes no option(s) {', '.join(sorted(unknown))}; it takes {', '.join(accepted)}")
    for key, value in config.items():
        _check_option(name, key, value, accepted[key].default)
    try:
        return MODELS[name](**config)
    except (ValueError, RuntimeError) as error:  # torch's layers refuse sizes the checks above let through
        raise AnalogizeError(f"{name}: its options make no model ({str(error).strip().splitlines()[0]}); "
                             f"see 'analogize zoo list' for sizes that work") from None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_option(name: str, key: str, value, default) -> None:
    """Refuse, in one line, an option value of another kind than its default's: a count (a whole number >= 0: a
    ConvNet may have no stages), a finite fraction or factor >= 0, a flag, or a tuple of counts."""
    if isinstance(default, bool):
        fits, kind = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        fits, kind = _is_count(value), "a whole number >= 0"
    elif isinstance(default, float):
        fits = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        kind = "a finite number >= 0"
    else:
        fits, kind = isinstance(value, tuple) and all(_is_count(item) for item in value), \
            "a tuple of whole numbers >= 0, e.g. (2, 2)"
    if not fits:
        raise AnalogizeError(f"{name}: option {key} is {value!r}; give {kind} (its default is {default!r})")


def _scaled(width: int, multiplier: float) -> int:
    return max(1, round(width * multiplier))


def convnet_stages_that_fit(image_size: int, most: int = 3) -> int:
    """The most ConvNet stages (at most ``most``) an image of ``image_size`` pixels leaves at least 1x1 after."""
    stages, size = 0, image_size
    while stages < most and (size - 2) // 2 >= 1:
        stages, size = stages + 1, (size - 2) // 2
    return max(stages, 1)


@register_model
def convnet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
            stages: int = 3, hidden: tuple = (512, 256), dropout: bool = True) -> nn.Module:
    """The paper's ConvNet: per stage conv(pad 1), conv(no pad), max-pool; then a 3-layer MLP head."""
    layers, channels, size = [], in_channels, image_size
    for stage in range(stages):
        out = _scaled(48 * 2**stage, width)
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3), nn.ReLU(),
                   nn.MaxPool2d(2)] + ([nn.Dropout(0.25)] if dropout and stage < stages - 1 else [])
        channels, size = out, (size - 2) // 2
        if size < 1:
            raise AnalogizeError(f"convnet: image_size {image_size} is too small for {stages} stages; "
                                 f"use fewer stages or a larger image")
    features = channels * size * size
    head: list[nn.Module] = [nn.Flatten()]
    for width_out in hidden:
        head += [nn.Linear(features, width_out), nn.ReLU()] + ([nn.Dropout(0.5)] if dropout else [])
        features = width_out
    head.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers, *head)


@register_model
def vgg_a(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
          classifier_width: int = 4096, pool_size: int = 7) -> nn.Module:
    """VGG-A (VGG-11) without BatchNorm: 8 convolutions and a 3-layer classifier."""
    plan = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers, channels, size = [], in_channels, image_size
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            out = _scaled(item, width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            channels = out
    if size < 1:
        raise AnalogizeError(f"vgg_a: image_size {image_size} is too small for five max-pools; use >= 32")
    # torch's legacy exporter has no adaptive pooling to a size the input's does not divide; to a multiple of it
    # (1x1 to 7x7 from 32-pixel images) the pooling is a nearest upsampling, which it has
    pool = nn.Upsample(scale_factor=pool_size // size) if pool_size > size and pool_size % size == 0 else \
        nn.AdaptiveAvgPool2d(pool_size)
    return nn.Sequential(*layers, pool, nn.Flatten(),
                         nn.Linear(channels * pool_size * pool_size, classifier_width), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(classifier_width, classifier_width), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(classifier_width, num_classes))


class _BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential() if stride == 1 and channels_in == channels_out else nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self, num_classes, in_channels, width, blocks, imagenet_stem):
        super().__init__()
        widths = [_scaled(w, width) for w in (64, 128, 256, 512)]
        stem = [nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)] if imagenet_stem else [
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        stem += [nn.BatchNorm2d(widths[0]), nn.ReLU()] + ([nn.MaxPool2d(3, 2, 1)] if imagenet_stem else [])
        self.stem = nn.Sequential(*stem)
        stages, channels = [], widths[0]
        for index, (out, count) in enumerate(zip(widths, blocks)):
            for block in range(count):
                stages.append(_BasicBlock(channels, out, 2 if index > 0 and block == 0 else 1))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, imagenet_stem: bool = True,
             blocks: tuple = (2, 2, 2, 2)) -> nn.Module:
    """ResNet-18: BasicBlocks [2, 2, 2, 2] at widths 64/128/256/512 (scaled by ``width``)."""
    return _ResNet(num_classes, in_channels, width, blocks, imagenet_stem)


class _Attention(nn.Module):
    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x):
        batch, tokens, _ = x.shape
        q, k, v = (t.reshape(batch, tokens, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attention = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.out((attention @ v).transpose(1, 2).reshape(batch, tokens, -1))


class _TransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim), _Attention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ViT(nn.Module):
    def __init__(self, num_classes, in_channels, image_size, patch_size, dim, depth, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        if image_size % patch_size:
            raise AnalogizeError(f"vit: image_size {image_size} is not a multiple of patch_size {patch_size}")
        patches = (image_size // patch_size) ** 2
        self.patch_size = patch_size
        self.embed = nn.Linear(in_channels * patch_size**2, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_TransformerBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, x):
        batch, channels, height, width = x.shape
        p = self.patch_size
        x = x.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 3, 5, 1)
        x = self.embed(x.reshape(batch, (height // p) * (width // p), p * p * channels))
        x = torch.cat([self.cls.expand(batch, -1, -1), x], dim=1) + self.position
        return self.head(self.blocks(x)[:, 0])


@register_model
def vit(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4, dim: int = 512,
        depth: int = 4, heads: int = 8, dim_head: int = 64, mlp_dim: int = 512, dropout: float = 0.5) -> nn.Module:
    """Vision transformer (pre-norm, cls-token pooling); the paper's setting is depth 4, 8 heads."""
    return _ViT(num_classes, in_channels, image_size, patch_size, dim, depth, heads, dim_head, mlp_dim, dropout)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3, seed: int = 0,
        batch_size: int = 64) -> nn.Module:
    """Plain torch training (Adam, cross-entropy, shuffled batches; no analog chains): how the shipped model
    and the benches' reference models are trained. ``seed`` orders the batches; dropout draws from torch's
    global generator, which the caller seeds (before creating the model, as that draws its initial weights)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def export_onnx(model: nn.Module, path, input_shape: tuple, exporter: str = "legacy", opset: int = 18,
                input_name: str = "input", output_name: str = "logits") -> Path:
    """Export ``model`` (in eval mode) with a dynamic batch axis; ``input_shape`` excludes the batch.

    Opset 18 is the default because the dynamo exporter emits 18 and its down-conversion to 17 writes an
    invalid Split.
    """
    if exporter not in EXPORTERS:
        raise AnalogizeError(f"unknown exporter {exporter!r}: choose from {', '.join(EXPORTERS)}")
    path = Path(path)
    model = model.eval()
    example = torch.zeros(2, *input_shape)
    staging = path.with_name(f".{path.name}.partial")
    try:
        if exporter == "legacy":
            torch.onnx.export(model, (example,), str(staging), input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        else:
            program = torch.onnx.export(model, (example,), input_names=[input_name], output_names=[output_name],
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
                                        dynamo=True, verbose=False)
            program.save(str(staging))
        os.replace(staging, path)
    except RuntimeError as error:  # tracing the model at this input, or an op the exporter has no ONNX for
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise AnalogizeError(f"torch cannot export the model at input {'x'.join(map(str, input_shape))} ({reason}); "
                             f"choose other size options, or the other exporter") from error
    finally:
        staging.unlink(missing_ok=True)
    return path
