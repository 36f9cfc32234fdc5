// A kernel's chain of element-wise steps, shared by the CPU kernels and the CUDA launcher.
#pragma once
#include <cstddef>
#include <cstdint>

#include "analogize_math.h"

constexpr int kMaxAttributes = 4;

// Step kinds of FusedChain's "kinds" attribute; analogize/native.py writes the same numbers.
enum StepKind { kAnalogOp = 0, kClip = 1, kRelu = 2, kLeakyRelu = 3 };

struct ChainStep {
    int kind;
    int op;      // index into kOps for kAnalogOp
    int random;  // 0 none, 1 standard normal, 2 uniform on [0, 1)
    float attr[kMaxAttributes];
    uint64_t key;  // random stream key of a random step (from the node seed)
};

// The standard ops a chain may hold, with ONNX's semantics: NaN passes through, -0 stays -0, and Clip with
// min > max gives max, as min(max(x, low), high) does.
ANALOGIZE_HD float clip(float x, float low, float high) {
    const float raised = x < low ? low : x;
    return raised > high ? high : raised;
}
ANALOGIZE_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }
ANALOGIZE_HD float leaky_relu(float x, float alpha) { return x < 0.0f ? alpha * x : x; }

// Steps travel to the GPU by value as a kernel argument, so their number is bounded there.
constexpr int kMaxDeviceSteps = 32;

struct DeviceChain {
    int count;
    int gated;
    ChainStep steps[kMaxDeviceSteps];
};

// Runs the chain on the GPU on `stream` (a cudaStream_t); returns nullptr or the CUDA error text.
const char* launch_chain(const DeviceChain& chain, const float* input, float* output, size_t count, size_t half,
                         uint64_t run, void* stream);
