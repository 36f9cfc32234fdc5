"""Training in PyTorch: the ONNX graph as a torch module (:mod:`.onnx_torch`, its coverage of ONNX's node tests
in :mod:`.coverage`), noise-aware fine-tuning
(:mod:`.finetune`), training the zoo models from scratch (:mod:`.train`) and grids of such runs (:mod:`.sweep`).
"""

from ..convert import SETTINGS_SCHEMA
from ..untrusted import Integer, Number

# The schema of the report finetune and train write (``--json``), declared apart from the modules that import
# torch, so that reading a report (``analogize report``) does not need it.
REPORT_FORMAT = "analogize.finetune"
REPORT_VERSION = 1
_ACCURACY = {"noisy_mean": Number, "noisy_std": Number, "digital": Number, "repeats": Integer}
#: what the report's section and the training curves read of a report, as :mod:`analogize.untrusted` checks it
REPORT_SCHEMA = {
    "input?": (str, None), "output?": (str, None), "data?": (str, None), "eval_data?": (str, None),
    "built?": {"model": str, "config": dict, "init": str}, "samples": {"train": Integer, "validation": Integer},
    "epochs_run": Integer, "stopped_early": bool, "processes?": Integer,
    "options": {"epochs": Integer, "lr": Number, "batch_size": Integer, "optimizer": str, "schedule": str,
                "weight_decay": Number, "patience": (Integer, None), "seed": Integer, "device": str},
    "settings": SETTINGS_SCHEMA, "before": _ACCURACY, "after": _ACCURACY,
    "history": [{"epoch": Integer, "train_loss": Number, "noisy_accuracy": Number, "lr": Number}],
    "warnings?": [str]}
