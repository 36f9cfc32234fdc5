"""Fused chains run by the native library on raw buffers, for torch training."""
from __future__ import annotations

import ctypes

from ..errors import AnalogizeError
from .build import native_library_path
from .build import MAX_STEP_ATTRIBUTES
from .fusion import chain_attributes


class TorchChain:
    """A FusedChain of straight-through steps run in this process by the native library, on raw float32
    buffers: torch training's fused chains (:mod:`analogize.ops.torch_ops` wraps it for autograd). Each step's
    random stream is keyed by ``seeds`` and advanced by the ``run`` each call passes."""

    _library: ctypes.CDLL | None = None

    def __init__(self, node, seeds: list[float]):
        library = self._load()
        attributes = chain_attributes(node)
        steps = len(attributes["kinds"])
        if not len(attributes["ops"]) == len(seeds) == steps or \
                len(attributes["parameters"]) != MAX_STEP_ATTRIBUTES * steps:
            raise AnalogizeError(f"{node.name}: kinds, ops and seeds must describe the same steps, with "
                                 f"{MAX_STEP_ATTRIBUTES} parameters each")
        self._handle = library.analogize_torch_chain_new(
            (ctypes.c_int64 * steps)(*attributes["kinds"]), (ctypes.c_int64 * steps)(*attributes["ops"]),
            (ctypes.c_float * len(attributes["parameters"]))(*attributes["parameters"]),
            (ctypes.c_float * steps)(*seeds), steps)
        if not self._handle:
            raise AnalogizeError(f"{node.name}: the native library cannot run this chain in training (an analog "
                                 f"op without a straight-through gradient, or an unknown step)")
        self._run = library.analogize_torch_chain_run
        self._free = library.analogize_torch_chain_free
        self._made_from = node, list(seeds)

    def __reduce__(self):  # copies and pickles build their own native chain, never share one
        return TorchChain, self._made_from

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._library is None:
            library = ctypes.CDLL(str(native_library_path()))
            pointer, size = ctypes.c_void_p, ctypes.c_size_t
            library.analogize_torch_chain_new.restype = pointer
            library.analogize_torch_chain_new.argtypes = [pointer, pointer, pointer, pointer, size]
            library.analogize_torch_chain_run.restype = None
            library.analogize_torch_chain_run.argtypes = [pointer, pointer, pointer, pointer, size, ctypes.c_uint64,
                                                          ctypes.c_int]
            library.analogize_torch_chain_free.argtypes = [pointer]
            cls._library = library
        return cls._library

    def run(self, source: int, target: int, slope: int | None, count: int, run: int, threads: int) -> None:
        """Chain ``count`` floats at address ``source`` into ``target``; where ``slope`` is an address, the
        chain's training-time derivative goes there."""
        self._run(self._handle, source, target, slope, count, run, threads)

    def __del__(self):
        if getattr(self, "_handle", None):
            self._free(self._handle)
