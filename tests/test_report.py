"""The HTML report: each format's section from real results (evaluate, finetune) and from example dicts of the
sensitivity and plan-search schemas, escaping of untrusted strings, bad input through the CLI (forged result
files refused by their format's schema), figures released when drawing them fails, and the page as a real
headless browser shows it."""
import base64
import copy
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image, ImageStat

from analogize.cli import main
from analogize.convert import ConvertOptions
from analogize.errors import AnalogizeError
from analogize.analysis import analysis_figure
from analogize.evaluate.engine import Grid, evaluate_file
from analogize.evaluate.results import evaluation_figure, pyplot, save_figure
from analogize.planning.outputs import plan_figure, sensitivity_figure
from analogize.report import FORMATS, read_result, render_report, write_report
from analogize.training.finetune import curves_figure
from analogize.training.sweep import sweep_figure
from conftest import DEFAULT_MODEL

IMAGE_PREFIX = '<img src="data:image/png;base64,'


class _Page(HTMLParser):
    """The tables of a page by caption (rows of cell texts, the header first), its headings and its images."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.headings, self.images = {}, [], []
        self._rows = self._row = self._text = None
        self._caption = ""
        self.feed(text)

    def handle_starttag(self, tag, attributes):
        if tag == "table":
            self._rows, self._caption = [], ""
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "caption", "h1", "h2", "h3", "h4"):
            self._text = ""
        elif tag == "img":
            self.images.append(dict(attributes)["src"])

    def handle_data(self, data):
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._text)
        elif tag == "caption":
            self._caption = self._text
        elif tag == "tr":
            self._rows.append(self._row)
        elif tag == "table":
            self.tables[self._caption] = self._rows
        elif tag.startswith("h") and tag[1:].isdigit():
            self.headings.append(self._text)
        if tag in ("td", "th", "caption", "h1", "h2", "h3", "h4"):
            self._text = None


def table_starting(page: _Page, caption_start: str) -> list[list[str]]:
    return next(rows for caption, rows in page.tables.items() if caption.startswith(caption_start))


def analogize(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def evaluate_result():
    return evaluate_file(DEFAULT_MODEL, "digits", Grid(bits=(4, 6), ep=(0.0, 0.3), repeats=2), limit=60)


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """A one-epoch finetune through the CLI, with its JSON and its --report."""
    folder = tmp_path_factory.mktemp("finetune")
    code = main([str(a) for a in ("finetune", DEFAULT_MODEL, "--data", "digits", "--bits", "4", "--ep", "0.5",
                                  "--epochs", "2", "--limit", "60", "--repeats", "2", "--quiet",
                                  "-o", folder / "tuned.onnx", "--json", folder / "tuned.json",
                                  "--report", folder / "tuned.html")])
    assert code == 0
    return folder


def sensitivity_example(model="models/digits_convnet.onnx", metric="accuracy") -> dict:
    def site(name, tensor, mode, description, clipped, zero):
        return {"site": name, "tensor": tensor, "range_mode": mode, "range": description, "max_abs": 1.2, "rms": 0.3,
                "clipped_fraction": clipped, "zero_fraction": zero}

    def unit(name, kind, op_type, rank, loss, recovery, sites):
        return {"unit": name, "kind": kind, "op_type": op_type, "rank": rank, "loss": loss, "loss_std": 0.01,
                "recovery": recovery, "recovery_std": 0.008,
                "only_analog": {"accuracy_mean": 0.97 - loss, "accuracy_std": 0.01, "agreement_mean": 1 - loss,
                                "agreement_std": 0.01, "snr_db_mean": 25.0, "snr_db_std": 0.5},
                "only_digital": {"accuracy_mean": 0.9 + recovery, "accuracy_std": 0.01,
                                 "agreement_mean": 0.95 + recovery, "agreement_std": 0.01},
                "sites": sites}

    return {"format": "analogize.sensitivity", "version": 1, "model": model, "model_sha256": "ab" * 32,
            "settings": ConvertOptions(bits=6, ep=0.3).summary(),
            "data": {"name": "digits", "samples": 450, "labels": True}, "metric": metric, "repeats": 5, "seed": 0,
            "reference": {"analog": {"accuracy_mean": 0.9, "accuracy_std": 0.01, "agreement_mean": 0.95,
                                     "agreement_std": 0.01, "snr_db_mean": 20.0},
                          "digital": {"accuracy_mean": 0.97, "accuracy_std": 0.0, "agreement_mean": 1.0,
                                      "agreement_std": 0.0}},
            # listed out of rank order: the report ranks them
            "units": [unit("fc", "layer", "Gemm", 2, 0.01, 0.005,
                           [site("weight", "w2", "tensor", {"value": 0.8}, 0.02, 0.0)]),
                      unit("conv1", "layer", "Conv", 1, 0.05, 0.04,
                           [site("weight", "w1", "channel", {"min": 0.2, "max": 1.2, "channels": 16}, 0.0, 0.12),
                            site("layer-output", "conv1_out", "dynamic", {"mode": "dynamic"}, 0.031, None)]),
                      unit("input", "input", None, 3, -0.004, 0.0,
                           [site("input", "input", "dynamic", {"mode": "dynamic"}, None, None)])],
            "cells": 9, "warnings": ["conv1 clips 3.1 % of its outputs"]}


def plan_search_example(verification, model="models/digits_convnet.onnx") -> dict:
    def step(number, change, mean, digital, bits, met):
        return {"step": number, "change": change, "metric_mean": mean, "metric_std": 0.005,
                "digital_layers": digital, "total_bits": bits, "met": met}

    return {"format": "analogize.plan-search", "version": 1, "model": model, "model_sha256": "ab" * 32,
            "target": {"metric": "agreement", "value": 0.99},
            "bounds": {"bits": [4, 6, 8], "digital": True, "max_digital": None},
            "cost": {"definition": "number of digital layers, then total bits over analog layers",
                     "digital_layers": 1, "total_bits": 30},
            "met": True,
            "steps": [step(0, "all analog at 4 bits", 0.95, 0, 20, False), step(1, "fc to 8 bits", 0.975, 0, 24, False),
                      step(2, "conv1 digital", 0.993, 1, 30, True)],
            "plan": {"format": "analogize.plan", "version": 1,
                     "layers": {"conv1": {"digital": True}, "fc": {"bits": 8}}},
            "verification": verification, "warnings": [],
            "settings": ConvertOptions(ep=0.3).summary(), "repeats": 3, "verify_repeats": 5, "seed": 0}


def test_evaluate_section_has_settings_a_row_per_cell_and_the_plot(evaluate_result):
    page = _Page(render_report([evaluate_result]))
    assert page.headings[1] == "Evaluation: digits_convnet.onnx"
    settings = dict(row for row in page.tables["settings"])
    assert settings["model"] == str(DEFAULT_MODEL) and settings["bits"] == "4, 6"
    assert settings["error probabilities (EP)"] == "0, 0.3" and settings["noise draws per cell"] == "2"
    rows = table_starting(page, "output 'logits'")
    assert rows[0][:5] == ["activation", "bits", "precision p", "EP", "noise std"]
    cells = evaluate_result["cells"]
    assert len(rows) == 1 + len(cells)
    for row, cell in zip(rows[1:], cells):
        assert row[1] == str(cell["bits"])
        assert row[5] == f"{100 * cell['accuracy_mean']:.1f} ± {100 * cell['accuracy_std']:.1f}"
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(page.images[0].partition(",")[2])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "No warnings." in render_report([evaluate_result])


def test_finetune_report_from_the_cli_and_from_its_json(finetune_run, capsys):
    report = json.loads((finetune_run / "tuned.json").read_text())
    assert report["format"] == "analogize.finetune"
    page = _Page((finetune_run / "tuned.html").read_text())
    assert page.headings[1] == "Fine-tuning: digits_convnet.onnx"
    before_after = table_starting(page, "validation accuracy")
    assert before_after[1][1:3] == [f"{100 * report[k]['noisy_mean']:.1f} ± {100 * report[k]['noisy_std']:.1f}"
                                    for k in ("before", "after")]
    assert len(table_starting(page, "each epoch")) == 1 + report["epochs_run"]
    assert len(page.images) == 1
    code, out, err = analogize(capsys, "report", finetune_run / "tuned.json", "-o", finetune_run / "again.html")
    assert code == 0, err
    again = _Page((finetune_run / "again.html").read_text())
    assert table_starting(again, "validation accuracy") == before_after
    trained = {**report, "built": {"model": "mlp", "config": {"hidden": [32]}, "init": "default"}}
    del trained["input"]
    assert _Page(render_report([trained])).headings[1] == "Training: zoo mlp"


def test_sensitivity_section_ranks_units_and_lists_sites():
    page = _Page(render_report([sensitivity_example()]))
    ranked = table_starting(page, "units ranked")
    assert [row[1] for row in ranked[1:]] == ["conv1", "fc", "input"]
    assert ranked[1][4:6] == ["5.0 ± 1.0", "4.0 ± 0.8"]
    assert ranked[1][-2:] == ["3.1 %", "12.0 %"]  # the worst of its sites; a null fraction is not a zero
    assert ranked[3][-2:] == ["-", "-"]
    sites = table_starting(page, "the analog sites")
    assert [row[4] for row in sites[1:]] == ["0.2 to 1.2 over 16 channels", "dynamic", "0.8", "dynamic"]
    assert len(page.images) == 1
    assert "conv1 clips 3.1 % of its outputs" in render_report([sensitivity_example()])
    agreement = _Page(render_report([sensitivity_example(metric="agreement")]))
    assert "agreement % only this analog" in table_starting(agreement, "units ranked")[0]


def test_plan_search_section_embeds_its_verification(evaluate_result):
    text = render_report([plan_search_example(evaluate_result)])
    page = _Page(text)
    assert table_starting(page, "the plan found")[1:] == [["conv1", "digital", "-", "-"], ["fc", "analog", "8", "-"]]
    steps = table_starting(page, "each step")
    assert [row[-1] for row in steps[1:]] == ["no", "no", "yes"] and steps[3][2] == "99.3 ± 0.5"
    assert "Verification of the plan (a full evaluate): digits_convnet.onnx" in page.headings
    assert 'id="result-1-1"' in text and len(page.images) == 2  # the search's plot and the verification's


def test_several_results_get_a_table_of_contents(evaluate_result):
    text = render_report([evaluate_result, sensitivity_example()], title="two results",
                         sources=["a.json", "b.json"])
    page = _Page(text)
    assert page.headings[:2] == ["two results", "Contents"]
    assert '<a href="#result-1">evaluation: digits_convnet.onnx</a>' in text
    assert '<a href="#result-2">sensitivity: digits_convnet.onnx</a>' in text
    assert 'id="result-1"' in text and 'id="result-2"' in text and "a.json" in text and "b.json" in text
    assert "Contents" not in render_report([evaluate_result])


def test_every_string_from_a_result_is_escaped():
    hostile = "<script>alert(1)</script>"
    result = sensitivity_example(model=f"models/{hostile}.onnx")
    result["units"][0]["unit"] = 'fc"><img src=x onerror=alert(2)>'
    result["units"][1]["kind"] = 7  # a number where text belongs is shown, not a crash
    result["warnings"] = [hostile]
    result["data"]["name"] = hostile
    text = render_report([result], title=hostile)
    assert "<script" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.onnx" in text
    assert text.count(IMAGE_PREFIX) == 1


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(format="analogize.unknown"), "known formats: " + ", ".join(FORMATS)),
    (lambda r: r.update(version=99), "analogize.sensitivity version 99, but this analogize reads version 1"),
    (lambda r: r.pop("format"), "not an analogize result"),
    (lambda r: r.pop("units"), "malformed analogize.sensitivity result (no field 'units')"),
    (lambda r: r["settings"].update(ep="high"), "malformed analogize.sensitivity result"),
])
def test_unknown_or_malformed_results_are_refused_in_one_line(change, message):
    result = sensitivity_example()
    change(result)
    with pytest.raises(AnalogizeError) as refusal:
        render_report([result])
    assert message in str(refusal.value) and "\n" not in str(refusal.value)


def test_a_malformed_verification_is_refused(evaluate_result):
    verification = copy.deepcopy(evaluate_result)
    del verification["cells"]
    with pytest.raises(AnalogizeError, match="its verification is a malformed analogize.evaluate result"):
        render_report([plan_search_example(verification)])


@pytest.mark.parametrize("kind, forge, message", [
    ("evaluate", lambda r: r["cells"][0].update(repeats="2"), 'cells[0].repeats must be a whole number, got "2"'),
    ("evaluate", lambda r: r["grid"].update(activation=[None]), "grid.activation[0] must be a string, got null"),
    ("evaluate", lambda r: r["data"].update(samples=True), "data.samples must be a whole number, got true"),
    ("sensitivity", lambda r: r["units"][0].update(kind=7), "units[0].kind must be a string, got 7"),
    ("sensitivity", lambda r: r["settings"].update(precision="64"), 'settings.precision must be a finite number or '
                                                                     'null, got "64"'),
    ("sensitivity", lambda r: r.update(seed=[0]), "seed must be a whole number, got an array"),
])
def test_a_forged_result_file_is_refused_naming_the_field(kind, forge, message, evaluate_result, tmp_path, capsys):
    """Each forgery rendered as it was before the files were checked against their format's schema: a report
    of garbage, exit 0. The same file unforged is reported."""
    result = json.loads(json.dumps(evaluate_result if kind == "evaluate" else sensitivity_example()))
    (tmp_path / "real.json").write_text(json.dumps(result))
    forge(result)
    (tmp_path / "forged.json").write_text(json.dumps(result))
    assert analogize(capsys, "report", tmp_path / "real.json", "-o", tmp_path / "real.html")[0] == 0
    code, _, err = analogize(capsys, "report", tmp_path / "forged.json", "-o", tmp_path / "forged.html")
    assert code == 2 and err.startswith(f"analogize: error: {tmp_path / 'forged.json'} (analogize.{kind}): {message}")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "forged.html").exists()


def _forged_sweep(_):
    """Sweep points along depth (the figure's one axis), without the accuracies the figure draws."""
    return {"points": [{"activation": "relu", "family": "rectifier", "factor": 0.0, "alpha": 0.0, "depth": depth,
                        "bits": 4, "ep": 0.5} for depth in (1, 2)], "settings": {}}


def _without(document: dict, path: tuple) -> dict:
    forged = copy.deepcopy(document)
    parent = forged
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return forged


FORGED_FIGURES = {
    "evaluation": (evaluation_figure, lambda r: _without(r, ("cells", 0, "accuracy_std"))),
    "sensitivity": (sensitivity_figure, lambda _: _without(sensitivity_example(), ("units", 1, "recovery"))),
    "plan": (plan_figure, lambda r: _without(plan_search_example(r), ("steps", 0, "step"))),
    "analysis": (analysis_figure, lambda _: {"analysis": "gsd", "rows": [{"activation": "relu"}]}),
    "curves": (curves_figure, lambda _: {"history": [{"epoch": 1}]}),
    "sweep": (sweep_figure, _forged_sweep),
}


@pytest.mark.parametrize("name", FORGED_FIGURES)
def test_a_figure_that_fails_halfway_is_closed(name, evaluate_result):
    """Each forgery fails after its figure was opened: called without the guard, the figure stays open in pyplot
    (what every failed plot of a long-lived process kept); with it, none does."""
    draw, forge = FORGED_FIGURES[name]
    forged = forge(evaluate_result)
    plt = pyplot()
    before = set(plt.get_fignums())
    with pytest.raises(KeyError):
        draw.__wrapped__(forged)
    left = set(plt.get_fignums()) - before
    assert len(left) == 1
    plt.close(left.pop())
    with pytest.raises(KeyError):
        draw(forged)
    assert set(plt.get_fignums()) == before


def test_a_figure_that_cannot_be_written_is_closed(tmp_path):
    figure = pyplot().figure()
    with pytest.raises(AnalogizeError, match="does not exist"):
        save_figure(figure, tmp_path / "missing" / "plot.png")
    assert figure.number not in pyplot().get_fignums()


def test_a_failed_report_leaves_no_file(tmp_path):
    with pytest.raises(AnalogizeError):
        write_report([{"format": "analogize.sensitivity", "version": 1}], tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


def _bad_inputs(folder):
    (folder / "model.onnx").write_bytes(DEFAULT_MODEL.read_bytes()[:2000])
    (folder / "list.json").write_text("[1, 2, 3]")
    (folder / "broken.json").write_text('{"format": "analogize.evaluate", ')
    (folder / "other.json").write_text(json.dumps({"format": "somebody.else", "version": 1}))
    (folder / "old.json").write_text(json.dumps({**sensitivity_example(), "version": 0}))
    (folder / "partial.json").write_text(json.dumps({"format": "analogize.evaluate", "version": 2}))
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "input.html").write_text(json.dumps(sensitivity_example()))
    return [
        (["model.onnx", "-o", "r.html"], "is not JSON"),
        (["list.json", "-o", "r.html"], "is not an analogize result"),
        (["broken.json", "-o", "r.html"], "is not JSON"),
        (["other.json", "-o", "r.html"], "known formats"),
        (["old.json", "-o", "r.html"], "reads version 1"),
        (["partial.json", "-o", "r.html"], "model_sha256 is missing"),
        (["deep.json", "-o", "r.html"], "is not JSON"),
        (["missing.json", "-o", "r.html"], "no such file"),
        (["input.html", "-o", "input.html"], "would replace the result"),
        (["list.json", "-o", "r.pdf"], "give a name ending in .html"),
    ]


def test_bad_input_through_the_cli_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for arguments, message in _bad_inputs(tmp_path):
        code, out, err = analogize(capsys, "report", *arguments)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (arguments, err)
        assert "Traceback" not in err and not (tmp_path / "r.html").exists()
    assert json.loads((tmp_path / "input.html").read_text())["format"] == "analogize.sensitivity"


def test_report_flag_refuses_to_replace_the_model(tmp_path, capsys):
    model = tmp_path / "model.html"
    shutil.copy(DEFAULT_MODEL, model)
    code, _, err = analogize(capsys, "evaluate", model, "--data", "digits", "--report", model)
    assert code == 2 and "would replace the model" in err
    assert model.read_bytes() == DEFAULT_MODEL.read_bytes()


def test_evaluate_writes_its_report(tmp_path, capsys):
    code, out, err = analogize(capsys, "evaluate", DEFAULT_MODEL, "--data", "digits", "--limit", "40", "--bits", "4",
                               "--ep", "0.3", "--repeats", "1", "--quiet", "--json", tmp_path / "r.json",
                               "--report", tmp_path / "r.html")
    assert code == 0, err
    assert f"wrote {tmp_path / 'r.html'}" in out
    page = _Page((tmp_path / "r.html").read_text())
    assert page.headings[1] == "Evaluation: digits_convnet.onnx" and len(page.images) == 1
    assert read_result(tmp_path / "r.json")["format"] == "analogize.evaluate"


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _matplotlib_blue(image: Image.Image) -> int:
    """Pixels of matplotlib's first colour (#1f77b4): only the plots use it, so where they are, a plot drew."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(pixels - [31, 119, 180]).max(axis=2) < 25).sum())


@pytest.mark.skipif(_browser() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_a_headless_browser_shows_the_tables_and_plots(evaluate_result, tmp_path):
    path = tmp_path / "report.html"
    write_report([evaluate_result, sensitivity_example(), plan_search_example(evaluate_result)], path)
    browser = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1200,2000", path.as_uri()], check=True,
                   capture_output=True, timeout=60)
    image = Image.open(shot)
    assert image.size == (1200, 2000)
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 20  # a blank page has none
    assert _matplotlib_blue(image) > 500  # the first section's plot was decoded and drawn
    dom = subprocess.run([*browser, "--dump-dom", path.as_uri()], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    page = _Page(dom)
    assert dom.count("<table") >= 12 and "units ranked by the mean of their loss" in dom
    assert len(page.images) == 4 and all(src.startswith("data:image/png;base64,") for src in page.images)


def _leaf_paths(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaf_paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaf_paths(item, path + (index,))
    if path:
        yield path


def test_crafted_fields_render_or_are_refused_in_one_line():
    """Any field of a result replaced by a value of another type: the report renders it, or refuses the file in
    one line; never another exception."""
    rng = np.random.default_rng(7)
    replacements = ["<b>x</b>", None, [], {}, -1, 1e308, float("nan"), True, "", [1, "a"], {"a": 1}]
    for base in (sensitivity_example(), plan_search_example(None)):
        paths = list(_leaf_paths(base))
        for index in rng.choice(len(paths), 8, replace=False):
            result = copy.deepcopy(base)
            *parents, last = paths[index]
            target = result
            for key in parents:
                target = target[key]
            target[last] = replacements[rng.integers(len(replacements))]
            try:
                render_report([result])
            except AnalogizeError as refusal:
                assert "\n" not in str(refusal)
