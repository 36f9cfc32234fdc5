"""File-level entry points (the CLI's ``analogize export`` and ``analogize rebuild``): load, run the pipeline,
write the model and its spec."""
from __future__ import annotations

import json
from pathlib import Path

from ..model_io import atomic_output, load_model, model_output, refuse_overwrites, save_model
from .pipeline import export
from .rebuild import rebuild
from .verify import compare_outputs
from ..untrusted import read_json


def export_file(source, destination, format: str = "qdq", spec=None, keep_noise: bool = False,
                verify_data: str | None = None, limit: int = 1000, overwrite: bool = False) -> dict:
    """:func:`~.pipeline.export` from file to file, optionally checked on data."""
    from ..data import fit_to_input, load_for_model, spec_file

    source, destination = Path(source), Path(destination)
    spec_path = Path(spec) if spec else destination.with_suffix(".spec.json")
    inputs = {"the model": source, "--verify-data": spec_file(verify_data)}
    refuse_overwrites(inputs, {**model_output("-o", destination), "--spec": spec_path}, models=("the model",),
                      replaceable="the model", overwrite=overwrite)
    model, external = load_model(source)
    exported, analog = export(model, format, keep_noise)
    report = {"input": str(source), "output": str(destination), "spec": str(spec_path), "format": format,
              "tensors": len(analog["tensors"]), "activations": len(analog["activations"])}
    if verify_data:
        dataset = load_for_model(verify_data, model, limit=limit)
        inputs, _ = fit_to_input(dataset, model)
        report["verification"] = analog["verification"] = compare_outputs(model, exported, inputs)
    save_model(exported, destination, external_data=external, overwrite_input=None if overwrite else source)
    with atomic_output(spec_path) as temporary:
        temporary.write_text(json.dumps(analog, indent=2, allow_nan=False) + "\n")
    return report


def rebuild_file(exported_path, spec_path, destination):
    """:func:`~.rebuild.rebuild` from files (export and spec) to a file."""
    refuse_overwrites({"the export": exported_path, "--spec": spec_path}, model_output("-o", destination),
                      models=("the export",))
    exported, external = load_model(exported_path)
    spec = read_json(spec_path, "the spec", "give the spec 'analogize export' wrote with the model")
    return save_model(rebuild(exported, spec), destination, external_data=external, overwrite_input=exported_path)
