"""What the range modes cost pretrained models nobody here wrote, with no noise: fidelity to the clean model.

For each ``--model`` (a file, or every .onnx in a folder) with float inputs, the clean model and its conversions
with ``--no-noise`` at ``--bits`` (default 8) under each range setting run on the same random inputs (uniform
in [0, 1), the range most image models take; symbolic sizes become ``--size``), and the script prints the
relative output error ||y - y_clean|| / ||y_clean|| of the first output and the top-1 agreement along its last
axis (the class axis of classifiers and CTC recognisers; for detectors and maps it is only a coarse signal).
Settings: ``unit`` (the paper's fixed [-1, 1]), ``clamp-only`` (unit range, no rounding), ``default`` (weights
per channel, dynamic activations: no data), ``calibrated`` (the default with calibration on another draw of
random inputs).

    python bench/range_fidelity.py --model DIR_OR_FILE [--bits 8] [--samples 8] [--size 64] [--json]
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
from analogize.errors import AnalogizeError
from analogize.passes.model import fed_inputs
from analogize.runtime.sessions import create_session

THREADS = os.cpu_count()  # every session's intra-op threads (the numbers compared do not depend on them)
SETTINGS = {
    "unit": dict(PAPER_RANGES),
    "clamp-only": {**PAPER_RANGES, "quantize": False},
    "default": {},
    "calibrated": {"calibrate": "npz"},  # filled with the calibration file
}


def random_feeds(model: onnx.ModelProto, samples: int, size: int, seed: int) -> dict | None:
    """``samples`` uniform [0, 1) inputs for every graph input (axis 0 counts them), or None when one is not
    float32."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in fed_inputs(model):
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            return None
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        shape = [samples if k == 0 else dim or size for k, dim in enumerate(dims)]  # fed one sample at a time
        feeds[value.name] = rng.uniform(0, 1, shape).astype(np.float32)
    return feeds


def fidelity(model: onnx.ModelProto, feeds: dict, clean: np.ndarray) -> dict:
    got = np.concatenate([create_session(model, THREADS).run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]
                          for i in range(len(next(iter(feeds.values()))))])
    error = float(np.linalg.norm(got - clean) / max(np.linalg.norm(clean), 1e-30))
    agreement = float(np.mean(got.argmax(-1) == clean.argmax(-1))) if clean.ndim >= 1 and clean.shape[-1] > 1 else None
    return {"relative_error": error, "top1_agreement": agreement}


def model_row(path: Path, bits: int, samples: int, size: int, work: Path) -> dict:
    model = onnx.load(path)
    feeds = random_feeds(model, samples, size, 0)
    if feeds is None:
        return {"model": path.name, "skipped": "an input is not float32"}
    calibration = random_feeds(model, max(samples, 8), size, 1)
    np.savez(work / "calibration.npz", **calibration)
    clean_session = create_session(model, THREADS)
    clean = np.concatenate([clean_session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]
                            for i in range(samples)])
    row = {"model": path.name}
    for name, overrides in SETTINGS.items():
        if "calibrate" in overrides:
            overrides = {"calibrate": f"npz:{work / 'calibration.npz'}", "calibration_samples": len(
                next(iter(calibration.values())))}
        try:
            converted = convert(model, ConvertOptions(noise=False, bits=bits, **overrides)).model
            row[name] = fidelity(converted, feeds, clean)
        except AnalogizeError as error:
            row[name] = {"error": str(error)}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, action="append")
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="the size of symbolic dimensions other than the batch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    paths = sorted(p for given in args.model for p in ([given] if given.is_file() else given.glob("*.onnx")))
    with tempfile.TemporaryDirectory() as directory:
        rows = [model_row(path, args.bits, args.samples, args.size, Path(directory)) for path in paths]
    result = {"bits": args.bits, "samples": args.samples, "threads": THREADS, "models": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"--no-noise --bits {args.bits}, {args.samples} random inputs, {THREADS} thread(s): relative error / "
          f"top-1 agreement (last axis)")
    print(f"{'model':58s}" + "".join(f"{name:>22s}" for name in SETTINGS))
    for row in rows:
        cells = []
        for name in SETTINGS:
            cell = row.get(name, {})
            if "relative_error" in cell:
                agreement = "-" if cell["top1_agreement"] is None else f"{100 * cell['top1_agreement']:.0f}%"
                cells.append(f"{cell['relative_error']:.4f} / {agreement}")
            else:
                cells.append(row.get("skipped", cell.get("error", "-"))[:20])
        print(f"{row['model'][:58]:58s}" + "".join(f"{c:>22s}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
