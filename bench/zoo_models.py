"""The zoo models the benchmarks time, exported once per run (needs torch; nothing is downloaded)."""
import tempfile
from pathlib import Path

import onnx


def paper_convnet() -> onnx.ModelProto:
    """The paper's CIFAR ConvNet from the zoo, seeded weights, exported for 3x32x32 inputs."""
    import torch

    from analogize.zoo import create_model, export_onnx

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "convnet.onnx"
        export_onnx(create_model("convnet"), path, (3, 32, 32))
        return onnx.load(path)
