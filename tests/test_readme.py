"""The README's command examples, run as a user would run them from the repository root, so the docs cannot drift:
every concrete `analogize ...` or `python ...` command in it (fenced, or inline in backticks) is classified
below; fast ones run here, slow ones under ``-m slow``, and those that name a user's own files (a cluster's
data, a user's model) are listed with why. A new command in the README fails this test until it is classified."""
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

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
    "python models/train_digits.py", "python bench/sensitivity_cost.py", "python bench/plan_optimality.py",
    "python bench/fast_file.py",
}
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
    assert set(USER_FILES) <= set(commands) and SLOW <= set(commands), "the README lost a command listed here"
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


@pytest.mark.parametrize("command", FAST)
def test_fast_readme_commands_run_and_write_what_they_say(command, tmp_path):
    for before in NEEDS.get(command, []):
        assert run_in_copy(before, tmp_path).returncode == 0
    result = run_in_copy(command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in written_files(command):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(SLOW))
def test_slow_readme_commands_run_and_write_what_they_say(command, tmp_path):
    result = run_in_copy(command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in written_files(command):
        assert (tmp_path / name).stat().st_size > 0, name
