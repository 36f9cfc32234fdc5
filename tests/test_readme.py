"""The README's command examples, run as a user would run them from the repository root, so the docs cannot drift:
every concrete `analogize ...` or `python ...` command in it (fenced, or inline in backticks) is classified
below; fast ones run here, slow ones under ``-m slow``, and those that name a user's own files (a cluster's
data, a user's model) are listed with why. A new command in the README fails this test until it is classified."""
import json
import re
import shlex
import shutil
import subprocess
import sys

import onnx
import pytest

from conftest import ROOT
from reference import fragile_digits

# a command that shows a form, not an example: an upper-case placeholder, an option list, an ellipsis
_PLACEHOLDER = re.compile(r"\b[A-Z]{2,}\b|\[|\.\.\.|\||\$\{")
USER_FILES = {  # not run here: examples about files a user has, not the repository, or hardware the tests lack
    "analogize convert model.pt2 -o model.analog.onnx": "a user's torch.export program (tests/test_torch_import.py)",
    "analogize convert model.ts.pt --input-shape 3,32,32 -o model.analog.onnx": "a user's TorchScript file "
                                                                                 "(tests/test_torch_import.py)",
    "analogize convert mypackage.nets:make_resnet --state-dict ckpt.pt --input-shape 3,32,32 -o model.analog.onnx":
        "a user's factory and checkpoint (tests/test_torch_import.py)",
    "python -m pytest": "the test run itself", "python -m pytest -m slow": "the slow test run itself",
    "python bench/gpu_check.py": "needs an NVIDIA GPU (tests/test_devices.py: without one it refuses in one line)",
}
SLOW = {
    "analogize finetune models/digits_convnet.onnx --data digits --bits 4 --ep 0.8 --epochs 8 -o tuned.onnx",
    "analogize zoo export resnet18 -o r18.onnx --option width=0.5 --image-size 32 --exporter dynamo",
    "python bench/calibration_vs_ort.py", "python bench/evaluate_sweep.py", "python bench/native_kernels.py",
    "python bench/sensitivity_cost.py", "python bench/plan_optimality.py", "python bench/fast_file.py",
}
# what the README quotes a command as printing: a pattern over the README and one over the command's output, with
# the same named groups; each finds the same number of matches, and each README number must equal the printed one
# to the digits the README gives. Timings are not quoted here: they are the machine's, not the command's.
_ROW = r"(?P<{0}_mean>\d+\.\d) ± (?P<{0}_std>\d+\.\d) %"
QUOTED = {
    "analogize finetune models/digits_convnet.onnx --data digits --bits 4 --ep 0.8 --epochs 8 -o tuned.onnx":
        (f"took the digits model from {_ROW.format('before')} to {_ROW.format('after')}",
         f"noisy accuracy {_ROW.format('before')} -> {_ROW.format('after')}"),
    "python bench/plan_optimality.py":
        (r"cost (?P<digital>\d+) digital, (?P<bits>\d+) bits\) is the optimum, found from (?P<cells>\d+) cells",
         r"greedy: +cost \((?P<digital>\d+), (?P<bits>\d+)\) .*? from (?P<cells>\d+) cells.*\n.*\n"
         r"the greedy plan is optimal"),
    "python bench/calibration_vs_ort.py":
        (r"\| [^|\n]+ \| (?P<error>\d\.\d+)(?: \([\d.]+x\))? \| (?P<agreement>\d+\.\d) % \|",
         r"\n[a-z0-9-]+ +(?P<error>\d\.\d+) +(?P<agreement>\d+\.\d)%"),
    "python bench/interpreter_coverage.py":
        (r"outputs: (?P<passed>\d+) of (?P<cases>\d+) cases pass, (?P<failed>\d+) fail, and (?P<skipped>\d+) are",
         r"\ntotal +(?P<cases>\d+) +(?P<passed>\d+) +(?P<failed>\d+) +(?P<skipped>\d+)"),
}
# commands whose output must equal the repository's file bit for bit (the shipped model is what its script makes)
REPRODUCES = {"python models/train_digits.py": ["models/digits_convnet.onnx", "models/digits_convnet.json"]}
# commands that need another's output first: what to run before them
CONVERTED_DIGITS = "analogize convert models/digits_convnet.onnx -o digits_analog.onnx --bits 6 --ep 0.3 --seed 0"
NEEDS = {
    "analogize fast digits_analog.onnx -o digits_fast.onnx": [CONVERTED_DIGITS],
    "analogize fast digits_analog.onnx -o digits_machine.onnx --for-this-machine": [CONVERTED_DIGITS],
    "analogize merge part-*.json -o result.json --csv result.csv --plot result.png": [
        "analogize evaluate models/digits_convnet.onnx --data digits --limit 60 --bits 4 --ep 0.1,0.3 --repeats 1 "
        f"--shard {k}/2 --json part-{k}.json --quiet" for k in range(2)],
    'analogize report eval.json -o report.html --title "digits at 4 and 6 bits"': [
        "analogize evaluate models/digits_convnet.onnx --data digits --limit 40 --bits 4 --ep 0.3 --repeats 1 "
        "--json eval.json --quiet"]}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            commands += [part.strip() for part in line.split("&&") if part.strip().startswith(("analogize ", "python "))]
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [re.sub(r"\s+", " ", found) for found in re.findall(r"`((?:analogize|python) [^`]+)`", inline)]
    return [command for command in dict.fromkeys(re.sub(r"\s+", " ", c) for c in commands)
            if not _PLACEHOLDER.search(command) and command not in ("analogize evaluate", "python -m")]


FAST = [c for c in readme_commands() if c not in USER_FILES and c not in SLOW]


def test_every_readme_command_is_classified():
    commands = readme_commands()
    listed = set(USER_FILES) | SLOW | set(QUOTED) | set(REPRODUCES)
    assert listed <= set(commands), f"the README lost commands listed here: {listed - set(commands)}"
    assert len(commands) >= 12


def run_in_copy(command: str, folder) -> subprocess.CompletedProcess:
    """``command`` run from a copy of the repository's models and docs, with this interpreter as python."""
    for name in ("models", "bench", "docs"):
        if not (folder / name).exists():
            shutil.copytree(ROOT / name, folder / name)
    words = shlex.split(command)
    if words[0] == "python":
        words[0] = sys.executable
    else:
        words = [sys.executable, "-m", "analogize", *words[1:]]
    expanded = []
    for word in words:  # the shell's glob, which the README's merge example relies on
        expanded += sorted(str(p.name) for p in folder.glob(word)) if "*" in word else [word]
    return subprocess.run(expanded, cwd=folder, capture_output=True, text=True, timeout=600)


def written_files(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[k + 1] for k, word in enumerate(words[:-1])
            if word in ("-o", "--output", "--json", "--csv", "--plot", "--report") and words[k + 1] != "-"]


def readme_after(command: str) -> str:
    """The README's text from ``command``'s first mention to the next heading, its whitespace collapsed."""
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text().replace("`", ""))
    start = text.index(command)
    end = text.find(" #", start)
    return text[start:end if end >= 0 else len(text)]


def assert_quoted_numbers(command: str, output: str):
    readme_pattern, output_pattern = QUOTED[command]
    quoted = [match.groupdict() for match in re.finditer(readme_pattern, readme_after(command))]
    printed = [match.groupdict() for match in re.finditer(output_pattern, output)]
    assert quoted and len(quoted) == len(printed), (quoted, output)
    for says, gives in zip(quoted, printed):
        for key, text in says.items():
            digits = len(text.partition(".")[2])
            assert abs(float(text) - float(gives[key])) <= 0.5 * 10 ** -digits + 1e-12, (key, says, gives)


def check_readme_command(command: str, folder):
    for before in NEEDS.get(command, []):
        assert run_in_copy(before, folder).returncode == 0
    result = run_in_copy(command, folder)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in written_files(command):
        assert (folder / name).stat().st_size > 0, name
    if command in QUOTED:
        assert_quoted_numbers(command, result.stdout)
    for name in REPRODUCES.get(command, []):
        assert (folder / name).read_bytes() == (ROOT / name).read_bytes(), f"{command} does not remake {name}"


@pytest.mark.parametrize("command", FAST)
def test_fast_readme_commands_run_and_give_what_it_says(command, tmp_path):
    check_readme_command(command, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(SLOW))
def test_slow_readme_commands_run_and_give_what_it_says(command, tmp_path):
    check_readme_command(command, tmp_path)


def test_the_readme_quotes_the_shipped_models_own_accuracy():
    accuracy = json.loads((ROOT / "models" / "digits_convnet.json").read_text())["test_accuracy"]
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    quoted = re.findall(r"(\d+\.\d) % clean test accuracy|keeps its clean (\d+\.\d) %", text)
    assert len(quoted) == 2 and {float(a or b) for a, b in quoted} == {round(100 * accuracy, 1)}


def test_the_readme_sensitivity_example_is_what_sensitivity_prints(tmp_path):
    """The README's sensitivity table (the fragile digits model at 6 bits, EP 0.1, 5 draws, all 450 test digits):
    its first line up to the elision and every row it shows, as printed."""
    onnx.save(fragile_digits(), tmp_path / "fragile.onnx")
    result = subprocess.run([sys.executable, "-m", "analogize", "sensitivity", "fragile.onnx", "--data", "digits",
                             "--bits", "6", "--ep", "0.1", "--repeats", "5", "--quiet"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    block = re.search(r"```\n(accuracy: clean .*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    first, *rows = block.splitlines()
    printed = result.stdout.splitlines()
    assert printed[0].startswith(first.partition("...")[0]) and len(rows) >= 3
    assert printed[1:len(rows) + 1] == rows
