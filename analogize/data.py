"""Datasets as float32 arrays ``(x, y)``: images NCHW in [0, 1], integer labels."""
from __future__ import annotations

import numpy as np

from .errors import AnalogizeError

DIGITS_TEST_FRACTION = 0.25


def digits(split: str = "test", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 handwritten digits (1 x 8 x 8, values / 16), split reproducibly.

    ``split`` is ``train``, ``test`` (a fixed, class-stratified quarter) or ``all``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise AnalogizeError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    if split not in ("train", "test", "all"):
        raise AnalogizeError(f"unknown split {split!r}: choose train, test or all")
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    if split == "all":
        return x, y
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(len(members) * DIGITS_TEST_FRACTION)]] = True
    chosen = test if split == "test" else ~test
    return x[chosen], y[chosen]
