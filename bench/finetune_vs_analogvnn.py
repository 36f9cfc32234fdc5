"""Noise-aware training: analogize's ONNX-derived torch module against AnalogVNN, side by side in one run.

Both train the same network: an MLP 64-64-32-10 on scikit-learn's digits (flattened), with the paper's
chains. Before each layer and on its weights and biases: clamp, reduce-precision, noise; after each layer:
noise, clamp, reduce-precision; then ReLU. Settings: 4 bits (p = 16), EP 0.5, Adam at 1e-3, batch 64, from
the same initial weights and for the same number of epochs. analogize gets the network as an ONNX file
(exported, then converted); AnalogVNN (`pip install -e ".[bench]"`) gets it as its own modules.

Printed:
- noisy test accuracy (mean ± std over seeds, each over several noise draws);
- the training step time ratios: analogize / AnalogVNN, and analogize / a clean torch step of the same MLP,
  also for analogize without its native chains (``ANALOGIZE_NATIVE=0``: every analog op as torch ops).
Goals: the same accuracy within error bars; a noisy step at most 1.5x a clean step, and faster than AnalogVNN.

    python bench/finetune_vs_analogvnn.py [--epochs 10] [--seeds 3] [--json]
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from analogize import convert
from analogize.data import digits
from analogize.training.onnx_torch import to_torch
from analogize.zoo import export_onnx

PRECISION, EP, SIZES, BATCH, LR = 16, 0.5, (64, 64, 32, 10), 64, 1e-3
TORCH_THREADS = 1  # small steps: one thread each, so both libraries run alike


def clean_mlp() -> nn.Sequential:
    layers = []
    for k, (fan_in, fan_out) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if k < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def analogize_mlp(initial: nn.Sequential, native: bool = True) -> nn.Module:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "mlp.onnx"
        export_onnx(initial, path, (SIZES[0],))
        converted = convert(onnx.load(path), precision=float(PRECISION), bits=None, ep=EP).model
    return to_torch(converted, native=native)


def analogvnn_mlp(initial: nn.Sequential):
    from analogvnn.nn.Linear import Linear
    from analogvnn.nn.activation.ReLU import ReLU
    from analogvnn.nn.module.FullSequential import FullSequential
    from analogvnn.nn.noise.GaussianNoise import GaussianNoise
    from analogvnn.nn.normalize.Clamp import Clamp
    from analogvnn.nn.precision.ReducePrecision import ReducePrecision
    from analogvnn.parameter.PseudoParameter import PseudoParameter

    def doa():
        return [Clamp(), ReducePrecision(precision=PRECISION), GaussianNoise(leakage=EP, precision=PRECISION)]

    def aod():
        return [GaussianNoise(leakage=EP, precision=PRECISION), Clamp(), ReducePrecision(precision=PRECISION)]

    class Network(FullSequential):
        def __init__(self):
            super().__init__()
            layers, linears = [], [m for m in initial if isinstance(m, nn.Linear)]
            for k, source in enumerate(linears):
                linear = Linear(source.in_features, source.out_features)
                with torch.no_grad():
                    linear.weight.copy_(source.weight)
                    linear.bias.copy_(source.bias)
                layers += doa() + [linear] + aod() + ([ReLU()] if k < len(linears) - 1 else [])
            self.add_sequence(*layers)

    class WeightChain(FullSequential):
        def __init__(self):
            super().__init__()
            self.add_sequence(*doa())

    network = Network()
    weights = WeightChain()
    weights.compile(device=torch.device("cpu"))
    PseudoParameter.parametrize_module(network, transformation=weights)
    network.compile(device=torch.device("cpu"), layer_data=False)
    network.loss_function = nn.CrossEntropyLoss()
    network.accuracy_function = lambda output, target: (output.argmax(1) == target).float().mean()
    network.optimizer = torch.optim.Adam(network.parameters(), lr=LR)
    return network


def step_ours(module, optimizer, x, y):
    optimizer.zero_grad()
    nn.functional.cross_entropy(module(x), y).backward()
    optimizer.step()


def step_analogvnn(network, x, y):
    network.zero_grad()
    network.optimizer.zero_grad()
    output = network(x)
    loss, _ = network.loss(output, y)
    network.backward()
    network.optimizer.step()


def accuracy(forward, x, y, draws=5) -> float:
    with torch.no_grad():
        return float(np.mean([(forward(x).argmax(1) == y).float().mean().item() for _ in range(draws)]))


def train_both(seed: int, epochs: int, data) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(seed)
    initial = clean_mlp()
    ours = analogize_mlp(initial)
    ours_in_torch_ops = analogize_mlp(initial, native=False)
    theirs = analogvnn_mlp(initial)
    clean = clean_mlp()
    clean.load_state_dict(initial.state_dict())
    optimizer = torch.optim.Adam(ours.parameters(), lr=LR)
    torch_ops_optimizer = torch.optim.Adam(ours_in_torch_ops.parameters(), lr=LR)
    clean_optimizer = torch.optim.Adam(clean.parameters(), lr=LR)
    times = {"analogize": [], "analogize_torch_ops": [], "analogvnn": [], "clean": []}
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for first in range(0, len(order), BATCH):
            batch = order[first:first + BATCH]
            x, y = x_train[batch], y_train[batch]
            for name, step in (("analogize", lambda: step_ours(ours, optimizer, x, y)),
                               ("analogize_torch_ops",
                                lambda: step_ours(ours_in_torch_ops, torch_ops_optimizer, x, y)),
                               ("analogvnn", lambda: step_analogvnn(theirs, x, y)),
                               ("clean", lambda: step_ours(clean, clean_optimizer, x, y))):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    ours.eval()
    theirs.eval()
    return {"analogize_accuracy": accuracy(ours, x_test, y_test),
            "analogvnn_accuracy": accuracy(theirs, x_test, y_test),
            **{f"{name}_step_s": statistics.median(values) for name, values in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args()
    torch.set_num_threads(TORCH_THREADS)
    data = []
    for split in ("train", "test"):
        x, y = digits(split)
        data.append((torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(y)))
    runs = [train_both(seed, arguments.epochs, data) for seed in range(arguments.seeds)]
    figures = {"runs": runs, "epochs": arguments.epochs, "torch_threads": TORCH_THREADS}
    for key in ("analogize_accuracy", "analogvnn_accuracy"):
        values = [r[key] for r in runs]
        figures[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    figures["step_ratio_analogize_over_analogvnn"] = statistics.median(
        r["analogize_step_s"] / r["analogvnn_step_s"] for r in runs)
    for name in ("analogize", "analogize_torch_ops"):
        figures[f"step_ratio_{name}_over_clean"] = statistics.median(
            r[f"{name}_step_s"] / r["clean_step_s"] for r in runs)
    if arguments.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"digits MLP {'-'.join(map(str, SIZES))}, p = {PRECISION}, EP {EP}, {arguments.epochs} epochs, "
          f"{arguments.seeds} seeds, {TORCH_THREADS} torch thread(s)")
    for name in ("analogize", "analogvnn"):
        stats = figures[f"{name}_accuracy"]
        print(f"  {name:10s} noisy test accuracy {100 * stats['mean']:.1f} ± {100 * stats['std']:.1f} %")
    print(f"  training step time: analogize / AnalogVNN = {figures['step_ratio_analogize_over_analogvnn']:.2f} "
          f"(goal < 1), analogize / clean torch = {figures['step_ratio_analogize_over_clean']:.2f} (goal <= 1.5); "
          f"without native chains {figures['step_ratio_analogize_torch_ops_over_clean']:.2f}")


if __name__ == "__main__":
    main()
