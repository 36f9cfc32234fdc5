"""Full-scale ranges: how each analog tensor's r is set (:mod:`.modes`, the declarations), the nodes that map a
chain to it (:mod:`.mapping`), and static ranges from calibration data (:mod:`.calibration`)."""
from .mapping import UNIT_RANGES, RangeSettings
from .modes import ACTIVATION_RANGE_MODES, CALIBRATION_METHODS, WEIGHT_RANGE_MODES

__all__ = ["ACTIVATION_RANGE_MODES", "CALIBRATION_METHODS", "RangeSettings", "UNIT_RANGES", "WEIGHT_RANGE_MODES"]
