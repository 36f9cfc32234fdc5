"""Hand-off to hardware compilers: deterministic standard graphs (QDQ, QONNX, plain) with a spec of the analog
settings, and the rebuild of the simulation from them.
"""
