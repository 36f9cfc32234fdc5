"""ONNX Runtime sessions as the package makes them (:mod:`.sessions`), their shared options (:mod:`.options`),
and convolutions with analog weights in ONNX Runtime's blocked layout (:mod:`.blocked_layout`).
"""
