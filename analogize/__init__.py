"""analogize: prepare ONNX neural networks for noisy, low-precision analog accelerators."""
from importlib.metadata import PackageNotFoundError, version as _installed_version

from .convert import ConversionResult, ConvertOptions, convert, convert_file
from .errors import AnalogizeError
from .model_io import load_model, save_model
from .native.build import native_library_path
from .noise_model import bits_to_precision, ep_to_std, std_to_ep
from .ops.spec import DOMAIN, OPS

try:
    __version__ = _installed_version("analogize")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["AnalogizeError", "ConversionResult", "ConvertOptions", "DOMAIN", "OPS", "bits_to_precision",
           "convert", "convert_file", "ep_to_std", "load_model", "native_library_path", "save_model", "std_to_ep"]
