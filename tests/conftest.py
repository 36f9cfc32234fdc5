import glob
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ort.set_default_logger_severity(3)
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "digits_convnet.onnx"
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(glob.glob(str(LIGHT_DIR / "*.onnx")))


def session(model) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run(model, x, output=0):
    s = session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[output]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def suptitle(figure) -> str:
    """The figure's title, with the line breaks of its wrapping as spaces."""
    return " ".join(figure._suptitle.get_text().split())  # Figure.get_suptitle needs matplotlib 3.8; we take 3.7


def error_bars_on_top(axis) -> bool:
    """Whether ``axis`` has error bars and draws each above every line (series and references alike)."""
    from matplotlib.container import ErrorbarContainer

    containers = [c for c in axis.containers if isinstance(c, ErrorbarContainer)]
    caps = {id(cap) for c in containers for cap in c.lines[1]}
    bars = [bar for c in containers for bar in c.lines[2]]
    lines = [line for line in axis.lines if id(line) not in caps]
    return bool(bars) and min(b.get_zorder() for b in bars) > max(line.get_zorder() for line in lines)


def series_positions(axis) -> list[float]:
    """The x of every point of the error-bar series on ``axis``, as drawn."""
    return [float(x) for c in axis.containers for x in c.lines[0].get_xdata()]
