// The part of ONNX Runtime's stable C ABI this library uses, declared here from the documented slot layout
// (OrtApi is an append-only table of function pointers; OrtCustomOp a struct of them). No ORT header is
// needed or copied: see shared/reference/ort-custom-op-abi.md for the facts these declarations follow.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {
struct OrtStatus;
struct OrtApi;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtShapeInferContext;

struct OrtApiBase {
    const OrtApi* (*GetApi)(uint32_t version);
    const char* (*GetVersionString)();
};

enum { kOrtFail = 1, kOrtInvalidArgument = 2 };  // OrtErrorCode values
enum { kElementFloat = 1 };                        // ONNXTensorElementDataType values
enum { kInputOutputRequired = 0, kInputOutputOptional = 1 };  // OrtCustomOpInputOutputCharacteristic values

// Fields up to GetEndVersion are read by ORT for version 17, the version declared below (each null-checked
// from InferOutputShapeFn on).
struct OrtCustomOp {
    uint32_t version;
    void* (*CreateKernel)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*);
    const char* (*GetName)(const OrtCustomOp*);
    const char* (*GetExecutionProviderType)(const OrtCustomOp*);
    int (*GetInputType)(const OrtCustomOp*, size_t);
    size_t (*GetInputTypeCount)(const OrtCustomOp*);
    int (*GetOutputType)(const OrtCustomOp*, size_t);
    size_t (*GetOutputTypeCount)(const OrtCustomOp*);
    void (*KernelCompute)(void*, OrtKernelContext*);
    void (*KernelDestroy)(void*);
    int (*GetInputCharacteristic)(const OrtCustomOp*, size_t);
    int (*GetOutputCharacteristic)(const OrtCustomOp*, size_t);
    int (*GetInputMemoryType)(const OrtCustomOp*, size_t);
    int (*GetVariadicInputMinArity)(const OrtCustomOp*);
    int (*GetVariadicInputHomogeneity)(const OrtCustomOp*);
    int (*GetVariadicOutputMinArity)(const OrtCustomOp*);
    int (*GetVariadicOutputHomogeneity)(const OrtCustomOp*);
    OrtStatus* (*CreateKernelV2)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**);
    OrtStatus* (*KernelComputeV2)(void*, OrtKernelContext*);
    OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp*, OrtShapeInferContext*);
    int (*GetStartVersion)(const OrtCustomOp*);
    int (*GetEndVersion)(const OrtCustomOp*);
    void* unused_since_version_18[4];
};
static_assert(sizeof(OrtCustomOp) == 26 * 8, "OrtCustomOp must be 26 pointer slots");
}

namespace ort {

constexpr uint32_t kApiVersion = 17;  // KernelContext_ParallelFor arrived in API 17 (ORT 1.17)
constexpr uint32_t kCustomOpVersion = 17;  // InferOutputShapeFn

// Typed access to the OrtApi slots this library calls, by their fixed indices.
class Api {
public:
    explicit Api(const OrtApi* table) : slots_(reinterpret_cast<void* const*>(table)) {}

    OrtStatus* CreateStatus(int code, const char* message) const {
        return call<OrtStatus* (*)(int, const char*)>(0)(code, message);
    }
    const char* GetErrorMessage(const OrtStatus* status) const {
        return call<const char* (*)(const OrtStatus*)>(2)(status);
    }
    void ReleaseStatus(OrtStatus* status) const { call<void (*)(OrtStatus*)>(93)(status); }
    OrtStatus* CreateCustomOpDomain(const char* name, OrtCustomOpDomain** out) const {
        return call<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(26)(name, out);
    }
    OrtStatus* CustomOpDomain_Add(OrtCustomOpDomain* domain, const OrtCustomOp* op) const {
        return call<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(27)(domain, op);
    }
    OrtStatus* AddCustomOpDomain(OrtSessionOptions* options, OrtCustomOpDomain* domain) const {
        return call<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(28)(options, domain);
    }
    OrtStatus* GetTensorMutableData(OrtValue* value, void** out) const {
        return call<OrtStatus* (*)(OrtValue*, void**)>(51)(value, out);
    }
    OrtStatus* GetTensorElementType(const OrtTensorTypeAndShapeInfo* info, int* out) const {
        return call<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int*)>(60)(info, out);
    }
    OrtStatus* GetDimensionsCount(const OrtTensorTypeAndShapeInfo* info, size_t* out) const {
        return call<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(61)(info, out);
    }
    OrtStatus* GetDimensions(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t count) const {
        return call<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(62)(info, dims, count);
    }
    // Slot 63, between GetDimensions and GetTensorShapeElementCount (64) in the append-only table. The names
    // belong to the info: empty for a dimension with a size, or with neither a size nor a name.
    OrtStatus* GetSymbolicDimensions(const OrtTensorTypeAndShapeInfo* info, const char** names, size_t count) const {
        return call<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, const char**, size_t)>(63)(info, names, count);
    }
    OrtStatus* GetTensorShapeElementCount(const OrtTensorTypeAndShapeInfo* info, size_t* out) const {
        return call<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(64)(info, out);
    }
    OrtStatus* GetTensorTypeAndShape(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) const {
        return call<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(65)(value, out);
    }
    OrtStatus* KernelInfoGetAttribute_float(const OrtKernelInfo* info, const char* name, float* out) const {
        return call<OrtStatus* (*)(const OrtKernelInfo*, const char*, float*)>(85)(info, name, out);
    }
    OrtStatus* KernelInfoGetAttribute_int64(const OrtKernelInfo* info, const char* name, int64_t* out) const {
        return call<OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*)>(86)(info, name, out);
    }
    OrtStatus* KernelContext_GetInputCount(const OrtKernelContext* context, size_t* out) const {
        return call<OrtStatus* (*)(const OrtKernelContext*, size_t*)>(88)(context, out);
    }
    // An optional input that the node leaves out comes back as nullptr.
    OrtStatus* KernelContext_GetInput(const OrtKernelContext* context, size_t index, const OrtValue** out) const {
        return call<OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>(90)(context, index, out);
    }
    OrtStatus* KernelContext_GetOutput(OrtKernelContext* context, size_t index, const int64_t* dims, size_t count,
                                       OrtValue** out) const {
        return call<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(91)(
            context, index, dims, count, out);
    }
    void ReleaseTensorTypeAndShapeInfo(OrtTensorTypeAndShapeInfo* info) const {
        call<void (*)(OrtTensorTypeAndShapeInfo*)>(99)(info);
    }
    OrtStatus* KernelInfoGetAttributeArray_float(const OrtKernelInfo* info, const char* name, float* out,
                                                 size_t* size) const {
        return call<OrtStatus* (*)(const OrtKernelInfo*, const char*, float*, size_t*)>(162)(info, name, out, size);
    }
    OrtStatus* KernelInfoGetAttributeArray_int64(const OrtKernelInfo* info, const char* name, int64_t* out,
                                                 size_t* size) const {
        return call<OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*, size_t*)>(163)(info, name, out,
                                                                                               size);
    }
    OrtStatus* KernelContext_GetGPUComputeStream(const OrtKernelContext* context, void** out) const {
        return call<OrtStatus* (*)(const OrtKernelContext*, void**)>(193)(context, out);
    }
    OrtStatus* KernelContext_ParallelFor(const OrtKernelContext* context, void (*fn)(void*, size_t), size_t total,
                                         size_t batches, void* data) const {
        return call<OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t, void*)>(274)(
            context, fn, total, batches, data);
    }

    // The info belongs to the context: not to be released.
    OrtStatus* ShapeInferContext_GetInputTypeShape(const OrtShapeInferContext* context, size_t index,
                                                   OrtTensorTypeAndShapeInfo** out) const {
        return call<OrtStatus* (*)(const OrtShapeInferContext*, size_t, OrtTensorTypeAndShapeInfo**)>(268)(
            context, index, out);
    }
    OrtStatus* ShapeInferContext_SetOutputTypeShape(const OrtShapeInferContext* context, size_t index,
                                                    const OrtTensorTypeAndShapeInfo* info) const {
        return call<OrtStatus* (*)(const OrtShapeInferContext*, size_t, const OrtTensorTypeAndShapeInfo*)>(270)(
            context, index, info);
    }

private:
    template <class Function>
    Function call(size_t index) const { return reinterpret_cast<Function>(slots_[index]); }
    void* const* slots_;
};

}  // namespace ort
