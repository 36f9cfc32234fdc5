"""How close the greedy plan search comes to the optimum, on a model small enough to enumerate every plan.

The model is the shipped digits ConvNet with one fragile layer (tests/reference.py ``fragile_digits``: /2/Conv's
weights drown under an outlier that its clean function never sees). Its 6 units (5 layers and the input DAC) take
each of digital, --bits-choices; every one of the (choices + 1) ** 6 plans is measured on the same sweep, with the
same cells and seeds as the search's candidates, and the cheapest plan meeting the target (fewest digital units,
then fewest bits) is compared with the one ``plan`` finds. Prints both costs, the cells each measured and the
wall time; ONNX Runtime uses all cores (their count is printed).

    python bench/plan_optimality.py [--bits-choices 4,8] [--target 0.97] [--limit 240] [--repeats 1] [--json]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from analogize.convert import ConvertOptions
from analogize.data import model_feeds
from analogize.evaluate.engine import Evaluation, Grid
from analogize.planning.search import SearchBounds, enumerated_optimum, search_plan
from analogize.planning.sensitivity import analog_units
from analogize.progress import progress_bar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference import fragile_digits  # noqa: E402 (the tests' reference models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits-choices", default="4,8")
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--ep", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()

    model = fragile_digits()
    feeds = model_feeds("digits", model, limit=arguments.limit, labels=False)
    options = ConvertOptions(ep=arguments.ep)
    bounds = SearchBounds(bits=tuple(int(b) for b in arguments.bits_choices.split(",")))
    start = time.perf_counter()
    found = search_plan(model, feeds, options, target=arguments.target, bounds=bounds, repeats=arguments.repeats,
                        verify_repeats=arguments.repeats)
    greedy_seconds = time.perf_counter() - start

    units = [unit["unit"] for unit in analog_units(model, options)[0]]
    sweep = Evaluation(model, feeds, Grid(repeats=arguments.repeats, seed=0), options, fidelity=True)
    start = time.perf_counter()
    with progress_bar(1 + (len(bounds.bits) + 1) ** len(units) * arguments.repeats, "enumerate") as bar:
        sweep.clean_pass(bar)
        optimum, best, measured = enumerated_optimum(sweep, units, bounds, "agreement", arguments.target, bar)
    enumeration_seconds = time.perf_counter() - start

    greedy = (found["cost"]["digital_layers"], found["cost"]["total_bits"])
    figures = {"units": len(units), "bits_choices": list(bounds.bits), "target_agreement": arguments.target,
               "threads": os.cpu_count(), "greedy_cost": list(greedy), "greedy_cells": len(found["steps"]),
               "greedy_s": round(greedy_seconds, 1), "optimum_cost": None if optimum is None else list(optimum),
               "optimum_plan": best, "enumerated_cells": measured, "enumeration_s": round(enumeration_seconds, 1),
               "greedy_is_optimal": optimum is not None and greedy == optimum}
    if arguments.json:
        print(json.dumps(figures, indent=2))
        return
    choices = ", ".join(map(str, bounds.bits))
    print(f"{len(units)} units x {{digital, {choices} bits}}, agreement >= {arguments.target}, "
          f"{arguments.repeats} draws, {figures['threads']} threads")
    print(f"greedy:    cost {greedy} (digital units, total bits) from {len(found['steps'])} cells in "
          f"{greedy_seconds:.1f} s (sensitivity ranking included)")
    print(f"optimum:   cost {optimum} from {measured} cells in {enumeration_seconds:.1f} s: {best}")
    print("the greedy plan is optimal" if figures["greedy_is_optimal"] else "the greedy plan is NOT optimal")


if __name__ == "__main__":
    main()
