"""Training in PyTorch: the ONNX graph as a torch module (:mod:`.onnx_torch`, its coverage of ONNX's node tests
in :mod:`.coverage`), noise-aware fine-tuning
(:mod:`.finetune`), training the zoo models from scratch (:mod:`.train`) and grids of such runs (:mod:`.sweep`).
"""
