"""The zoo models the benchmarks time, exported once per run (needs torch; nothing is downloaded)."""
import tempfile
from pathlib import Path

import onnx


def paper_convnet() -> onnx.ModelProto:
    """The paper's CIFAR ConvNet from the zoo, seeded weights, exported for 3x32x32 inputs."""
    return _exported("convnet", (3, 32, 32))


def resnet50_sized() -> onnx.ModelProto:
    """The zoo ResNet with ResNet-34's blocks (3, 4, 6, 3) and 1000 classes, seeded weights, for 3x224x224 inputs:
    21.8 M weights, a ResNet-50's size and cost in basic blocks."""
    return _exported("resnet18", (3, 224, 224), num_classes=1000, blocks=(3, 4, 6, 3))


def _exported(name: str, input_shape: tuple, **hyperparameters) -> onnx.ModelProto:
    import torch

    from analogize.zoo import create_model, export_onnx

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / f"{name}.onnx"
        export_onnx(create_model(name, **hyperparameters), path, input_shape)
        return onnx.load(path)
