"""How many of ONNX's own backend node tests the torch interpreter passes, per op type.

By default the ops real models use (``analogize.training.coverage.MODEL_OPS``); ``--ops`` names others
(comma-separated), ``--all`` takes every op type with node tests. The table has one row per op: its cases,
how many passed, failed and were skipped (out of scope: types torch has no CPU kernels for, training mode,
sequences), then the totals; ``--reasons`` lists each failed and skipped case with why, ``--json`` prints
everything as JSON.

    python bench/interpreter_coverage.py [--ops Resize,LSTM | --all] [--reasons] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from analogize.training.coverage import MODEL_OPS, coverage


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--ops", help="comma-separated op types (default: the ops real models use)")
    chosen.add_argument("--all", action="store_true", help="every op type that has node tests")
    parser.add_argument("--reasons", action="store_true", help="list failed and skipped cases with why")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    op_types = None if args.all else args.ops.split(",") if args.ops else MODEL_OPS
    start = time.perf_counter()
    report = coverage(op_types)
    seconds = time.perf_counter() - start
    rows = [entry.as_dict() for entry in report.values()]
    totals = {key: sum(row[key] for row in rows) for key in ("cases", "passed", "failed", "skipped")}
    if args.json:
        print(json.dumps({"ops": rows, "totals": totals, "seconds": round(seconds, 2),
                          "torch_threads": torch.get_num_threads()}, indent=2))
        return 0
    print(f"{'op':24s}{'cases':>7s}{'passed':>8s}{'failed':>8s}{'skipped':>9s}")
    for row in rows:
        print(f"{row['op']:24s}{row['cases']:7d}{row['passed']:8d}{row['failed']:8d}{row['skipped']:9d}")
    print(f"{'total':24s}{totals['cases']:7d}{totals['passed']:8d}{totals['failed']:8d}{totals['skipped']:9d}"
          f"   ({len(rows)} ops, {seconds:.1f} s, {torch.get_num_threads()} torch thread(s))")
    if args.reasons:
        for row in rows:
            for outcome, cases in (("failed", row["failures"]), ("skipped", row["skips"])):
                for case, reason in cases.items():
                    print(f"{row['op']}: {outcome} {case}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
