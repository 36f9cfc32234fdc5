"""Calibrated analog ranges against ONNX Runtime's own static int8 quantisation, side by side.

A model trained with no clamp at all (the zoo's ResNet-18 with BatchNorm, width 1/8, trained here in plain torch
for a few epochs on scikit-learn's digits at their raw 0-16 scale, so activations lie far outside [-1, 1]; or
any ``--model PATH`` with ``--data SPEC``) is run clean and in five noise-free forms on the test split:

- ``ort-int8``: ``onnxruntime.quantization.quantize_static``, QDQ, per-channel int8 weights, int8 activations,
  MinMax calibration on the calibration samples (its defaults: asymmetric activation ranges, so a ReLU's output
  uses all 256 codes); ``ort-int8-symmetric``: the same with ``ActivationSymmetric``, as signed analog DACs and
  ADCs are;
- ``analog-calibrated``: ``analogize convert --no-noise --precision 127 --calibrate`` on the same samples (p = 127:
  the 255 levels of int8, so both grids are equally fine), per-channel weight ranges;
- ``analog-calibrated-bits8``: the same with ``--bits 8`` (p = 256, analogize's default convention: 513 levels);
- ``analog-dynamic``: ``--no-noise --bits 8`` with the default ranges, no data;
- ``analog-unit``: ``--no-noise --bits 8`` with the paper's fixed [-1, 1].

For each it prints the relative output error ||y - y_clean|| / ||y_clean|| and the top-1 agreement with the clean
model, the error ratios, and the goals: default ranges keep agreement >= 99 %, ``--bits 8`` calibrated error
<= 1.2x ORT int8's (p = 127 is printed beside it: at equal level counts analog's symmetric ranges, and the
rounding at both the ADC of one layer and the DAC of the next, cost more than ORT's asymmetric ones).

    python bench/calibration_vs_ort.py [--calibration-samples 128] [--model PATH --data SPEC] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from analogize import ConvertOptions
from analogize.convert import PAPER_RANGES, convert
from analogize.data import digits
from analogize.runtime.sessions import create_session

THREADS = os.cpu_count()  # every session's intra-op threads (the numbers compared do not depend on them)
GOAL_AGREEMENT = 0.99
GOAL_ERROR_RATIO = 1.2
RAW_DIGITS_SCALE = 16.0  # digits() gives values / 16; the raw pixels are 0..16


def train_batchnorm_resnet(path: Path, epochs: int = 6, seed: int = 0) -> Path:
    """The zoo's ResNet-18 (BatchNorm, width 1/8, no ImageNet stem) trained in plain torch on raw-scale digits,
    exported to ONNX at ``path``."""
    import torch

    from analogize import zoo

    x, y = digits("train", seed)
    x, y = torch.from_numpy(x * RAW_DIGITS_SCALE), torch.from_numpy(y)
    torch.manual_seed(seed)
    model = zoo.create_model("resnet18", num_classes=10, in_channels=1, width=0.125, imagenet_stem=False)
    zoo.fit(model, x, y, epochs, seed=seed)
    return zoo.export_onnx(model, path, tuple(x.shape[1:]))


def digits_inputs(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibration samples from the train split and the whole test split, at the raw scale."""
    calibration = digits("train", seed)[0][:samples] * RAW_DIGITS_SCALE
    return calibration.astype(np.float32), (digits("test", seed)[0] * RAW_DIGITS_SCALE).astype(np.float32)


def ort_int8(model_path: Path, output: Path, calibration: np.ndarray, input_name: str,
             symmetric: bool = False) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calibration[k:k + 32]} for k in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(model_path), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric})
    return output


def outputs(model: onnx.ModelProto, x: np.ndarray, input_name: str) -> np.ndarray:
    session = create_session(model, THREADS)
    return np.concatenate([session.run(None, {input_name: x[k:k + 64]})[0] for k in range(0, len(x), 64)])


def compare(model_path: Path, calibration: np.ndarray, test: np.ndarray, work: Path) -> dict:
    """Relative output error and top-1 agreement with the clean model of each form (see the module doc)."""
    model = onnx.load(model_path)
    input_name = model.graph.input[0].name
    np.savez(work / "calibration.npz", **{input_name: calibration})
    spec = f"npz:{work / 'calibration.npz'}"
    samples = len(calibration)
    forms = {
        "ort-int8": onnx.load(ort_int8(model_path, work / "int8.onnx", calibration, input_name)),
        "ort-int8-symmetric": onnx.load(ort_int8(model_path, work / "int8s.onnx", calibration, input_name, True)),
        "analog-calibrated": convert(model, ConvertOptions(noise=False, precision=127, calibrate=spec,
                                                           calibration_samples=samples)).model,
        "analog-calibrated-bits8": convert(model, ConvertOptions(noise=False, bits=8, calibrate=spec,
                                                                 calibration_samples=samples)).model,
        "analog-dynamic": convert(model, ConvertOptions(noise=False, bits=8)).model,
        "analog-unit": convert(model, ConvertOptions(noise=False, bits=8, **PAPER_RANGES)).model,
    }
    clean = outputs(model, test, input_name)
    rows = {}
    for name, form in forms.items():
        got = outputs(form, test, input_name)
        rows[name] = {"relative_error": float(np.linalg.norm(got - clean) / np.linalg.norm(clean)),
                      "agreement": float(np.mean(got.argmax(1) == clean.argmax(1)))}
    ratios = {f"{analog}/{ort}": rows[analog]["relative_error"] / rows[ort]["relative_error"]
              for analog in ("analog-calibrated-bits8", "analog-calibrated") for ort in ("ort-int8", "ort-int8-symmetric")}
    return {"samples": {"calibration": samples, "test": len(test)}, "forms": rows, "error_ratios": ratios,
            "goals": {"dynamic_agreement": rows["analog-dynamic"]["agreement"] >= GOAL_AGREEMENT,
                      "calibrated_bits8_error_ratio": ratios["analog-calibrated-bits8/ort-int8"] <= GOAL_ERROR_RATIO}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--model", type=Path, help="an ONNX model with one image input (default: train one)")
    parser.add_argument("--data", help="data spec for --model: its first samples calibrate, all are scored")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        if args.model is None:
            model_path = train_batchnorm_resnet(work / "resnet_bn_digits.onnx")
            calibration, test = digits_inputs(args.calibration_samples)
            label = "zoo resnet18 (BatchNorm, width 1/8) trained on raw-scale digits"
        else:
            from analogize.data import fit_to_input, load_for_model

            model = onnx.load(args.model)
            x, _ = fit_to_input(load_for_model(args.data or "digits", model), model)
            model_path, label = args.model, str(args.model)
            calibration, test = x[:args.calibration_samples], x[args.calibration_samples:]
        result = {"model": label, "threads": THREADS, **compare(model_path, calibration, test, work)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}: {result['samples']['calibration']} calibration samples, "
          f"{result['samples']['test']} test samples, {result['threads']} thread(s)")
    print(f"{'form':26s} {'rel. error':>12s} {'top-1 agreement':>16s}")
    for name, row in result["forms"].items():
        print(f"{name:26s} {row['relative_error']:12.5f} {100 * row['agreement']:15.1f}%")
    for name, ratio in result["error_ratios"].items():
        print(f"relative error {name}: {ratio:.3f}")
    print(f"goal: analog-calibrated-bits8 (--bits 8) error <= {GOAL_ERROR_RATIO}x ORT int8's: "
          f"{'PASS' if result['goals']['calibrated_bits8_error_ratio'] else 'FAIL'}")
    print(f"default ranges (dynamic), --bits 8: agreement goal >= {GOAL_AGREEMENT:.0%}: "
          f"{'PASS' if result['goals']['dynamic_agreement'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
