"""Training in PyTorch: the ONNX graph as a torch module (:mod:`.onnx_torch`, its coverage of ONNX's node tests
in :mod:`.coverage`), noise-aware fine-tuning
(:mod:`.finetune`), training the zoo models from scratch (:mod:`.train`) and grids of such runs (:mod:`.sweep`).
"""

# The schema of the report finetune and train write (``--json``), declared apart from the modules that import
# torch, so that reading a report (``analogize report``) does not need it.
REPORT_FORMAT = "analogize.finetune"
REPORT_VERSION = 1
