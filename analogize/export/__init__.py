"""Hand-off to hardware compilers. ``export``: a converted model as a deterministic standard graph plus a spec of
its analog settings; ``rebuild``: the simulation again from the two.

Formats (:data:`FORMATS`; each a pipeline of graph passes between one import and one export, see
:func:`~.pipeline.export`):

- ``qdq`` (:mod:`.qdq`): noise removed; each reduce-precision becomes QuantizeLinear -> DequantizeLinear with
  scale 1/p and zero point 0 (int8 when p <= 127, else int16, which needs opset 21); clamps stay ``Clip``;
  activations are decomposed into standard ops. The form ONNX Runtime, OpenVINO and TensorRT read.
- ``qonnx`` (:mod:`.qonnx`): as ``qdq``, but each reduce-precision becomes one QONNX ``Quant`` node (scale
  1/p, zero point 0, signed narrow-range integers of the spec's ``integer_bits``, rounding HALF_DOWN). The
  form the ``qonnx`` package reads.
- ``plain`` (:mod:`.plain`): the analog op set inlined into standard ops, noise removed (or kept with
  ``keep_noise``).

The spec (:mod:`.spec`, schema ``analogize.spec`` version 1) lists every analog tensor: where it sits (input,
layer input, weight, bias, layer output), its clamp range, precision, bits, integer width, rounding, noise
std and EP; the activations that were swapped in; and convert's settings. :func:`~.rebuild.rebuild` turns a
``qdq`` or ``qonnx`` export and its spec back into the analog simulation.

Rounding: reduce-precision sends exact halves toward zero, QuantizeLinear to even. They differ only on
inputs that land exactly halfway between two levels; :func:`~.verify.compare_outputs` measures how often that
changes a model's outputs on real data. QONNX's HALF_DOWN, sign(v) * ceil(|v| - 0.5) with v = x / scale, is
reduce-precision's own rounding, so a ``qonnx`` export agrees with the simulation on ties too.

Both quantizing formats clip to their integer range, which holds the 2p + 1 levels of [-1, 1]; so every
reduce-precision must follow a clamp (models converted with ``--no-clamp`` are refused).

Modules: :mod:`.pipeline` (``export``), :mod:`.spec` (the analog spec), :mod:`.quantizers` (checks and
replacement shared by the quantizing formats), :mod:`.qdq`, :mod:`.qonnx`, :mod:`.plain` (one per format),
:mod:`.rebuild`, :mod:`.verify` (``compare_outputs``, ``run_in_qonnx``), :mod:`.files` (``export_file``,
``rebuild_file``). Every format starts from :mod:`analogize.passes.deterministic`.
"""
from __future__ import annotations

from .files import export_file, rebuild_file
from .pipeline import FORMATS, export
from .qdq import QDQ_INT16_OPSET, QDQ_MAX_PRECISION
from .qonnx import QONNX_DOMAIN, QONNX_MAX_PRECISION
from .rebuild import rebuild
from .spec import EXPORT_KEY, SPEC_FORMAT, SPEC_VERSION, analog_spec, integer_bits
from .verify import compare_outputs, run_in_qonnx

__all__ = ["EXPORT_KEY", "FORMATS", "QDQ_INT16_OPSET", "QDQ_MAX_PRECISION", "QONNX_DOMAIN", "QONNX_MAX_PRECISION",
           "SPEC_FORMAT", "SPEC_VERSION", "analog_spec", "compare_outputs", "export", "export_file",
           "integer_bits", "rebuild", "rebuild_file", "run_in_qonnx"]
