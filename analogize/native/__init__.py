"""Native kernels of the op set for ONNX Runtime: generated from the declarations and built (:mod:`.build`),
element-wise chains fused into one kernel call (:mod:`.fusion`), and those chains run on raw buffers for torch
training (:mod:`.torch_chain`).
"""
