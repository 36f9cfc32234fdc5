// CPU kernels of the ai.analogize op set for ONNX Runtime, plus FusedChain (domain ai.analogize.native):
// a run of element-wise nodes (analog ops, Clip, Relu, LeakyRelu) computed in one pass over memory, and with
// them the nodes that set the run's full scale r (x / r before it, * r after it, and r = max |x| over each
// vector measured at run time), which would otherwise take a pass over memory each.
//
// Every kernel is a chain of steps applied tile by tile: a tile of the input is read once, every step
// transforms it in cache, and it is written once. A single op is a chain of one step. Random steps draw
// from their own counter-based stream (key = the node's seed), indexed by element and run, so a fused chain gives
// exactly what its nodes give one by one.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "analogize_math.h"
#include "chain.h"
#include "ort_abi.h"
#include "counter_rng.h"

namespace {

struct AttributeDescription {
    const char* name;
    float fallback;  // NaN: no default
    int required;
};

struct OpDescription {
    const char* name;
    int random;  // 0 none, 1 standard normal, 2 uniform on [0, 1)
    int gated;   // splits the last axis into (x, gate) halves
    int straight_through;  // its training gradient is the identity
    int attribute_count;
    AttributeDescription attributes[kMaxAttributes];
};

#include "analogize_generated.h"

constexpr size_t kOpCount = sizeof(kOps) / sizeof(kOps[0]);
constexpr size_t kTile = counter_rng::kGroup;  // elements kept in cache across the steps: one random group
constexpr size_t kChunk = 64 * 1024;   // elements per task handed to ONNX Runtime's thread pool
constexpr size_t kLineFloats = 16;     // floats per 64-byte cache line

using Step = ChainStep;

struct Kernel {
    std::string name;
    std::vector<Step> steps;
    bool gated = false;
    bool cuda = false;
    std::vector<int64_t> range_axes;  // the axes of a measured range's vectors (none: all)
    int64_t range_block = 1;          // > 1: the input is in ONNX Runtime's blocked channel layout (range_index)
    std::atomic<uint64_t> runs{0};

    bool measures_range() const { return !steps.empty() && steps[0].kind == kRange; }
    bool uses_range() const {
        return std::any_of(steps.begin(), steps.end(),
                           [](const Step& step) { return step.kind == kNormalise || step.kind == kRescale; });
    }
};

const ort::Api* g_api = nullptr;

uint64_t fresh_key() {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) | device();
}

uint64_t key_of(float seed) { return std::isnan(seed) || seed < 0 ? fresh_key() : static_cast<uint64_t>(seed); }

void fill_random(const Step& step, size_t first, size_t count, uint64_t run, float* out) {
    // Group by group (one per whole tile): the group's words, their first draws for the first half of its
    // elements and their second draws for the other half, each loop over contiguous lanes.
    const uint64_t start = counter_rng::stream(step.key, run);
    for (size_t done = 0; done < count;) {
        const size_t offset = (first + done) % counter_rng::kGroup;
        const size_t length = std::min(count - done, counter_rng::kGroup - offset);
        const uint64_t base = counter_rng::word_of(first + done - offset);
        uint64_t bits[counter_rng::kHalfGroup];
        for (size_t w = 0; w < counter_rng::kHalfGroup; ++w) bits[w] = counter_rng::word(base + w, start);
        float draws[counter_rng::kGroup];
        // the kind as a constant in each loop, so that the compiler drops draw_pair's branch and vectorises
        const auto draw = [&](int kind) {
            for (size_t w = 0; w < counter_rng::kHalfGroup; ++w) {
                counter_rng::draw_pair(kind, bits[w], &draws[w], &draws[counter_rng::kHalfGroup + w]);
            }
        };
        step.random == counter_rng::kNormalDraws ? draw(counter_rng::kNormalDraws) : draw(step.random);
        std::memcpy(out + done, draws + offset, length * sizeof(float));
        done += length;
    }
}

// The r of a tile's elements: element i's is values[(i + lane) / block], one r per element where block is 1,
// one per pixel of `block` lanes in the blocked layout (the tile starting at lane `lane` of its first pixel).
struct TileRange {
    const float* values = nullptr;
    size_t block = 1;
    size_t lane = 0;
};

template <bool kDivide>
ANALOGIZE_HD float scaled(float x, float r) { return kDivide ? x / r : x * r; }

// Whole pixels of a compile-time width, each one vector of lanes scaled by its r: a loop over a pixel's lanes
// would be unrolled before the vectoriser saw it, and left scalar (the library builds without SLP vectorising).
template <size_t kBlock, bool kDivide>
void scale_pixels(float* __restrict values, const float* __restrict range, size_t count) {
    typedef float Pixel __attribute__((vector_size(kBlock * sizeof(float))));
    for (size_t p = 0; p < count / kBlock; ++p) {
        Pixel lanes;
        std::memcpy(&lanes, values + p * kBlock, sizeof lanes);
        lanes = kDivide ? lanes / range[p] : lanes * range[p];
        std::memcpy(values + p * kBlock, &lanes, sizeof lanes);
    }
}

template <bool kDivide>
void scale_by(float* __restrict values, const TileRange& range, size_t count) {
    const float* __restrict r = range.values;
    if (range.block == 1) {
        for (size_t i = 0; i < count; ++i) values[i] = scaled<kDivide>(values[i], r[i]);
        return;
    }
    if (range.lane == 0 && count % range.block == 0 && range.block == 8) {  // ONNX Runtime's blocks (AVX2,
        return scale_pixels<8, kDivide>(values, r, count);                    // AVX-512)
    }
    if (range.lane == 0 && count % range.block == 0 && range.block == 16) {
        return scale_pixels<16, kDivide>(values, r, count);
    }
    for (size_t i = 0; i < count; ++i) values[i] = scaled<kDivide>(values[i], r[(i + range.lane) / range.block]);
}

// `range` holds the elements' r for the steps that read it (kRange measured it before the tile was read).
void apply_step(const Step& step, float* __restrict values, const float* gates, const TileRange& range,
                size_t first, size_t count, uint64_t run) {
    switch (step.kind) {
        case kRange:
            return;
        case kNormalise:
            return scale_by<true>(values, range, count);
        case kRescale:
            return scale_by<false>(values, range, count);
        case kClip:
            for (size_t i = 0; i < count; ++i) values[i] = clip(values[i], step.attr[0], step.attr[1]);
            return;
        case kRelu:
            for (size_t i = 0; i < count; ++i) values[i] = relu(values[i]);
            return;
        case kLeakyRelu:
            for (size_t i = 0; i < count; ++i) values[i] = leaky_relu(values[i], step.attr[0]);
            return;
        default:
            break;
    }
    float random[kTile];
    if (step.random) fill_random(step, first, count, run, random);
    apply_op(step.op, values, gates, step.attr, random, count);  // the op reads random only if it draws
}

// Training's gradient of a chain without activations (torch_chain_run): the product of each step's local
// slope, where straight-through ops count 1, Clip 1 inside its inclusive range and 0 outside, Relu and
// LeakyRelu as torch differentiates them.
void multiply_slope(const Step& step, const float* __restrict values, float* __restrict slope, size_t count) {
    const float low = step.attr[0], high = step.attr[1], alpha = step.attr[0];  // locals: no aliasing to fear
    switch (step.kind) {
        case kClip:
            for (size_t i = 0; i < count; ++i) slope[i] *= (values[i] >= low && values[i] <= high) ? 1.0f : 0.0f;
            return;
        case kRelu:
            for (size_t i = 0; i < count; ++i) slope[i] *= values[i] > 0.0f ? 1.0f : 0.0f;
            return;
        case kLeakyRelu:
            for (size_t i = 0; i < count; ++i) slope[i] *= values[i] > 0.0f ? 1.0f : alpha;
            return;
        default:
            return;
    }
}

struct Job {
    const Kernel* kernel;
    const float* input;
    float* output;
    size_t count;  // output elements
    size_t half;   // gated ops: width of each half of the last axis
    uint64_t run;
    float* slope = nullptr;  // where given, d output / d input under training's gradient rules
    const float* range = nullptr;  // a range input: one value for all elements, or one per element
    bool range_scalar = false;
    // a measured range: its layout (range_index), and the share of each task (run_measured_task)
    size_t range_mid = 0, range_inner = 0, range_block = 1;
    size_t slabs_per_task = 1, piece = 0, pieces = 1;
};

// Steps [begin, end) of a chain, read from `source`: the input, or the output that the chain's earlier stages
// wrote (a chain that measures its range again after a step measures it on that step's output).
struct Stage {
    const Step* begin;
    const Step* end;
    const float* source;
};

// A stage's steps on the `count` elements from `first` (at most a tile, inside one random group), from its
// source to the output; `range` holds their r where the steps read one.
void run_tile(const Job& job, const Stage& stage, size_t first, size_t count, const TileRange& range) {
    float values[kTile], gates[kTile], slope[kTile];
    const float* gate_pointer = nullptr;
    if (job.kernel->gated) {
        // Row by row: each output row takes the first half of an input row as values and the second as gates.
        size_t row = first / job.half, column = first % job.half;
        for (size_t done = 0; done < count; ++row, column = 0) {
            const size_t length = std::min(count - done, job.half - column);
            const float* source = stage.source + row * 2 * job.half + column;
            std::memcpy(values + done, source, length * sizeof(float));
            std::memcpy(gates + done, source + job.half, length * sizeof(float));
            done += length;
        }
        gate_pointer = gates;
    } else {
        std::memcpy(values, stage.source + first, count * sizeof(float));
    }
    // The steps of a random chain take long enough per tile that the hardware prefetcher stops running
    // ahead; ask for the next tile's input (and output lines, which are written) while this one computes.
    for (size_t ahead = first + count; ahead < std::min(job.count, first + count + kTile); ahead += kLineFloats) {
        __builtin_prefetch(stage.source + ahead, 0);
        __builtin_prefetch(job.output + ahead, 1);
    }
    if (job.slope) std::fill(slope, slope + count, 1.0f);
    for (const Step* step = stage.begin; step != stage.end; ++step) {
        if (job.slope) multiply_slope(*step, values, slope, count);
        apply_step(*step, values, gate_pointer, range, first, count, job.run);
    }
    std::memcpy(job.output + first, values, count * sizeof(float));
    if (job.slope) std::memcpy(job.slope + first, slope, count * sizeof(float));
}

void run_chunk(void* data, size_t chunk) {
    const Job& job = *static_cast<const Job*>(data);
    const size_t begin = chunk * kChunk, end = std::min(job.count, begin + kChunk);
    float scalar_range[kTile];
    if (job.range_scalar) std::fill(scalar_range, scalar_range + kTile, job.range[0]);
    const std::vector<Step>& steps = job.kernel->steps;
    const Stage stage{steps.data(), steps.data() + steps.size(), job.input};
    for (size_t first = begin; first < end; first += kTile) {
        const float* range = job.range_scalar ? scalar_range : job.range ? job.range + first : nullptr;
        run_tile(job, stage, first, std::min(kTile, end - first), TileRange{range});
    }
}

// The maxima of |x| that a vector's lanes have seen (`lanes`, `span` of them, the share's positions times
// the block), taken further over `count` values from lane `lane` on, wrapping around the share.
void measure(uint32_t* __restrict lanes, size_t span, size_t lane, const float* __restrict values, size_t count) {
    for (size_t j = 0; j < count; lane = 0) {
        const size_t length = std::min(span - lane, count - j);
        for (size_t k = 0; k < length; ++k) lanes[lane + k] = std::max(lanes[lane + k], magnitude_bits(values[j + k]));
        j += length;
    }
}

// A chain that measures its range, on one task's share: `slabs_per_task` whole slabs [mid, inner] of the input,
// or where one slab is larger than a chunk, `piece` of its inner positions. Each vector's r is measured in a
// first pass over the share, and the chain runs in a second, which finds the share still in cache. A chain
// that measures a range again (a stage from each kRange step to the next) measures it on the output the stage
// before writes, as it writes it, and runs the next stage on that output in place, still in cache.
void run_measured_task(void* data, size_t task) {
    const Job& job = *static_cast<const Job*>(data);
    const size_t mid = job.range_mid, inner = job.range_inner, block = job.range_block, slab = mid * inner;
    size_t first_slab = task / job.pieces, last_slab = first_slab + 1, begin = 0, end = inner;
    if (job.pieces > 1) {
        begin = task % job.pieces * job.piece;
        end = std::min(inner, begin + job.piece);
    } else {
        first_slab = task * job.slabs_per_task;
        last_slab = std::min(job.count / slab, first_slab + job.slabs_per_task);
    }
    const size_t width = end - begin, span = width * block;
    const std::vector<Step>& steps = job.kernel->steps;
    std::vector<uint32_t> lanes(span);
    std::vector<float> ranges(width);
    float gathered[kTile];  // a tile's r, one per element or per pixel
    for (size_t s = first_slab; s < last_slab; ++s) {
        const size_t base = s * slab;
        std::fill(lanes.begin(), lanes.end(), 0u);
        for (size_t row = 0; row < mid / block; ++row) {  // each row of the share: span contiguous values
            measure(lanes.data(), span, 0, job.input + base + (row * inner + begin) * block, span);
        }
        // Tiles end where random groups do, so that no group's draws are made twice.
        const auto chain = [&](const Stage& stage, bool measuring, size_t from, size_t to) {
            for (size_t first = from; first < to;) {
                const size_t count = std::min(kTile - first % kTile, to - first);
                size_t position = (first - base) / block % inner;
                TileRange range{ranges.data() + (position - begin), block, (first - base) % block};
                if (inner == 1) {  // one r for the slab
                    std::fill_n(gathered, count, ranges[0]);
                    range = TileRange{gathered};
                } else if (block > 1) {  // the tile's pixels, wrapping around the slab
                    size_t pixels = 0;
                    for (size_t j = 0; j < count; j += block - (j ? 0 : range.lane)) {
                        gathered[pixels++] = ranges[position - begin];
                        if (++position == inner) position = 0;
                    }
                    range.values = gathered;
                } else if (position + count > inner) {  // the positions wrap around within the tile
                    for (size_t j = 0; j < count; position = 0) {
                        const size_t length = std::min(inner - position, count - j);
                        std::copy_n(ranges.data() + (position - begin), length, gathered + j);
                        j += length;
                    }
                    range.values = gathered;
                }
                run_tile(job, stage, first, count, range);
                if (measuring) measure(lanes.data(), span, (first - base) % (inner * block) - begin * block,
                                       job.output + first, count);
                first += count;
            }
        };
        for (size_t start = 0; start < steps.size();) {
            const size_t next = std::find_if(steps.begin() + start + 1, steps.end(),
                                             [](const Step& step) { return step.kind == kRange; }) - steps.begin();
            for (size_t i = 0; i < width; ++i) {
                const uint32_t* pixel = lanes.data() + i * block;
                ranges[i] = at_least(*std::max_element(pixel, pixel + block), steps[start].attr[0]);
            }
            const bool measuring = next < steps.size();
            if (measuring) std::fill(lanes.begin(), lanes.end(), 0u);
            const Stage stage{steps.data() + start, steps.data() + next, start ? job.output : job.input};
            if (width == inner) {
                chain(stage, measuring, base, base + slab);
            } else {
                for (size_t row = 0; row < mid / block; ++row) {
                    chain(stage, measuring, base + (row * inner + begin) * block, base + (row * inner + end) * block);
                }
            }
            start = next;
        }
    }
}

#define RETURN_IF_ERROR(expression)              \
    do {                                         \
        OrtStatus* status_ = (expression);       \
        if (status_ != nullptr) return status_;  \
    } while (0)

OrtStatus* error(const Kernel& kernel, const std::string& message) {
    return g_api->CreateStatus(kOrtInvalidArgument, (kernel.name + ": " + message).c_str());
}

#ifdef ANALOGIZE_WITH_CUDA
const char* const kProviders[] = {nullptr, "CUDAExecutionProvider"};

OrtStatus* compute_on_gpu(const Kernel& kernel, OrtKernelContext* context, const Job& job, size_t range_count) {
    if (kernel.steps.size() > static_cast<size_t>(kMaxDeviceSteps)) {
        return error(kernel, "more than " + std::to_string(kMaxDeviceSteps) + " steps in one chain on the GPU");
    }
    DeviceChain chain{};
    chain.count = static_cast<int>(kernel.steps.size());
    chain.gated = kernel.gated;
    std::copy(kernel.steps.begin(), kernel.steps.end(), chain.steps);
    chain.range_mid = job.range_mid;
    chain.range_inner = job.range_inner;
    chain.range_block = job.range_block;
    chain.range_count = range_count;
    void* stream = nullptr;
    RETURN_IF_ERROR(g_api->KernelContext_GetGPUComputeStream(context, &stream));
    const char* failure = launch_chain(chain, job.input, job.range, job.output, job.count, job.half, job.run,
                                       stream);
    return failure ? error(kernel, std::string("CUDA launch failed: ") + failure) : nullptr;
}
#else
const char* const kProviders[] = {nullptr};
#endif

// Where a FusedChain's r comes from: the layout of a measured range over the input `dims` (its axes must be
// one contiguous run), or its second input. Sets `job` and the range input's element count.
OrtStatus* read_range(const Kernel& kernel, OrtKernelContext* context, const std::vector<int64_t>& dims, Job& job,
                      size_t& range_count) {
    size_t inputs = 1;
    RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
    const OrtValue* range = nullptr;
    if (inputs > 1) RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, 1, &range));
    if (kernel.measures_range()) {
        if (range) return error(kernel, "a chain measures its range or reads it from its second input, not both");
        const int64_t rank = static_cast<int64_t>(dims.size());
        std::vector<int64_t> axes;
        for (int64_t axis : kernel.range_axes) axes.push_back(axis < 0 ? axis + rank : axis);
        if (axes.empty()) {  // all of them
            for (int64_t axis = 0; axis < rank; ++axis) axes.push_back(axis);
        }
        std::sort(axes.begin(), axes.end());
        for (size_t k = 0; k < axes.size(); ++k) {
            if (axes[k] < 0 || axes[k] >= rank || (k > 0 && axes[k] != axes[k - 1] + 1)) {
                return error(kernel, "range_axes must name one contiguous run of the input's " +
                                         std::to_string(rank) + " axes");
            }
        }
        size_t mid = 1, inner = 1;  // a scalar: one vector of one value
        for (int64_t axis = 0; axis < rank; ++axis) {
            if (axis >= axes.front() && axis <= axes.back()) mid *= static_cast<size_t>(dims[axis]);
            if (axis > axes.back()) inner *= static_cast<size_t>(dims[axis]);
        }
        const size_t block = static_cast<size_t>(kernel.range_block);
        if (block > 1 && (axes.size() != 1 || mid % block != 0)) {
            return error(kernel, "a blocked range needs one range axis whose size is a multiple of range_block");
        }
        job.range_mid = mid;
        job.range_inner = inner;
        job.range_block = block;
        return nullptr;
    }
    if (!range) {
        return kernel.uses_range() ? error(kernel, "the chain scales by a range r but neither measures one nor has "
                                                   "a second input") : nullptr;
    }
    OrtTensorTypeAndShapeInfo* info = nullptr;
    RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(range, &info));
    int type = 0;
    OrtStatus* status = g_api->GetTensorElementType(info, &type);
    if (!status) status = g_api->GetTensorShapeElementCount(info, &range_count);
    g_api->ReleaseTensorTypeAndShapeInfo(info);
    RETURN_IF_ERROR(status);
    if (type != kElementFloat || (range_count != 1 && range_count != job.count)) {
        return error(kernel, "the range input must be float32 with one value or one per element");
    }
    void* values = nullptr;
    RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(range), &values));
    job.range = static_cast<const float*>(values);
    job.range_scalar = range_count == 1;
    return nullptr;
}

OrtStatus* compute(void* state, OrtKernelContext* context) {
    Kernel& kernel = *static_cast<Kernel*>(state);
    const OrtValue* input = nullptr;
    RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, 0, &input));
    OrtTensorTypeAndShapeInfo* info = nullptr;
    RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(input, &info));
    int type = 0;
    size_t rank = 0;
    OrtStatus* status = g_api->GetTensorElementType(info, &type);
    if (!status) status = g_api->GetDimensionsCount(info, &rank);
    std::vector<int64_t> dims(rank);
    if (!status && rank) status = g_api->GetDimensions(info, dims.data(), rank);
    g_api->ReleaseTensorTypeAndShapeInfo(info);
    RETURN_IF_ERROR(status);
    if (type != kElementFloat) {
        return error(kernel, "input has ONNX element type " + std::to_string(type) +
                                 "; the native kernels take float32 (type 1) tensors");
    }
    size_t half = 0;
    if (kernel.gated) {
        if (rank == 0 || dims.back() % 2 != 0) {
            return error(kernel, "the last axis must have an even size to split into halves");
        }
        dims.back() /= 2;
        half = static_cast<size_t>(dims.back());
    }
    OrtValue* output = nullptr;
    RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, 0, dims.data(), rank, &output));
    size_t count = 1;
    for (int64_t dim : dims) count *= static_cast<size_t>(dim);
    if (count == 0) return nullptr;
    void* source = nullptr;
    void* target = nullptr;
    RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(input), &source));
    RETURN_IF_ERROR(g_api->GetTensorMutableData(output, &target));
    Job job{&kernel, static_cast<const float*>(source), static_cast<float*>(target), count, half, 0};
    size_t range_count = 0;
    RETURN_IF_ERROR(read_range(kernel, context, dims, job, range_count));
    job.run = kernel.runs.fetch_add(1);
#ifdef ANALOGIZE_WITH_CUDA
    if (kernel.cuda) return compute_on_gpu(kernel, context, job, range_count);
#endif
    if (job.range_mid) {
        const size_t slab = job.range_mid * job.range_inner;
        if (slab <= kChunk) {
            job.slabs_per_task = kChunk / slab;
        } else {
            job.piece = std::max<size_t>(1, kChunk / job.range_mid);
            job.pieces = (job.range_inner + job.piece - 1) / job.piece;
        }
        const size_t slabs = count / slab;
        const size_t tasks = job.pieces > 1 ? slabs * job.pieces
                                            : (slabs + job.slabs_per_task - 1) / job.slabs_per_task;
        if (tasks == 1) {
            run_measured_task(&job, 0);
            return nullptr;
        }
        return g_api->KernelContext_ParallelFor(context, run_measured_task, tasks, 0, &job);
    }
    const size_t chunks = (count + kChunk - 1) / kChunk;
    if (chunks == 1) {
        run_chunk(&job, 0);
        return nullptr;
    }
    return g_api->KernelContext_ParallelFor(context, run_chunk, chunks, 0, &job);
}

Step make_step(int kind, int op) {
    Step step{};
    step.kind = kind;
    step.op = op;
    step.random = kind == kAnalogOp ? kOps[op].random : 0;
    return step;
}

OrtStatus* read_op_attributes(const OpDescription& op, const OrtKernelInfo* info, Step& step) {
    float seed = NAN;
    for (int k = 0; k < op.attribute_count; ++k) {
        const AttributeDescription& attribute = op.attributes[k];
        float value = 0.0f;
        OrtStatus* status = g_api->KernelInfoGetAttribute_float(info, attribute.name, &value);
        if (status) {
            g_api->ReleaseStatus(status);
            int64_t integer = 0;
            OrtStatus* as_integer = g_api->KernelInfoGetAttribute_int64(info, attribute.name, &integer);
            if (!as_integer) {
                return g_api->CreateStatus(kOrtInvalidArgument, (std::string(op.name) + " attribute " + attribute.name +
                                                                 " must be a float, not an integer").c_str());
            }
            g_api->ReleaseStatus(as_integer);
            if (attribute.required) {
                return g_api->CreateStatus(kOrtInvalidArgument, (std::string(op.name) + " needs attribute " +
                                                                 attribute.name).c_str());
            }
            value = attribute.fallback;
        }
        step.attr[k] = value;
        if (std::strcmp(attribute.name, "seed") == 0) seed = value;
    }
    step.key = key_of(seed);
    return nullptr;
}

template <class T>
OrtStatus* read_array(const OrtKernelInfo* info, const char* name, std::vector<T>& out) {
    size_t size = 0;
    OrtStatus* status = nullptr;
    if constexpr (sizeof(T) == sizeof(float)) {
        status = g_api->KernelInfoGetAttributeArray_float(info, name, nullptr, &size);
        if (!status) {
            out.resize(size);
            status = g_api->KernelInfoGetAttributeArray_float(info, name, out.data(), &size);
        }
    } else {
        status = g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
        if (!status) {
            out.resize(size);
            status = g_api->KernelInfoGetAttributeArray_int64(info, name, out.data(), &size);
        }
    }
    return status;
}

// The steps of a FusedChain (the attributes analogize/native.py writes); returns "" or what is wrong.
std::string make_chain(const int64_t* kinds, const int64_t* ops, const float* parameters, const float* seeds,
                       size_t steps, std::vector<Step>& out) {
    for (size_t s = 0; s < steps; ++s) {
        const int kind = static_cast<int>(kinds[s]);
        if (kind == kAnalogOp && (ops[s] < 0 || static_cast<size_t>(ops[s]) >= kOpCount || kOps[ops[s]].gated)) {
            return "step " + std::to_string(s) + " names no element-wise analog op";
        }
        if (kind < kAnalogOp || kind > kRescale) return "unknown step kind " + std::to_string(kind);
        if (kind == kRange && s != 0 && kinds[0] != kRange) {
            return "a chain measures a range again only after measuring one first";
        }
        Step step = make_step(kind, kind == kAnalogOp ? static_cast<int>(ops[s]) : -1);
        if (kind == kAnalogOp) step.key = key_of(seeds[s]);
        std::copy(parameters + s * kMaxAttributes, parameters + (s + 1) * kMaxAttributes, step.attr);
        out.push_back(step);
    }
    return "";
}

OrtStatus* read_fused_chain(const OrtKernelInfo* info, Kernel& kernel) {
    std::vector<int64_t> kinds, ops;
    std::vector<float> parameters, seeds;
    RETURN_IF_ERROR(read_array(info, "kinds", kinds));
    RETURN_IF_ERROR(read_array(info, "ops", ops));
    RETURN_IF_ERROR(read_array(info, "parameters", parameters));
    RETURN_IF_ERROR(read_array(info, "seeds", seeds));
    // optional: absent, a measured range spans all axes, in the plain layout
    if (OrtStatus* absent = read_array(info, "range_axes", kernel.range_axes)) g_api->ReleaseStatus(absent);
    int64_t block = 1;
    if (OrtStatus* absent = g_api->KernelInfoGetAttribute_int64(info, "range_block", &block)) {
        g_api->ReleaseStatus(absent);
        block = 1;
    }
    if (block < 1) return error(kernel, "range_block must be at least 1");
    kernel.range_block = block;
    const size_t steps = kinds.size();
    if (ops.size() != steps || seeds.size() != steps || parameters.size() != steps * kMaxAttributes) {
        return error(kernel, "kinds, ops, seeds and parameters (4 per step) must describe the same steps");
    }
    const std::string problem = make_chain(kinds.data(), ops.data(), parameters.data(), seeds.data(), steps,
                                           kernel.steps);
    return problem.empty() ? nullptr : error(kernel, problem);
}

// One registered op: the OrtCustomOp ORT reads, and what it describes (nullptr: FusedChain).
struct Registration {
    OrtCustomOp op;
    const OpDescription* description;
    const char* name;
    const char* provider;  // nullptr: CPU
};

const Registration& registration(const OrtCustomOp* op) { return *reinterpret_cast<const Registration*>(op); }

OrtStatus* create_kernel(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** out) {
    const Registration& entry = registration(op);
    auto* kernel = new Kernel();
    kernel->name = std::string(entry.name);
    kernel->cuda = entry.provider != nullptr;
    OrtStatus* status = nullptr;
    if (entry.description) {
        kernel->gated = entry.description->gated != 0;
        Step step = make_step(kAnalogOp, static_cast<int>(entry.description - kOps));
        status = read_op_attributes(*entry.description, info, step);
        kernel->steps.push_back(step);
    } else {
        status = read_fused_chain(info, *kernel);
    }
    if (status) {
        delete kernel;
        return status;
    }
    *out = kernel;
    return nullptr;
}

void* create_kernel_legacy(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) {
    void* kernel = nullptr;
    OrtStatus* status = create_kernel(op, api, info, &kernel);
    if (status) g_api->ReleaseStatus(status);
    return kernel;
}

void compute_legacy(void* kernel, OrtKernelContext* context) {
    OrtStatus* status = compute(kernel, context);
    if (status) g_api->ReleaseStatus(status);
}

void destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }
const char* op_name(const OrtCustomOp* op) { return registration(op).name; }
const char* provider(const OrtCustomOp* op) { return registration(op).provider; }
int any_type(const OrtCustomOp*, size_t) { return 0; }  // checked in compute, with a clear message
int float_type(const OrtCustomOp*, size_t) { return kElementFloat; }
size_t one(const OrtCustomOp*) { return 1; }
size_t input_count(const OrtCustomOp* op) { return registration(op).description ? 1 : 2; }  // FusedChain: X, r
int required(const OrtCustomOp*, size_t) { return kInputOutputRequired; }
int optional_after_first(const OrtCustomOp*, size_t index) {
    return index == 0 ? kInputOutputRequired : kInputOutputOptional;
}
int default_memory(const OrtCustomOp*, size_t) { return 0; }
int arity_one(const OrtCustomOp*) { return 1; }

// Element-wise ops give the input's shape; ORT ignores the status this returns, so none is returned. Left to
// run time: a gated op (its last axis halves), a rank-0 input (it may be a shape ORT does not know), and a
// dimension with neither a size nor a name, which the shape would pass on as a size of -1.
OrtStatus* infer_output_shape(const OrtCustomOp* op, OrtShapeInferContext* context) {
    const OpDescription* description = registration(op).description;
    if (description && description->gated) return nullptr;
    OrtTensorTypeAndShapeInfo* info = nullptr;
    size_t rank = 0;
    OrtStatus* status = g_api->ShapeInferContext_GetInputTypeShape(context, 0, &info);
    if (!status) status = g_api->GetDimensionsCount(info, &rank);
    std::vector<int64_t> dims(rank);
    std::vector<const char*> names(rank, nullptr);
    if (!status && rank) status = g_api->GetDimensions(info, dims.data(), rank);
    if (!status && rank) status = g_api->GetSymbolicDimensions(info, names.data(), rank);
    bool known = !status && rank > 0;
    for (size_t k = 0; known && k < rank; ++k) {
        known = dims[k] >= 0 || (names[k] != nullptr && names[k][0] != '\0');
    }
    if (known) status = g_api->ShapeInferContext_SetOutputTypeShape(context, 0, info);
    if (status) g_api->ReleaseStatus(status);
    return nullptr;
}

Registration make_registration(const OpDescription* description, const char* name, const char* provider_name) {
    Registration entry{};
    OrtCustomOp& op = entry.op;
    op.version = ort::kCustomOpVersion;
    op.CreateKernel = create_kernel_legacy;
    op.GetName = op_name;
    op.GetExecutionProviderType = provider;
    op.GetInputType = any_type;
    op.GetInputTypeCount = input_count;
    op.GetOutputType = float_type;
    op.GetOutputTypeCount = one;
    op.KernelCompute = compute_legacy;
    op.KernelDestroy = destroy_kernel;
    op.GetInputCharacteristic = optional_after_first;
    op.GetOutputCharacteristic = required;
    op.GetInputMemoryType = default_memory;
    op.GetVariadicInputMinArity = arity_one;
    op.GetVariadicInputHomogeneity = arity_one;
    op.GetVariadicOutputMinArity = arity_one;
    op.GetVariadicOutputHomogeneity = arity_one;
    op.CreateKernelV2 = create_kernel;
    op.KernelComputeV2 = compute;
    op.InferOutputShapeFn = infer_output_shape;
    entry.description = description;
    entry.name = name;
    entry.provider = provider_name;
    return entry;
}

// ORT keeps pointers to these for as long as sessions live: they are static.
std::vector<Registration>& registrations() {
    static std::vector<Registration> entries = [] {
        std::vector<Registration> made;
        // CPU and CUDA kernels under the same names: a CUDA-only op would break CPU-only sessions.
        for (const char* provider_name : kProviders) {
            for (size_t k = 0; k < kOpCount; ++k) {
                made.push_back(make_registration(&kOps[k], kOps[k].name, provider_name));
            }
            made.push_back(make_registration(nullptr, "FusedChain", provider_name));
        }
        return made;
    }();
    return entries;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                                const OrtApiBase* base) {
    const OrtApi* table = base->GetApi(ort::kApiVersion);
    if (table == nullptr) {
        const ort::Api oldest(base->GetApi(1));
        return oldest.CreateStatus(kOrtFail, "the analogize native kernels need ONNX Runtime 1.17 or newer");
    }
    static const ort::Api api(table);
    g_api = &api;
    // The domains are made once and shared by every session (ORT never owns them), so that registering the
    // library in many sessions does not leak a pair of them each time.
    struct Domains {
        OrtCustomOpDomain* analog = nullptr;
        OrtCustomOpDomain* fused = nullptr;
        OrtStatus* failure = nullptr;
    };
    static const Domains domains = [] {
        Domains made;
        made.failure = api.CreateCustomOpDomain("ai.analogize", &made.analog);
        if (!made.failure) made.failure = api.CreateCustomOpDomain("ai.analogize.native", &made.fused);
        for (Registration& entry : registrations()) {
            if (!made.failure) made.failure = api.CustomOpDomain_Add(entry.description ? made.analog : made.fused,
                                                                     &entry.op);
        }
        return made;
    }();
    if (domains.failure) {
        return api.CreateStatus(kOrtFail, (std::string("registering the analogize ops failed: ") +
                                           api.GetErrorMessage(domains.failure)).c_str());
    }
    RETURN_IF_ERROR(api.AddCustomOpDomain(options, domains.analog));
    return api.AddCustomOpDomain(options, domains.fused);
}

// Chains for torch training (analogize.torch_ops): the same steps and streams, called through ctypes, with
// the chain's training-time slope written beside its output. Only chains whose every analog op is
// straight-through are taken, so the slope is all the backward pass needs.
extern "C" __attribute__((visibility("default"))) void* analogize_torch_chain_new(const int64_t* kinds,
                                                                                 const int64_t* ops,
                                                                                 const float* parameters,
                                                                                 const float* seeds,
                                                                                 size_t steps) {
    try {
        auto kernel = std::make_unique<Kernel>();
        const std::string problem = make_chain(kinds, ops, parameters, seeds, steps, kernel->steps);
        const bool straight_through = std::all_of(kernel->steps.begin(), kernel->steps.end(), [](const Step& step) {
            return step.kind == kAnalogOp ? kOps[step.op].straight_through != 0 : step.kind <= kLeakyRelu;
        });  // a range's gradient is no slope of the chain's own: training keeps its nodes
        return problem.empty() && straight_through ? kernel.release() : nullptr;
    } catch (...) {  // nothing may unwind into the caller's C frames
        return nullptr;
    }
}

extern "C" __attribute__((visibility("default"))) void analogize_torch_chain_free(void* chain) {
    delete static_cast<Kernel*>(chain);
}

// Runs the chain on `count` floats with the random streams at `run`; `slope` may be null (no gradient
// wanted). Chunks are claimed by up to `threads` threads; where a thread cannot be started, those already
// running (the caller's at least) take its share.
extern "C" __attribute__((visibility("default"))) void analogize_torch_chain_run(const void* chain,
                                                                                const float* input, float* output,
                                                                                float* slope, size_t count,
                                                                                uint64_t run, int threads) {
    Job job{static_cast<const Kernel*>(chain), input, output, count, 0, run, slope};
    const size_t chunks = (count + kChunk - 1) / kChunk;
    std::atomic<size_t> next{0};
    auto work = [&job, &next, chunks] {
        for (size_t chunk = next++; chunk < chunks; chunk = next++) run_chunk(&job, chunk);
    };
    std::vector<std::thread> pool;
    const size_t helpers = std::min(chunks, static_cast<size_t>(std::max(threads, 1))) - (chunks > 0 ? 1 : 0);
    for (size_t k = 0; k < helpers; ++k) {
        try {
            pool.emplace_back(work);
        } catch (...) {
            break;
        }
    }
    work();
    for (std::thread& thread : pool) thread.join();
}
