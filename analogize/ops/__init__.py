"""The ``ai.analogize`` op set: each op declared once (:mod:`.spec`), and what follows from the declaration:
ONNX function bodies (:mod:`.onnx_functions`) and torch versions with training gradients (:mod:`.torch_ops`).
The native kernels generated from the same declarations live in :mod:`analogize.native`.
"""
