// CUDA kernels of the ai.analogize op set: the same generated element code and the same random streams as
// the CPU kernels (counter_rng.h: the word of the stream each element draws from), one thread per word; a
// chain that measures its range runs a range kernel first.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>

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

// Where there are enough vectors to fill the GPU, each of at most kThreadVector values and not along the last
// axis, one thread reads each (neighbouring threads read neighbouring vectors, coalesced, as over a convolution
// output's channels). Otherwise blocks of threads read each vector in chunks, so that every
// multiprocessor reads: a whole sample at batch 1, or a convolution's few positions.
constexpr size_t kThreadVector = 4096, kThreadVectors = 32768;
constexpr size_t kRangeChunk = 16384;

__device__ size_t vector_element(size_t v, size_t j, size_t mid, size_t inner, size_t block) {
    const size_t base = v / inner * mid * inner, position = v % inner;
    return block == 1 ? base + j * inner + position : base + (j / block * inner + position) * block + j % block;
}

// The largest |x| bits of each vector of a measured range (chain.h's range_index layout), one thread per vector.
__global__ void thread_range_kernel(const float* __restrict__ input, uint32_t* largest, size_t vectors, size_t mid,
                                    size_t inner, size_t block) {
    for (size_t v = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; v < vectors;
         v += static_cast<size_t>(gridDim.x) * blockDim.x) {
        uint32_t found = 0;
#pragma unroll 4
        for (size_t j = 0; j < mid; ++j) {
            found = max(found, magnitude_bits(input[vector_element(v, j, mid, inner, block)]));
        }
        largest[v] = found;
    }
}

// The same into `largest` zeroed before, block b reading chunk b % chunks of vector b / chunks. The maximum of the
// bits is the same whatever order they are compared in, so r equals the CPU kernel's.
__global__ void chunk_range_kernel(const float* __restrict__ input, uint32_t* largest, size_t vectors, size_t chunks,
                                   size_t mid, size_t inner, size_t block) {
    __shared__ uint32_t warp_largest[32];
    for (size_t b = blockIdx.x; b < vectors * chunks; b += gridDim.x) {
        const size_t v = b / chunks, begin = b % chunks * kRangeChunk, end = min(begin + kRangeChunk, mid);
        uint32_t found = 0;
        for (size_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
            found = max(found, magnitude_bits(input[vector_element(v, j, mid, inner, block)]));
        }
        found = warp_max(found);
        if (threadIdx.x % 32 == 0) warp_largest[threadIdx.x / 32] = found;
        __syncthreads();
        if (threadIdx.x < 32) {
            found = warp_max(threadIdx.x < blockDim.x / 32 ? warp_largest[threadIdx.x] : 0);
            if (threadIdx.x == 0) atomicMax(largest + v, found);
        }
        __syncthreads();  // warp_largest is the next chunk's
    }
}

__device__ size_t range_of(size_t element, const DeviceChain& chain, bool narrow) {
    if (narrow) {
        const auto narrowed = [](size_t value) { return static_cast<uint32_t>(value); };
        return range_index<uint32_t>(narrowed(element), narrowed(chain.range_mid), narrowed(chain.range_inner),
                                     narrowed(chain.range_block));
    }
    return range_index<size_t>(element, chain.range_mid, chain.range_inner, chain.range_block);
}

// Steps [begin, end) of the chain; `input` is the output itself for a stage after the first (each thread reads
// and writes its own elements). A measured range comes as its largest |x| bits, r = max(that, floor); `narrow`:
// the tensor's indices fit 32 bits.
__global__ void chain_kernel(DeviceChain chain, int begin, int end, const float* input,
                             const float* __restrict__ range, const uint32_t* __restrict__ largest, float floor,
                             float* output, size_t count, size_t half, uint64_t run, bool narrow) {
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
                ranges[lane] = at_least(largest[range_of(index[lane], chain, narrow)], floor);
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
                    case kRange: break;  // measured by a range kernel before the stage
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

// The measured ranges' memory pool of the current device. The device's default pool gives its memory back at
// every synchronisation, which ONNX Runtime does after each run, and getting it again took about 0.1 ms a
// chain; this one keeps up to kPoolKept bytes (a few runs' ranges) and leaves other users' pools alone.
constexpr uint64_t kPoolKept = 64ull << 20;

cudaError_t range_pool(cudaMemPool_t* pool) {
    static std::mutex guard;
    static std::map<int, cudaMemPool_t> pools;
    int device = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status != cudaSuccess) return status;
    const std::lock_guard<std::mutex> lock(guard);
    const auto found = pools.find(device);
    if (found != pools.end()) {
        *pool = found->second;
        return cudaSuccess;
    }
    cudaMemPoolProps properties = {};
    properties.allocType = cudaMemAllocationTypePinned;
    properties.location.type = cudaMemLocationTypeDevice;
    properties.location.id = device;
    status = cudaMemPoolCreate(pool, &properties);
    if (status != cudaSuccess) return status;
    uint64_t kept = kPoolKept;
    status = cudaMemPoolSetAttribute(*pool, cudaMemPoolAttrReleaseThreshold, &kept);
    if (status != cudaSuccess) {
        cudaMemPoolDestroy(*pool);
        return status;
    }
    pools[device] = *pool;
    return cudaSuccess;
}

}  // namespace

const char* launch_chain(const DeviceChain& chain, const float* input, const float* range, float* output,
                         size_t count, size_t half, uint64_t run, void* stream) {
    const cudaStream_t on = static_cast<cudaStream_t>(stream);
    const size_t vectors = chain.range_mid ? count / chain.range_mid : 0;
    const size_t chunks = (chain.range_mid + kRangeChunk - 1) / kRangeChunk;
    const bool narrow = count <= UINT32_MAX;
    uint32_t* largest = nullptr;
    cudaError_t status = cudaSuccess;
    if (vectors) {  // in stream order: the memory is the stream's until the chain has read it
        cudaMemPool_t pool;
        status = range_pool(&pool);
        if (status == cudaSuccess) {
            status = cudaMallocFromPoolAsync(reinterpret_cast<void**>(&largest), vectors * sizeof(uint32_t), pool, on);
        }
    }
    // one stage from each kRange step to the next, each measuring its range on what the stage before wrote
    for (int start = 0, next = 0; start < chain.count && status == cudaSuccess; start = next) {
        for (next = start + 1; next < chain.count && chain.steps[next].kind != kRange;) ++next;
        const float* source = start ? output : input;
        if (vectors) {
            if (chain.range_mid <= kThreadVector && vectors >= kThreadVectors && chain.range_inner > 1) {
                thread_range_kernel<<<grid_for(vectors), kThreads, 0, on>>>(
                    source, largest, vectors, chain.range_mid, chain.range_inner, chain.range_block);
            } else {
                status = cudaMemsetAsync(largest, 0, vectors * sizeof(uint32_t), on);
                if (status != cudaSuccess) break;
                const size_t warps = (chain.range_mid + 31) / 32;
                const unsigned threads = static_cast<unsigned>(std::min<size_t>(kThreads, warps * 32));
                chunk_range_kernel<<<blocks_for(vectors * chunks), threads, 0, on>>>(
                    source, largest, vectors, chunks, chain.range_mid, chain.range_inner, chain.range_block);
            }
        }
        chain_kernel<<<grid_for(counter_rng::words_covering(count)), kThreads, 0, on>>>(
            chain, start, next, source, range, largest, chain.steps[start].attr[0], output, count, half, run, narrow);
    }
    // the runtime keeps a call's error for the next cudaGetLastError on this thread: read it on every path, so
    // that a failure here is not reported again by the next, healthy chain
    const cudaError_t last = cudaGetLastError();
    if (status == cudaSuccess) status = last;
    if (largest) {
        const cudaError_t freed = cudaFreeAsync(largest, on);
        if (status == cudaSuccess) status = freed;
    }
    return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
