"""Convert time of the largest ONNX "light" model against a plain onnx.load + onnx.save of it.

Both are timed in this one process, alternately, best of N (the machine is shared; the minimum is the least
disturbed run). Prints ratios; the goal is convert / (load + save) < 3. The light models are opset 9, so
converting them includes ONNX's version converter raising them to opset 13; a second row times the same
model already at opset 13, which isolates the rewrite itself.

    python bench/convert_speed.py [--repeats 15] [--json]
"""
import argparse
import json
import tempfile
from pathlib import Path

import onnx
from onnx import version_converter

from analogize import convert_file
from timing import best_time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    largest = max(light.glob("*.onnx"), key=lambda p: p.stat().st_size)
    work = Path(tempfile.mkdtemp())
    at_13 = work / f"{largest.stem}_opset13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(largest), 13), at_13)
    rows = []
    for label, source in ((f"{largest.name} (opset 9)", largest), (f"{largest.stem} at opset 13", at_13)):
        def load_save():
            onnx.save(onnx.load(source), work / "copy.onnx")

        def convert():
            convert_file(source, work / "converted.onnx", activation="interp-gelu", factor=0.5)

        load_save(), convert()  # warm caches and imports
        baseline, converted = best_time(load_save, args.repeats, warm_up=False), best_time(convert, args.repeats, warm_up=False)
        rows.append({"model": label, "load_save_s": baseline, "convert_s": converted, "ratio": converted / baseline})
    if args.json:
        print(json.dumps({"goal_ratio": 3.0, "rows": rows}, indent=2))
        return
    print(f"{'model':40s} {'load+save':>10s} {'convert':>10s} {'ratio':>7s}  (goal < 3)")
    for row in rows:
        print(f"{row['model']:40s} {row['load_save_s'] * 1e3:8.1f}ms {row['convert_s'] * 1e3:8.1f}ms "
              f"{row['ratio']:6.2f}x")


if __name__ == "__main__":
    main()
