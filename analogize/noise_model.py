"""Relations between bit width, precision, error probability (EP) and noise std.

Precision ``p`` is the number of quantisation steps per unit (reduce-precision keeps ``2p + 1`` levels
on [-1, 1]). EP is the probability that Gaussian noise moves a value by more than half a step:
``EP = 1 - erf(1 / (2 * sqrt(2) * std * p))``.
"""
import math
from statistics import NormalDist

from .errors import AnalogizeError

#: ``pow2``: p = 2**bits (the paper's reduce-precision equation; power-of-two scales map exactly onto
#: fixed-point hardware). ``pow2-minus-1``: p = 2**bits - 1 (the paper's EP equation and AnalogVNN).
BIT_CONVENTIONS = ("pow2", "pow2-minus-1")
DEFAULT_BIT_CONVENTION = "pow2"
DEFAULT_EP = 0.5  # the paper's gradient-error analysis setting
MAX_BITS = 24  # float32 has a 24-bit significand; finer grids are not representable on [-1, 1]


def bits_to_precision(bits: int, convention: str = DEFAULT_BIT_CONVENTION) -> float:
    if convention not in BIT_CONVENTIONS:
        raise AnalogizeError(f"unknown bit convention {convention!r}: choose one of {', '.join(BIT_CONVENTIONS)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise AnalogizeError(f"bits must be a whole number from 1 to {MAX_BITS}, got {bits!r}")
    precision = 2.0**bits
    return precision if convention == "pow2" else precision - 1.0


def precision_to_bits(precision: float, convention: str = DEFAULT_BIT_CONVENTION) -> int | None:
    """The bit width whose precision under ``convention`` is ``precision``, or None if there is none."""
    return next((bits for bits in range(1, MAX_BITS + 1) if bits_to_precision(bits, convention) == precision), None)


def check_precision(precision: float) -> float:
    if not (isinstance(precision, (int, float)) and math.isfinite(precision) and precision >= 1):
        raise AnalogizeError(f"precision must be a finite number >= 1 (steps per unit), got {precision!r}")
    return float(precision)


def _erfinv(y: float) -> float:
    return NormalDist().inv_cdf((y + 1.0) / 2.0) / math.sqrt(2.0)


def ep_to_std(error_probability: float, precision: float) -> float:
    """Noise std for which a value leaves its quantisation bin with probability ``error_probability``."""
    check_precision(precision)
    if not (isinstance(error_probability, (int, float)) and 0.0 <= error_probability < 1.0):
        raise AnalogizeError(f"EP (error probability) must be in [0, 1), got {error_probability!r}")
    if error_probability == 0.0:
        return 0.0
    if 1.0 - error_probability / 2.0 < 1.0:
        spread = _erfinv(1.0 - error_probability)
    else:  # 1 - EP/2 rounds to 1: the same quantile from the other tail, -Phi^-1(EP/2) / sqrt(2)
        spread = -NormalDist().inv_cdf(error_probability / 2.0) / math.sqrt(2.0)
    if spread == 0.0:
        raise AnalogizeError(f"EP {error_probability!r} is too close to 1: no noise std gives it")
    return 1.0 / (2.0 * math.sqrt(2.0) * precision * spread)


def check_std(std: float) -> float:
    if isinstance(std, bool) or not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0.0):
        raise AnalogizeError(f"noise std must be a finite number >= 0, got {std!r}")
    return float(std)


def std_to_ep(std: float, precision: float) -> float:
    check_precision(precision)
    if check_std(std) == 0.0:
        return 0.0
    return math.erfc(1.0 / (2.0 * math.sqrt(2.0) * std * precision))  # erfc: 1 - erf without cancelling
