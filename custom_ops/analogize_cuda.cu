// CUDA kernels of the ai.analogize op set: the same generated element code and the same random streams as
// the CPU kernels (counter_rng.h: the word of the stream each element draws from), one thread per word; a
// chain that measures its range runs a kernel with one block per vector first.
#include <cuda_runtime.h>

#include <algorithm>

#include "analogize_math.h"
#include "chain.h"
#include "counter_rng.h"

#define ANALOGIZE_DEVICE_ONLY  // element functions only: the registration table is the CPU side's
#include "analogize_generated.h"

namespace {

__device__ uint32_t warp_max(uint32_t value) {
    for (int offset = 16; offset > 0; offset /= 2) value = max(value, __shfl_down_sync(0xFFFFFFFFu, value, offset));
    return value;
}

// One block per vector of a measured range: its r = max(max |x|, floor) (chain.h's range_index layout). A vector
// can be a whole sample (hundreds of thousands of values at batch 1), so its threads share the reading; the
// largest magnitude's bits are the same whatever order they are compared in, so r equals the CPU kernel's.
__global__ void range_kernel(const float* __restrict__ input, float* __restrict__ ranges, size_t vectors, size_t mid,
                             size_t inner, size_t block, float floor) {
    __shared__ uint32_t warp_largest[32];
    for (size_t v = blockIdx.x; v < vectors; v += gridDim.x) {
        const size_t base = v / inner * mid * inner, position = v % inner;
        uint32_t largest = 0;
        for (size_t j = threadIdx.x; j < mid; j += blockDim.x) {
            const size_t row = j / block, lane = j % block;
            largest = max(largest, magnitude_bits(input[base + (row * inner + position) * block + lane]));
        }
        largest = warp_max(largest);
        if (threadIdx.x % 32 == 0) warp_largest[threadIdx.x / 32] = largest;
        __syncthreads();
        if (threadIdx.x < 32) {
            largest = threadIdx.x < blockDim.x / 32 ? warp_largest[threadIdx.x] : 0;
            largest = warp_max(largest);
            if (threadIdx.x == 0) ranges[v] = at_least(largest, floor);
        }
        __syncthreads();  // warp_largest is the next vector's
    }
}

// Steps [begin, end) of the chain; `input` is the output itself for a stage after the first (each thread reads
// and writes its own elements).
__global__ void chain_kernel(DeviceChain chain, int begin, int end, const float* input,
                             const float* __restrict__ range, float* output, size_t count, size_t half, uint64_t run) {
    const size_t words = counter_rng::words_covering(count);
    for (size_t w = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; w < words;
         w += static_cast<size_t>(gridDim.x) * blockDim.x) {
        // the two elements that share word w: neighbouring threads read and write neighbouring elements
        const size_t first = counter_rng::first_element_of(w), index[2] = {first, first + counter_rng::kHalfGroup};
        float values[2] = {0, 0}, gates[2] = {0, 0}, ranges[2] = {0, 0};
        for (int lane = 0; lane < 2; ++lane) {
            if (index[lane] >= count) break;
            if (chain.gated) {
                const size_t row = index[lane] / half, column = index[lane] % half;
                values[lane] = input[row * 2 * half + column];
                gates[lane] = input[row * 2 * half + half + column];
            } else {
                values[lane] = input[index[lane]];
            }
            if (chain.range_mid) {
                ranges[lane] = range[range_index(index[lane], chain.range_mid, chain.range_inner, chain.range_block)];
            } else if (chain.range_count) {
                ranges[lane] = range[chain.range_count == 1 ? 0 : index[lane]];
            }
        }
        for (int s = begin; s < end; ++s) {
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
                    case kRange: break;  // measured by range_kernel before the stage
                    case kNormalise: x = x / ranges[lane]; break;
                    case kRescale: x = x * ranges[lane]; break;
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

constexpr int kThreads = 256;

unsigned blocks_for(size_t work) { return static_cast<unsigned>(std::min<size_t>(work, 65535u * 16)); }

unsigned grid_for(size_t threads) { return blocks_for((threads + kThreads - 1) / kThreads); }

}  // namespace

const char* launch_chain(const DeviceChain& chain, const float* input, const float* range, float* output,
                         size_t count, size_t half, uint64_t run, void* stream) {
    const cudaStream_t on = static_cast<cudaStream_t>(stream);
    const size_t vectors = chain.range_mid ? count / chain.range_mid : 0;
    float* measured = nullptr;
    if (vectors) {  // in stream order: the memory is the stream's until the chain has read it
        const cudaError_t status = cudaMallocAsync(reinterpret_cast<void**>(&measured), vectors * sizeof(float), on);
        if (status != cudaSuccess) return cudaGetErrorString(status);
        range = measured;
    }
    // one stage from each kRange step to the next, each measuring its range on what the stage before wrote
    for (int start = 0, next = 0; start < chain.count; start = next) {
        for (next = start + 1; next < chain.count && chain.steps[next].kind != kRange;) ++next;
        const float* source = start ? output : input;
        if (vectors) {
            range_kernel<<<blocks_for(vectors), kThreads, 0, on>>>(source, measured, vectors, chain.range_mid,
                                                                   chain.range_inner, chain.range_block,
                                                                   chain.steps[start].attr[0]);
        }
        chain_kernel<<<grid_for(counter_rng::words_covering(count)), kThreads, 0, on>>>(
            chain, start, next, source, range, output, count, half, run);
    }
    cudaError_t status = cudaGetLastError();
    if (measured) {
        const cudaError_t freed = cudaFreeAsync(measured, on);
        if (status == cudaSuccess) status = freed;
    }
    return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
