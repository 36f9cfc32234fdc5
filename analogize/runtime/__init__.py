"""ONNX Runtime sessions as the package makes them (:mod:`.sessions`), their shared options (:mod:`.options`),
convolutions with analog weights in ONNX Runtime's blocked layout (:mod:`.blocked_layout`), and the fast form
of a converted model written to a file for sessions the package does not make (:mod:`.fast_form`).
"""
