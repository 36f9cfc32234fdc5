// Primitives of analogize/ops.py formulas that C lacks, with ONNX's definitions; host and CUDA device.
#pragma once
#include <math.h>

#ifdef __CUDACC__
#define ANALOGIZE_HD __host__ __device__ inline
#else
#define ANALOGIZE_HD inline
#endif

ANALOGIZE_HD float analogize_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }
ANALOGIZE_HD float analogize_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
ANALOGIZE_HD float analogize_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
