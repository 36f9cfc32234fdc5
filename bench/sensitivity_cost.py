"""What a sensitivity analysis costs: one sweep of 1 + 2 L cells against the same cells run as separate evaluate
runs, and against one evaluate cell.

``sensitivity`` converts the model once, scores the clean model once and takes chains out of that one graph for
each cell; a user without it would run ``evaluate --plan`` once per cell (each run converts, and scores the clean
model again). Both run in this process, alternately, over several rounds; the best times are compared. Goal: the
sweep costs about its cell count in evaluate cells (sensitivity / one cell close to 1 + 2 L), well below the
separate runs. ONNX Runtime uses all cores (their count is printed).

    python bench/sensitivity_cost.py [--model models/digits_convnet.onnx] [--data digits] [--limit 300]
                                     [--repeats 2] [--rounds 2] [--json]
"""
import argparse
import json
import os
from pathlib import Path

import onnx

from analogize.convert import ConvertOptions
from analogize.data import model_feeds
from analogize.evaluate.engine import Grid, evaluate
from analogize.planning.sensitivity import analog_units, sensitivity, unit_plans
from timing import interleaved_best

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "digits_convnet.onnx"))
    parser.add_argument("--data", default="digits")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()

    model = onnx.load(arguments.model)
    feeds = model_feeds(arguments.data, model, limit=arguments.limit)
    options = ConvertOptions(bits=6, ep=0.1)
    units, _ = analog_units(model, options)
    plans = unit_plans(units, None)

    def one_sweep():
        sensitivity(model, feeds, options, repeats=arguments.repeats, statistics=False)

    def separate_runs():
        for _, plan in plans:
            evaluate(model, feeds, Grid(repeats=arguments.repeats), ConvertOptions(bits=6, ep=0.1,
                                                                                   plan=plan.to_document()))

    def one_cell():
        evaluate(model, feeds, Grid(repeats=arguments.repeats), options)

    sweep, separate, cell = interleaved_best([one_sweep, separate_runs, one_cell], arguments.rounds)
    figures = {"model": Path(arguments.model).name, "units": len(units), "cells": len(plans),
               "threads": os.cpu_count(), "samples": len(feeds), "repeats": arguments.repeats,
               "sensitivity_s": round(sweep, 3), "separate_runs_s": round(separate, 3), "one_cell_s": round(cell, 3),
               "sensitivity_in_cells": round(sweep / cell, 2), "separate_over_sensitivity": round(separate / sweep, 2)}
    if arguments.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{figures['model']}: {figures['units']} units, {figures['cells']} cells, {figures['samples']} samples, "
          f"{arguments.repeats} draws, {figures['threads']} threads")
    print(f"sensitivity {sweep:.2f} s = {figures['sensitivity_in_cells']} evaluate runs of one cell "
          f"({cell:.2f} s each; it has {len(plans)} cells); the same cells as separate evaluate runs {separate:.2f} s "
          f"({figures['separate_over_sensitivity']}x the sweep)")


if __name__ == "__main__":
    main()
