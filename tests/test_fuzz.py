"""Fuzzing, so the hard edges stay fixed (issue 17): bit-flipped copies of the shipped model through convert
and evaluate as separate processes (an abort or a hang would show), and forged files of every schema the
commands read (settings metadata, specs, shard parts, plans, results, checkpoints), each run ending in success or
in one line and exit code 2, never a traceback. The default run takes a few of each; ``-m slow`` takes the 200
copies the issue asks for and hundreds of forgeries."""
import copy
import json
import math
import random
import subprocess
import sys
import traceback

import pytest

from conftest import DEFAULT_MODEL


def flipped_copies(folder, count: int, seed: int = 0) -> list:
    """``count`` copies of the shipped model with 1 to 8 random bits flipped each."""
    source = DEFAULT_MODEL.read_bytes()
    rng = random.Random(seed)
    paths = []
    for k in range(count):
        data = bytearray(source)
        for _ in range(rng.choice([1, 1, 2, 8])):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
        path = folder / f"flipped-{k}.onnx"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def outcome(*argv) -> tuple[int, str]:
    finished = subprocess.run([sys.executable, "-m", "analogize", *map(str, argv)], capture_output=True, text=True,
                              timeout=300)
    return finished.returncode, finished.stderr


def check_copies(folder, count: int, seed: int) -> None:
    for path in flipped_copies(folder, count, seed):
        for argv in (("convert", path, "-o", folder / "out.onnx", "--overwrite"),
                     ("evaluate", path, "--data", "digits", "--limit", "20", "--repeats", "1", "--bits", "6",
                      "--quiet", "--no-baseline")):
            code, err = outcome(*argv)
            assert code in (0, 2) and "Traceback" not in err, (path.name, argv[0], code, err[-500:])
            assert code == 0 or len(err.strip().splitlines()) == 1, (path.name, argv[0], err)


def test_bit_flipped_models_end_in_success_or_one_line(tmp_path):
    check_copies(tmp_path, 3, seed=1)


@pytest.mark.slow
def test_two_hundred_bit_flipped_models_end_in_success_or_one_line(tmp_path):
    check_copies(tmp_path, 200, seed=2)


# Forged files (issue 17): a real file of each schema the commands read, with one value replaced by another type,
# a huge or non-finite number, deep nesting, or nothing at all; every command that reads it ends in success or in
# one line and exit code 2, never in another exception.
MISSING, DEEP = object(), "<deeply nested>"
FORGERIES = (MISSING, None, True, 0, -1, 2**64, -2**63, 1e308, math.nan, -math.inf, "", "x", [], {}, [[1]], {"x": 1},
             DEEP)
TRAINING = ("--data", "digits", "--limit", "40", "--repeats", "1", "--quiet")


def json_paths(document, path=()):
    """The place of the whole ``document`` and of every value in it (of a list, its first three items)."""
    yield path
    items = document.items() if isinstance(document, dict) else \
        enumerate(document[:3]) if isinstance(document, list) else ()
    for key, value in items:
        yield from json_paths(value, path + (key,))


def forged(document, path: tuple, value):
    """A copy of ``document`` with the value at ``path`` replaced by ``value`` (or removed: MISSING); ``document``
    itself when it has no such place."""
    if not path:
        return {} if value is MISSING else value
    forgery = copy.deepcopy(document)
    parent = forgery
    try:
        for key in path[:-1]:
            parent = parent[key]
        if value is MISSING:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return document
    return forgery


def forgeries(document, count: int, seed: int):
    """``count`` (description, place, forgery) drawn from every pair of a place in ``document`` and a forgery."""
    cases = [(path, value) for path in json_paths(document) for value in FORGERIES]
    for path, value in random.Random(seed).sample(cases, min(count, len(cases))):
        yield f"{'/'.join(map(str, path)) or '(whole)'} = {'missing' if value is MISSING else repr(value)}", path, value


def nested(depth: int) -> list:
    inner = []
    for _ in range(depth):
        inner = [inner]
    return inner


def as_json(document, depth: int = 100_000) -> str:
    return json.dumps(document).replace(json.dumps(DEEP), "[" * depth + "]" * depth)


class Outcomes:
    """Runs analogize in this process and collects every run that ends in neither success nor one line."""

    def __init__(self, capsys):
        self.capsys, self.failures = capsys, []

    def run(self, what: str, *argv) -> None:
        from analogize.cli import main

        try:
            code = main([str(a) for a in argv])
        except BaseException as error:  # SystemExit and KeyboardInterrupt would be findings too
            frame = traceback.extract_tb(error.__traceback__)[-1]
            code, err = None, f"{type(error).__name__}: {str(error)[:200]} at {frame.filename}:{frame.lineno}"
        else:
            err = self.capsys.readouterr().err
        self.capsys.readouterr()
        if not (code == 0 or code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err):
            self.failures.append(f"{argv[0]} with {what}: exit {code}: {err.strip()[-300:]}")

    def check(self) -> None:
        assert not self.failures, "\n".join(self.failures)


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    """One real file of each schema, made by the commands that write them."""
    import onnx

    from analogize.cli import main
    from analogize.convert import convert
    from analogize.export import export
    from analogize.convert import stored_settings

    folder = tmp_path_factory.mktemp("real")
    result = convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=1)
    onnx.save(result.model, folder / "converted.onnx")
    exported, spec = export(result.model, "qdq")
    onnx.save(exported, folder / "exported.onnx")
    layers = result.report["layers"]
    plan = {"format": "analogize.plan", "version": 1, "note": "fuzzed",
            "layers": {layers[0]: {"digital": True}, "input:input": {"bits": 8},
                       layers[1]: {"bits": 4, "sites": {"weight": {"bits": 6, "ep": 0.1}}}}}
    evaluation = ("evaluate", DEFAULT_MODEL, "--data", "digits", "--limit", "20", "--repeats", "1", "--bits", "4",
                  "--ep", "0.1,0.3", "--quiet")
    for shard in ("0/2", "1/2"):
        assert main([str(a) for a in (*evaluation, "--shard", shard, "--json", folder / f"part{shard[0]}.json")]) == 0
    assert main([str(a) for a in (*evaluation, "--json", folder / "evaluation.json")]) == 0
    assert main([str(a) for a in ("finetune", folder / "converted.onnx", *TRAINING, "--epochs", "1", "-o",
                                  folder / "tuned.onnx", "--json", folder / "training.json", "--checkpoint-dir",
                                  folder / "checkpoint")]) == 0
    return {"folder": folder, "settings": stored_settings(result.model), "spec": spec, "plan": plan,
            "parts": [json.loads((folder / f"part{k}.json").read_text()) for k in range(2)],
            "results": [json.loads((folder / f"{name}.json").read_text()) for name in ("evaluation", "training")]}


def with_settings(model, text: str):
    from analogize.passes.model import METADATA_KEY

    next(entry for entry in model.metadata_props if entry.key == METADATA_KEY).value = text
    return model


def forged_settings(files, folder, outcomes, count, seed):
    """Forged ``analogize.settings`` metadata in a converted model, as evaluate, export and finetune read it."""
    import onnx

    for what, path, value in forgeries(files["settings"], count, seed):
        model = folder / "forged.onnx"
        onnx.save(with_settings(onnx.load(files["folder"] / "converted.onnx"),
                                as_json(forged(files["settings"], path, value))), model)
        outcomes.run(what, "evaluate", model, "--data", "digits", "--limit", "10", "--repeats", "1", "--quiet",
                     "--no-baseline")
        outcomes.run(what, "export", model, "-o", folder / "e.onnx", "--spec", folder / "e.json")
        outcomes.run(what, "finetune", model, *TRAINING, "--epochs", "1", "-o", folder / "t.onnx")


def forged_specs(files, folder, outcomes, count, seed):
    """Forged specs for rebuild; the export records the forged settings too, so that they get past the pairing."""
    import onnx

    for what, path, value in forgeries(files["spec"], count, seed):
        spec = forged(files["spec"], path, value)
        exported = onnx.load(files["folder"] / "exported.onnx")
        if isinstance(spec, dict) and "settings" in spec:
            with_settings(exported, as_json(spec["settings"]))
        onnx.save(exported, folder / "exported.onnx")
        (folder / "spec.json").write_text(as_json(spec))
        outcomes.run(what, "rebuild", folder / "exported.onnx", folder / "spec.json", "-o", folder / "r.onnx")


def forged_parts(files, folder, outcomes, count, seed):
    """Forged shard parts for merge, forged alike where both hold the place (else they differ at once)."""
    for what, path, value in forgeries(files["parts"][0], count, seed):
        for k, part in enumerate(files["parts"]):
            (folder / f"p{k}.json").write_text(as_json(forged(part, path, value)))
        outcomes.run(what, "merge", folder / "p0.json", folder / "p1.json", "-o", folder / "m.json", "--csv",
                     folder / "m.csv")


def forged_plans(files, folder, outcomes, count, seed):
    for what, path, value in forgeries(files["plan"], count, seed):
        (folder / "plan.json").write_text(as_json(forged(files["plan"], path, value)))
        outcomes.run(what, "convert", DEFAULT_MODEL, "-o", folder / "c.onnx", "--plan", folder / "plan.json")


def forged_results(files, folder, outcomes, count, seed):
    """Forged results of evaluate and finetune for the report."""
    for result in files["results"]:
        for what, path, value in forgeries(result, count, seed):
            (folder / "result.json").write_text(as_json(forged(result, path, value)))
            outcomes.run(f"{result['format']}: {what}", "report", folder / "result.json", "-o", folder / "r.html")


def forged_checkpoints(files, folder, outcomes, count, seed):
    """Forged finetune checkpoints for --resume: a file that is no torch checkpoint, one of another model, and the
    real one with one value forged (tensors among the values forged: a tensor of another shape)."""
    import shutil

    import torch

    real = torch.load(files["folder"] / "checkpoint" / "finetune-checkpoint.pt", weights_only=True)
    resume = ("finetune", files["folder"] / "converted.onnx", *TRAINING, "--epochs", "2", "-o", folder / "t.onnx",
              "--checkpoint-dir", folder, "--resume")
    checkpoint = folder / "finetune-checkpoint.pt"
    shutil.make_archive(str(folder / "archive"), "zip", files["folder"], "checkpoint")
    shutil.move(folder / "archive.zip", checkpoint)
    outcomes.run("a zip that is no torch checkpoint", *resume)
    other = {**real, "module": {name: torch.zeros(3) for name in real["module"]}}
    for what, forgery in [("weights of other shapes", other), *(
            (what, forged(real, path, torch.zeros(2, 3) if value == [[1]] else nested(200) if value is DEEP else value))
            for what, path, value in forgeries(real, count, seed))]:
        torch.save(forgery, checkpoint)
        outcomes.run(what, *resume)


# each schema's forgeries per run: quick, and under -m slow (forged settings cost three commands each)
SCHEMAS = {forged_settings: (4, 60), forged_specs: (8, 300), forged_parts: (8, 300), forged_plans: (8, 300),
           forged_results: (8, 300), forged_checkpoints: (8, 300)}


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda schema: schema.__name__)
def test_forged_files_end_in_success_or_one_line(schema, real_files, tmp_path, capsys):
    outcomes = Outcomes(capsys)
    schema(real_files, tmp_path, outcomes, count=SCHEMAS[schema][0], seed=1)
    outcomes.check()


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda schema: schema.__name__)
def test_many_forged_files_end_in_success_or_one_line(schema, real_files, tmp_path, capsys):
    outcomes = Outcomes(capsys)
    schema(real_files, tmp_path, outcomes, count=SCHEMAS[schema][1], seed=2)
    outcomes.check()
