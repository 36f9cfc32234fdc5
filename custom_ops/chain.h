// A kernel's chain of element-wise steps, shared by the CPU kernels and the CUDA launcher.
#pragma once
#include <cstddef>
#include <cstdint>

#include "analogize_math.h"
#include "analogize_steps.h"  // StepKind, kMaxAttributes, kMaxDeviceSteps: generated from analogize/native/build.py

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

// A range's maximum of |x| is taken over the bits of |x|: for floats without a sign bit, the order of their bits
// is the order of their values, and a NaN's bits exceed every number's, so a NaN makes its whole vector's r
// NaN, as numpy's max does. (ONNX Runtime's ReduceMax keeps or drops a NaN depending on where it lies, which no
// other layout could match.) Integer maxima have no branches, and vectorise.
ANALOGIZE_HD uint32_t magnitude_bits(float x) { return analogize_to_bits(x) & 0x7FFFFFFFu; }
// r = Max(largest, floor) as ONNX Runtime's Max computes it: NaN stays NaN.
ANALOGIZE_HD float at_least(uint32_t largest_bits, float floor) {
    const float largest = analogize_from_bits(largest_bits);
    return largest < floor ? floor : largest;
}

// Where an element's r lies among a measured range's vectors. The input is [outer, mid, inner] around the
// range's axes (their product is mid); in a blocked layout (block > 1, ONNX Runtime's NCHWc) the mid axis is
// split as [outer, mid / block, inner, block]. One r per (outer, inner) pair.
// (Index: 32-bit on the GPU where the tensor allows, for its divisions are several times cheaper there.)
template <typename Index>
ANALOGIZE_HD Index range_index(Index element, Index mid, Index inner, Index block) {
    const Index slab = mid * inner;
    return element / slab * inner + element % slab / block % inner;
}

struct DeviceChain {
    int count;
    int gated;
    ChainStep steps[kMaxDeviceSteps];
    // the chain's r: measured (range_mid > 0, the layout of range_index; the floor in each stage's kRange step),
    // or an input of range_count values (1: one for all, else one per element), or none
    size_t range_mid, range_inner, range_block, range_count;
};

// Runs the chain on the GPU on `stream` (a cudaStream_t); `range` is the range input (device memory) where the
// chain has one. Returns nullptr or the CUDA error text.
const char* launch_chain(const DeviceChain& chain, const float* input, const float* range, float* output,
                         size_t count, size_t half, uint64_t run, void* stream);
