// CUDA kernels of the ai.analogize op set: the same generated element code and the same random streams as
// the CPU kernels (element i of a step at run r: block i / 4, lane i % 4), one thread per random block.
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
    const size_t blocks = (count + 3) / 4;
    for (size_t block = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; block < blocks;
         block += static_cast<size_t>(gridDim.x) * blockDim.x) {
        float values[4] = {0, 0, 0, 0}, gates[4] = {0, 0, 0, 0};
        for (int lane = 0; lane < 4; ++lane) {
            const size_t index = 4 * block + lane;
            if (index >= count) break;
            if (chain.gated) {
                const size_t row = index / half, column = index % half;
                values[lane] = input[row * 2 * half + column];
                gates[lane] = input[row * 2 * half + half + column];
            } else {
                values[lane] = input[index];
            }
        }
        for (int s = 0; s < chain.count; ++s) {
            const ChainStep& step = chain.steps[s];
            float random[4] = {0, 0, 0, 0};
            if (step.kind == kAnalogOp && step.random) {
                const counter_rng::Block bits = counter_rng::generate(block, counter_rng::stream(step.key, run));
                if (step.random == 1) {
                    counter_rng::normals(bits, random);
                } else {
                    for (int lane = 0; lane < 4; ++lane) random[lane] = counter_rng::unit(bits.v[lane]);
                }
            }
            for (int lane = 0; lane < 4; ++lane) {
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
        for (int lane = 0; lane < 4; ++lane) {
            const size_t index = 4 * block + lane;
            if (index < count) output[index] = values[lane];
        }
    }
}

}  // namespace

const char* launch_chain(const DeviceChain& chain, const float* input, float* output, size_t count, size_t half,
                         uint64_t run, void* stream) {
    constexpr int kThreads = 256;
    const size_t blocks = (count + 3) / 4;
    const unsigned grid = static_cast<unsigned>(std::min<size_t>((blocks + kThreads - 1) / kThreads, 65535u * 16));
    chain_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(chain, input, output, count, half, run);
    const cudaError_t status = cudaGetLastError();
    return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
