"""Where a command computes: ``cpu``, or ``cuda`` / ``cuda:N`` (GPU N; ``cuda`` is GPU 0). One vocabulary for
ONNX Runtime sessions (evaluate: the CUDA execution provider) and torch training (finetune, train, sweep)."""
from __future__ import annotations

import re

from .errors import AnalogizeError

DEVICE_NAMES = "cpu, cuda or cuda:N (N: the GPU's number)"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def gpu_index(device: str) -> int | None:
    """The number of the GPU ``device`` names, or None for ``cpu``; AnalogizeError for any other name."""
    if device == "cpu":
        return None
    match = _CUDA.fullmatch(device) if isinstance(device, str) else None
    if match is None:
        raise AnalogizeError(f"unknown device {device!r}: give {DEVICE_NAMES}")
    return int(match.group(1) or 0)


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda``: what results record (shards on different GPUs of one kind merge)."""
    return "cpu" if gpu_index(device) is None else "cuda"
