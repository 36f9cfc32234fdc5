"""Train the shipped default model: the zoo ConvNet, sized for 8x8 digits, on scikit-learn's digits.

Reproducible: ``python models/train_digits.py`` rewrites ``models/digits_convnet.onnx`` and
``models/digits_convnet.json`` (its configuration and clean test accuracy). Training is clean (no noise):
the model stands for a user's pretrained network.
"""
import argparse
import json
from pathlib import Path

import torch

from analogize.data import digits
from analogize.zoo import create_model, export_onnx, fit

HERE = Path(__file__).resolve().parent
CONFIG = {"num_classes": 10, "in_channels": 1, "image_size": 8, "width": 1 / 3, "stages": 1, "hidden": (64, 32)}


def train(epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    x_train, y_train = (torch.from_numpy(a) for a in digits("train"))
    x_test, y_test = (torch.from_numpy(a) for a in digits("test"))
    model = fit(create_model("convnet", **CONFIG), x_train, y_train, epochs, seed=seed)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=HERE / "digits_convnet.onnx")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model, accuracy = train(args.epochs, args.seed)
    export_onnx(model, args.output, (1, 8, 8), exporter="legacy")
    record = {"model": "convnet", "config": CONFIG, "dataset": "digits", "test_accuracy": round(accuracy, 4),
              "epochs": args.epochs, "seed": args.seed, "input": "1x8x8 float32 in [0, 1] (pixel / 16)"}
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
