"""Convert time against a plain onnx.load + onnx.save of the same file, on weight-carrying and light models.

For each model, one run times `onnx.load` + `onnx.save` (A) and `analogize.convert_file` with the default
ConvertOptions (B) side by side, alternately A B A B for N rounds after one untimed warm-up of each, and
prints the medians, the min-max spread over the rounds, and the ratio convert / (load + save) (median of the
per-round ratios, with their min-max). The goal, checked on the weight-carrying models only, is

    convert <= 2x load+save

Weight-carrying models: the zoo's ResNet-18 and ViT at their default widths/depths, built for ImageNet-like
input (3x224x224, 1000 classes; ViT with 16x16 patches) and exported with `analogize.zoo.export_onnx` into a
temporary folder at bench time (needs torch; nothing is downloaded), plus every `--model PATH` (a folder
stands for the largest .onnx file in it). ONNX's largest "light" backend-test model, and the same model raised
to opset 13, are timed for information only: they are tiny, so fixed costs dominate (the opset-9 one also
pays for the version converter).

``--ranges unit`` converts with the paper's fixed range (``PAPER_RANGES``: no range nodes, the chains the goal was
first set on); the default, ``--ranges default``, with ``ConvertOptions()`` as users get it (per-channel weight
ranges and dynamic activation ranges: about 2.5 more nodes per chain for the graph IR to build and write).

    python bench/convert_speed.py [--rounds 9] [--quick] [--ranges default|unit] [--model PATH ...] [--json]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import onnx
from onnx import version_converter

from analogize import ConvertOptions, convert_file
from analogize.convert import PAPER_RANGES

GOAL_RATIO = 2.0
IMAGE_SHAPE = (3, 224, 224)
ZOO_MODELS = (  # label, zoo name, create_model options (widths, depths: the zoo's defaults)
    ("resnet18 (zoo, 1000 cls, 224px)", "resnet18", {"num_classes": 1000}),
    ("vit (zoo, 1000 cls, 224px/16)", "vit", {"num_classes": 1000, "image_size": 224, "patch_size": 16}),
)


def _timed(function) -> tuple[float, float]:
    """Wall seconds and process CPU seconds (all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def side_by_side(source: Path, work: Path, rounds: int, options: ConvertOptions) -> dict:
    """Time load+save (A) and convert (B) of ``source`` alternately, A B A B, after one warm-up of each."""
    copy, converted = work / "copy.onnx", work / "converted.onnx"

    def load_save():
        onnx.save(onnx.load(source), copy)

    def convert():
        convert_file(source, converted, options)

    load_save(), convert()
    baseline, conversion, cpu = [], [], []
    for _ in range(rounds):
        baseline.append(_timed(load_save)[0])
        wall, used = _timed(convert)
        conversion.append(wall)
        cpu.append(used / wall)
    ratios = [c / b for c, b in zip(conversion, baseline)]
    return {"load_save_s": statistics.median(baseline), "load_save_range_s": [min(baseline), max(baseline)],
            "convert_s": statistics.median(conversion), "convert_range_s": [min(conversion), max(conversion)],
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "convert_cpu_per_wall": statistics.median(cpu)}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 0.01 else f"{seconds * 1e3:.0f}"


def export_zoo(work: Path) -> list[tuple[str, Path]]:
    try:
        from analogize import zoo
    except ImportError as error:  # torch missing
        print(f"note: zoo models skipped ({error}); install torch to bench them", file=sys.stderr)
        return []
    exported = []
    for label, name, config in ZOO_MODELS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = zoo.export_onnx(zoo.create_model(name, **config), work / f"{name}.onnx", IMAGE_SHAPE)
        exported.append((label, path))
    return exported


def given_model(path: str) -> Path:
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"), key=lambda p: p.stat().st_size)
        if not candidates:
            raise SystemExit(f"--model {path}: no .onnx file in this folder")
        return candidates[-1]
    if not path.is_file():
        raise SystemExit(f"--model {path}: no such file")
    return path


def thread_note() -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    torch_threads = ""
    if "torch" in sys.modules:
        torch_threads = f"; torch intra-op threads {sys.modules['torch'].get_num_threads()} (export only)"
    return (f"{cpus} CPU(s) available to this process; both sides run in this process's thread "
            f"({threading.active_count()} Python thread(s) alive); OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}{torch_threads}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed A B rounds per model (default 9, 3 with --quick)")
    parser.add_argument("--repeats", type=int, dest="rounds", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--quick", action="store_true", help="3 rounds, and the light model at opset 9 only")
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="also bench this ONNX file (a folder: its largest .onnx); may be repeated")
    parser.add_argument("--ranges", choices=("default", "unit"), default="default",
                        help="convert's range settings: ConvertOptions() defaults, or the paper's unit range")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 9)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    given = [given_model(path) for path in args.model]
    options = ConvertOptions(**PAPER_RANGES) if args.ranges == "unit" else ConvertOptions()
    described = "ConvertOptions(**PAPER_RANGES)" if args.ranges == "unit" else "ConvertOptions() defaults"
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    largest_light = max(light.glob("*.onnx"), key=lambda p: p.stat().st_size)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        models = [(label, path, True) for label, path in export_zoo(work)]
        models += [(path.name, path, True) for path in given]
        models.append((f"{largest_light.stem} (opset 9)", largest_light, False))
        if not args.quick:
            at_13 = work / f"{largest_light.stem}_opset13.onnx"
            onnx.save(version_converter.convert_version(onnx.load(largest_light), 13), at_13)
            models.append((f"{largest_light.stem} (opset 13)", at_13, False))
        for label, path, weighted in models:
            row = {"model": label, "path": str(path) if path.parent != work else None,
                   "size_mb": path.stat().st_size / 1e6, "weight_carrying": weighted}
            try:
                row.update(side_by_side(path, work, rounds, options))
                row["goal"] = ("PASS" if row["ratio"] <= GOAL_RATIO else "FAIL") if weighted else "info"
            except Exception as error:  # a real model convert cannot handle: report it, bench the rest
                row.update(error=f"{type(error).__name__}: {error}", goal="ERROR" if weighted else "info")
            rows.append(row)
        threads = thread_note()

    if args.json:
        print(json.dumps({"goal": f"convert <= {GOAL_RATIO:g}x load+save on weight-carrying models",
                          "goal_ratio": GOAL_RATIO, "rounds": rounds, "options": described,
                          "threads": threads, "rows": rows}, indent=2))
        return
    print(f"analogize.convert_file ({described}) vs onnx.load + onnx.save of the same file; {rounds} "
          f"rounds, alternating A B; median [min-max] over rounds")
    print(f"threads: {threads}")
    print(f"goal: convert <= {GOAL_RATIO:g}x load+save on weight-carrying models (light models: information only)")
    print("cpu/wall: process CPU seconds per wall second during convert (> 1: convert used several threads; "
          "< 1: it waited, for the disk or for other processes)")
    print(f"{'model':34s} {'size':>7s} {'load+save ms':>21s} {'convert ms':>21s} {'ratio':>19s} {'cpu/wall':>8s}  goal")
    light_header = False
    for row in rows:
        if not row["weight_carrying"] and not light_header:
            print("-- light models: information only, no goal --")
            light_header = True
        head = f"{row['model'][:34]:34s} {row['size_mb']:6.1f}M"
        if "error" in row:
            print(f"{head} convert failed: {row['error'][:110]}  {row['goal']}")
            continue
        spread = lambda low_high: "[" + "-".join(_ms(seconds) for seconds in low_high) + "]"
        print(f"{head} {row['load_save_s'] * 1e3:8.1f} {spread(row['load_save_range_s']):>12s} "
              f"{row['convert_s'] * 1e3:8.1f} {spread(row['convert_range_s']):>12s} "
              f"{row['ratio']:6.2f}x [{row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f}] "
              f"{row['convert_cpu_per_wall']:8.2f}  {row['goal']}")


if __name__ == "__main__":
    main()
