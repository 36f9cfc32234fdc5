// CUDA kernels of the ai.analogize op set: the same generated element code and the same random streams as
// the CPU kernels (counter_rng.h: the word of the stream each element draws from), one thread per word.
#include <cuda_runtime.h>

#include <algorithm>

#include "analogize_math.h"
#include "chain.h"
#include "counter_rng.h"

#define ANALOGIZE_DEVICE_ONLY  // element functions only: the registration table is the CPU side's
#include "analogize_generated.h"

namespace {

__global__ void chain_kernel(DeviceChain chain, const float* __restrict__ input, float* __restrict__ output,
                             size_t count, size_t half, uint64_t run) {
    const size_t words = counter_rng::words_covering(count);
    for (size_t w = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; w < words;
         w += static_cast<size_t>(gridDim.x) * blockDim.x) {
        // the two elements that share word w: neighbouring threads read and write neighbouring elements
        const size_t first = counter_rng::first_element_of(w), index[2] = {first, first + counter_rng::kHalfGroup};
        float values[2] = {0, 0}, gates[2] = {0, 0};
        for (int lane = 0; lane < 2; ++lane) {
            if (index[lane] >= count) break;
            if (chain.gated) {
                const size_t row = index[lane] / half, column = index[lane] % half;
                values[lane] = input[row * 2 * half + column];
                gates[lane] = input[row * 2 * half + half + column];
            } else {
                values[lane] = input[index[lane]];
            }
        }
        for (int s = 0; s < chain.count; ++s) {
            const ChainStep& step = chain.steps[s];
            float random[2] = {0, 0};
            if (step.kind == kAnalogOp && step.random) {
                counter_rng::draw_pair(step.random, counter_rng::word(w, counter_rng::stream(step.key, run)),
                                       &random[0], &random[1]);
            }
            for (int lane = 0; lane < 2; ++lane) {
                float x = values[lane];
                switch (step.kind) {
                    case kClip: x = clip(x, step.attr[0], step.attr[1]); break;
                    case kRelu: x = relu(x); break;
                    case kLeakyRelu: x = leaky_relu(x, step.attr[0]); break;
                    default: x = apply_op_element(step.op, x, gates[lane], step.attr, random[lane]); break;
                }
                values[lane] = x;
            }
        }
        for (int lane = 0; lane < 2; ++lane) {
            if (index[lane] < count) output[index[lane]] = values[lane];
        }
    }
}

}  // namespace

const char* launch_chain(const DeviceChain& chain, const float* input, float* output, size_t count, size_t half,
                         uint64_t run, void* stream) {
    constexpr int kThreads = 256;
    const size_t words = counter_rng::words_covering(count);
    const unsigned grid = static_cast<unsigned>(std::min<size_t>((words + kThreads - 1) / kThreads, 65535u * 16));
    chain_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(chain, input, output, count, half, run);
    const cudaError_t status = cudaGetLastError();
    return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
