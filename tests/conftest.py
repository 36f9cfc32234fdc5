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
