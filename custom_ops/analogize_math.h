// Primitives of analogize/ops.py formulas that C++ lacks, with ONNX's definitions.
#pragma once
#include <cmath>

static inline float analogize_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }
static inline float analogize_sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
static inline float analogize_softplus(float x) { return std::fmax(x, 0.0f) + std::log1p(std::exp(-std::fabs(x))); }
