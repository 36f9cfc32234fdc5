"""``sweep``: train a zoo model from scratch over a grid of activations x depths x bits x EP x seeds.

This is how the paper's figures are made: accuracy against the ReLU-GELU/SiLU interpolation factor per EP
(Fig. 3e-f), against the LeakyReLU slope (Table II), and against depth (Fig. 6). Every cell is one
:func:`analogize.training.train.train` run, written to its own file in the sweep directory as soon as it finishes, so
a sweep resumes where it stopped and shards (``--shard I/N`` in N jobs sharing the directory) need no merge
step: whatever runs last with the whole grid finds every cell done and writes the summary.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..convert import PAPER_RANGES, ConvertOptions
from ..errors import AnalogizeError
from ..evaluate.results import figure_maker
from .finetune import FinetuneOptions, split_data
from ..model_io import atomic_output
from ..progress import progress_bar
from ..untrusted import Integer, Number, check, read_json
from .train import TrainSetup, train

SCHEMA = {"name": "analogize.sweep", "version": 1}
DEPTH_KINDS = ("linear", "conv")
SETTINGS_FILE = "sweep-settings.json"


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep. ``activations`` are analysis settings (``relu``, ``interp-gelu:0.5``,
    ``leaky:0.1``, ``gelu`` ...); a depth is the number of hidden linear layers (``linear``, each ``width``
    wide) or of convolution stages before one linear layer (``conv``); ``None`` keeps the base model's."""

    activations: tuple[str, ...] = ("relu", "gelu")
    depths: tuple[int | None, ...] = (None,)
    depth_kind: str = "linear"
    width: int = 64
    bits: tuple[int, ...] = (4,)
    eps: tuple[float, ...] = (0.5,)
    seeds: int = 3

    def check(self) -> "SweepGrid":
        from ..analysis import Activation

        identities = [Activation.parse(text).identity for text in self.activations]
        for name, values in (("activations", identities), ("depths", self.depths), ("bits", self.bits),
                             ("EPs", self.eps)):
            if len(set(values)) != len(values):
                raise AnalogizeError(f"the sweep's {name} repeat a value ({', '.join(map(str, self._axis(name)))}); "
                                     f"give each once (use --seeds for repeated runs)")
        if self.depth_kind not in DEPTH_KINDS:
            raise AnalogizeError(f"unknown depth kind {self.depth_kind!r}: choose from {', '.join(DEPTH_KINDS)}")
        if any(d is not None and (not isinstance(d, int) or d < 0) for d in self.depths):
            raise AnalogizeError(f"depths must be whole numbers >= 0, got {self.depths}")
        if self.seeds < 1 or self.width < 1 or not self.activations or not self.bits or not self.eps:
            raise AnalogizeError("a sweep needs activations, bits and EPs, seeds >= 1 and width >= 1")
        return self

    def _axis(self, name: str) -> tuple:
        return {"activations": self.activations, "depths": self.depths, "bits": self.bits, "EPs": self.eps}[name]

    def figure_axes(self) -> list[str]:
        """The axes the sweep's figure will have (factor, alpha, depth): those along which the grid varies."""
        return [view[0] for view in _views([{**_activation_coordinates(c["activation"]), **c} for c in self.cells()])]

    def cells(self) -> list[dict]:
        return [{"activation": a, "depth": d, "bits": b, "ep": e, "seed": s} for a in self.activations
                for d in self.depths for b in self.bits for e in self.eps for s in range(self.seeds)]


def interpolation_activations(smooth: str, factors) -> tuple[str, ...]:
    """``interp-SMOOTH:i`` for each factor: i = 0 (ReLU) and i = 1 (SMOOTH) run through the same op as the
    factors between, so they share one curve."""
    return tuple(f"interp-{smooth}:{float(f)!r}" for f in factors)


def convert_options_for(activation: str, bits: int, ep: float, base: ConvertOptions, seed: int) -> ConvertOptions:
    """``base`` with the cell's activation (an analysis setting; ``relu`` keeps the zoo model's ReLU), bits,
    EP and seed."""
    from ..evaluate.engine import ActivationVariant, cell_convert_options

    variant = ActivationVariant("relu", "keep") if activation == "relu" else ActivationVariant.parse(activation)
    return cell_convert_options(base, variant, bits, ep, seed)


def _setup_for(base: TrainSetup, depth: int | None, grid: SweepGrid) -> TrainSetup:
    if depth is None:
        return base
    if grid.depth_kind == "linear":
        return replace(base, config={**base.config, "stages": 0, "hidden": (grid.width,) * depth})
    return replace(base, config={**base.config, "stages": depth, "hidden": ()})


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _cell_path(directory: Path, cell: dict) -> Path:
    key = json.dumps(cell, sort_keys=True)
    return directory / "cells" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def sweep(directory, data: str, grid: SweepGrid, setup: TrainSetup = TrainSetup(),
          options: FinetuneOptions = FinetuneOptions(),
          convert_options: ConvertOptions = ConvertOptions(**PAPER_RANGES), *, eval_data: str | None = None,
          limit: int | None = None, shard: tuple[int, int] = (0, 1), progress: bool = False) -> dict:
    """Run the cells of ``grid`` that this shard owns and have no result in ``directory`` yet; return the
    summary of every cell done so far (``complete`` says whether the grid is). The chains keep the paper's unit
    range unless ``convert_options`` say otherwise."""
    grid.check()
    setup.check()
    options.check()
    if convert_options.precision is not None:
        raise AnalogizeError("a sweep sets the precision per cell from --bits; leave out --precision")
    if not convert_options.noise and any(grid.eps):
        raise AnalogizeError("the chains have no noise (--no-noise), so EP values other than 0 mean nothing; "
                             "sweep --ep 0, or drop --no-noise")
    train_data, validation = split_data(data, limit, eval_data, options.seed)
    _check_cells(grid, setup, convert_options, train_data)
    directory = Path(directory)
    # the device may differ between the machines that run the shards of one sweep
    settings = {"schema": SCHEMA, "data": data, "eval_data": eval_data, "limit": limit, "grid": asdict(grid),
                "setup": asdict(setup), "options": {k: v for k, v in asdict(options).items() if k != "device"},
                "convert_options": {k: v for k, v in asdict(convert_options).items() if k not in ("bits", "ep")}}
    _claim(directory, settings)
    cells = grid.cells()
    index, count = shard
    mine = [c for position, c in enumerate(cells) if position % count == index and not _cell_path(directory, c).exists()]
    bar = progress_bar(len(mine), "sweep", progress, unit="cell")
    with bar:
        for cell in mine:
            started = time.perf_counter()
            cell_options = replace(options, seed=options.seed + cell["seed"])
            _, report = train(_setup_for(setup, cell["depth"], grid), train_data, validation, cell_options,
                              convert_options_for(cell["activation"], cell["bits"], cell["ep"], convert_options,
                                                  cell_options.seed))
            record = {"cell": cell, "accuracy": report["after"]["noisy_mean"],
                      "accuracy_draw_std": report["after"]["noisy_std"], "digital": report["after"]["digital"],
                      "accuracy_untrained": report["before"]["noisy_mean"], "epochs_run": report["epochs_run"],
                      "final_train_loss": report["history"][-1]["train_loss"], "built": report["built"],
                      "settings": report["settings"], "seconds": time.perf_counter() - started}
            with atomic_output(_cell_path(directory, cell), keep_on_failure=True) as temporary:  # resumable
                temporary.write_text(json.dumps(record, indent=1, default=float, allow_nan=False) + "\n")
            bar.set_postfix(last_accuracy=f"{record['accuracy']:.1%}")
            bar.update()
    return summarise(directory)


def _check_cells(grid: SweepGrid, setup: TrainSetup, convert_options: ConvertOptions, train_data) -> None:
    """Fail before the first cell trains (and before the directory is claimed) on a model that cannot be
    built at some depth or convert options that some cell cannot use."""
    from .train import sized_config
    from ..zoo import create_model

    for depth in grid.depths:
        create_model(setup.model, **sized_config(_setup_for(setup, depth, grid), train_data))
    for activation in grid.activations:
        for bits in grid.bits:
            for ep in grid.eps:
                convert_options_for(activation, bits, ep, convert_options, 0).chain_settings()


def _claim(directory: Path, settings: dict) -> None:
    """Make ``directory`` this sweep's, or check that it already is (the same settings). The marker is
    created exclusively, so of two shards that start together with different flags one is refused."""
    marker = directory / SETTINGS_FILE
    try:
        (directory / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AnalogizeError(f"cannot make the sweep directory {directory}: {error.strerror or error}") from None
    settings = json.loads(json.dumps(settings, default=list))
    staging = directory / f".{SETTINGS_FILE}.{os.getpid()}"
    staging.write_text(json.dumps(settings, indent=1, allow_nan=False) + "\n")
    try:
        os.link(staging, marker)
    except FileExistsError:
        hint = "use another directory"
        stored = check(read_json(marker, "the sweep's settings", hint), dict, str(marker), hint)
        if _fingerprint(stored) != _fingerprint(settings):
            changed = sorted(k for k in settings if stored.get(k) != settings.get(k))
            raise AnalogizeError(f"{directory} holds a sweep with other settings ({', '.join(changed)} differ); "
                                 f"use another directory, or the same flags to resume it") from None
    finally:
        staging.unlink()


# What summarise reads of the sweep's files, as analogize.untrusted checks them
_SETTINGS_SCHEMA = {"grid": {"activations": [str], "depths": [(Integer, None)], "depth_kind": str, "width": Integer,
                             "bits": [Integer], "eps": [Number], "seeds": Integer}}
_CELL_SCHEMA = {"cell": {"activation": str, "depth": (Integer, None), "bits": Integer, "ep": Number, "seed": Integer},
                "accuracy": Number, "digital": Number}


def summarise(directory) -> dict:
    """Every finished cell of the sweep in ``directory``, and per grid point (all but the seed) the mean and
    sample std of the accuracy over seeds."""
    directory = Path(directory)
    marker = directory / SETTINGS_FILE
    if not marker.exists():
        raise AnalogizeError(f"{directory} holds no sweep (no {SETTINGS_FILE}); run 'analogize sweep' into it first")
    hint = "use another directory"
    settings = check(read_json(marker, "the sweep's settings", hint), _SETTINGS_SCHEMA, str(marker), hint)
    axes = settings["grid"]
    grid = SweepGrid(**{axis.name: tuple(axes[axis.name]) if isinstance(axes[axis.name], list) else axes[axis.name]
                        for axis in fields(SweepGrid)})
    records = []
    for cell in grid.cells():
        path = _cell_path(directory, cell)
        if path.exists():
            hint = "delete it to run that cell again"
            record = check(read_json(path, "the sweep's cell result", hint), _CELL_SCHEMA, str(path), hint)
            if record["cell"] != cell:
                raise AnalogizeError(f"{path} holds the result of another cell; {hint}")
            records.append(record)
    points = {}
    for record in records:
        cell = record["cell"]
        points.setdefault(tuple(cell[k] for k in ("activation", "depth", "bits", "ep")), []).append(record)
    summary = []
    for (activation, depth, bits, ep), members in points.items():
        accuracies = np.array([m["accuracy"] for m in members])
        digital = np.array([m["digital"] for m in members])
        summary.append({"activation": activation, **_activation_coordinates(activation), "depth": depth,
                        "bits": bits, "ep": ep, "seeds": len(members),
                        "accuracy_mean": float(accuracies.mean()),
                        "accuracy_std": float(accuracies.std(ddof=1)) if len(members) > 1 else 0.0,
                        "accuracies": accuracies.tolist(), "digital_mean": float(digital.mean())})
    return {"schema": SCHEMA, "settings": settings, "cells_done": len(records), "cell_count": len(grid.cells()),
            "complete": len(records) == len(grid.cells()), "points": summary, "cells": records}


def _activation_coordinates(activation: str) -> dict:
    """Where an activation sits on the paper's axes: family (rectifier, interp-gelu, interp-silu or its own
    name), interpolation factor and leaky slope."""
    from ..analysis import Activation

    resolved = Activation.parse(activation)
    return {"family": resolved.family, "factor": resolved.interpolation_factor,
            "alpha": resolved.attributes.get("alpha")}


def table(result: dict) -> str:
    lines = [f"{result['cells_done']} of {result['cell_count']} cells done"
             + ("" if result["complete"] else " (incomplete: run again to finish, or wait for the other shards)")]
    header = ["activation", "depth", "bits", "EP", "accuracy (mean ± std over seeds)", "digital", "seeds"]
    rows = [[p["activation"], "-" if p["depth"] is None else str(p["depth"]), str(p["bits"]), f"{p['ep']:g}",
             f"{100 * p['accuracy_mean']:.1f} ± {100 * p['accuracy_std']:.1f} %", f"{100 * p['digital_mean']:.1f} %",
             str(p["seeds"])] for p in result["points"]]
    widths = [max(len(header[k]), *(len(r[k]) for r in rows)) if rows else len(header[k]) for k in range(len(header))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _views(points: list[dict]) -> list[tuple]:
    """The figure's rows: (x axis key, members, panel keys, line label) for accuracy against the
    interpolation factor (the rectifier joins every smooth family's curve at i = 0), against the leaky
    slope, and against depth, each where the points vary along it."""
    views = []
    smooth_families = sorted({p["family"] for p in points if p["family"].startswith("interp-")})
    rectifier = [p for p in points if p["family"] == "rectifier" and p["alpha"] == 0.0]
    interpolated = [{**p, "family": family} for family in smooth_families
                    for p in rectifier + [p for p in points if p["family"] == family]]
    if len({p["factor"] for p in interpolated}) > 1:
        views.append(("factor", interpolated, ("bits", "depth"), lambda p: f"{p['family']} EP {p['ep']:g}"))
    rectifiers = [p for p in points if p["family"] == "rectifier"]
    if len({p["alpha"] for p in rectifiers}) > 1:
        views.append(("alpha", rectifiers, ("bits", "depth"), lambda p: f"EP {p['ep']:g}"))
    if len({p["depth"] for p in points}) > 1:
        views.append(("depth", points, ("bits", "ep"), lambda p: p["activation"]))
    return views


_AXIS_LABELS = {"factor": "interpolation factor i", "alpha": "LeakyReLU slope alpha", "depth": "depth"}


@figure_maker
def sweep_figure(result: dict):
    """The paper's figure types from the points: accuracy against the interpolation factor (one line per
    EP), against the leaky slope, and against depth (one line per activation), each panel one setting of
    the remaining axes; a row per axis that varies in the sweep. The title names the model, the data and the
    settings."""
    from ..evaluate.results import (Series, chain_text, counted, draw_series, integer_ticks, listed, percent_axis,
                                    pyplot, set_title)

    views = _views(result["points"])
    if not views:
        raise AnalogizeError("nothing varies along the factor, slope or depth axes: no figure to draw")
    panels = [sorted({tuple(p[k] for k in by) for p in members}, key=str) for _, members, by, _ in views]
    columns = max(len(p) for p in panels)
    figure, axes = pyplot().subplots(len(views), columns, figsize=(4.4 * columns, 3.6 * len(views) + 0.6),
                                     squeeze=False)
    settings = result["settings"]
    depth_kind = settings["grid"]["depth_kind"]
    for row, ((axis_key, members, by, line_of), keys) in enumerate(zip(views, panels)):
        for column, panel in enumerate(keys):
            axis = axes[row][column]
            inside = [p for p in members if tuple(p[k] for k in by) == panel]
            series = []
            for line in dict.fromkeys(line_of(p) for p in sorted(inside, key=lambda p: str(line_of(p)))):
                mine = sorted((p for p in inside if line_of(p) == line), key=lambda p: p[axis_key])
                series.append(Series(line, [p[axis_key] for p in mine], [100 * p["accuracy_mean"] for p in mine],
                                     [100 * p["accuracy_std"] for p in mine]))
            draw_series(axis, series)
            percent_axis(axis)
            if axis_key == "depth":
                integer_ticks(axis)
            label = _AXIS_LABELS[axis_key] + (f" ({depth_kind} layers)" if axis_key == "depth" else "")
            axis.set(xlabel=label, ylabel="noisy test accuracy (%)",
                     title=", ".join(f"{k} {'-' if v is None else v}" for k, v in zip(by, panel)))
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        for column in range(len(keys), columns):
            axes[row][column].set_visible(False)
    grid, options = settings["grid"], settings["options"]
    limit = f" (limit {settings['limit']})" if settings.get("limit") else ""
    set_title(figure, f"{settings['setup']['model']} trained under noise on {settings['data']}{limit}: "
                      f"{counted(options['epochs'], 'epoch')}, {settings['setup']['init']} initialisation",
              f"bits {listed(grid['bits'])}; EP {listed(grid['eps'])}; {chain_text(settings['convert_options'])}; "
              f"accuracy mean ± std over {counted(grid['seeds'], 'seed')}, each over "
              f"{counted(options['repeats'], 'noise draw')}")
    figure.tight_layout()
    return figure


def plot(result: dict, path) -> None:
    """Write :func:`sweep_figure` to ``path``."""
    from ..evaluate.results import save_figure

    save_figure(sweep_figure(result), path)
