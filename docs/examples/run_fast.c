// Runs an analogize model (the fast file `analogize fast` writes, or any converted model) from ONNX Runtime's C
// API with the native kernel library registered: one float32 input read from a raw file, one float32 output
// written to another.
//
// No ONNX Runtime header is needed (the wheels ship none): OrtApi is an append-only table of function pointers
// whose slots never move, so the few used here are called by their fixed indices, as custom_ops/ort_abi.h does
// for the library's own (see shared/reference/ort-custom-op-abi.md for the rules). ONNX Runtime itself is
// loaded by path: the wheels ship libonnxruntime.so.<version> without the libonnxruntime.so.1 its soname names.
//
//   cc -O2 -o run_fast docs/examples/run_fast.c -ldl
//   ORT=$(python -c "import glob, onnxruntime as o; print(glob.glob(o.__path__[0] + '/capi/libonnxruntime.so*')[0])")
//   ./run_fast [--no-optimisation] $ORT MODEL.onnx $(analogize native) INPUT OUTPUT in.f32 out.f32 64 1 8 8
//
// --no-optimisation turns ONNX Runtime's graph optimisations off, as a file written with
// `analogize fast --for-this-machine` (already optimised) needs.
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtSession OrtSession;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;

typedef struct OrtApiBase {
    const void* (*GetApi)(uint32_t version);
    const char* (*GetVersionString)(void);
} OrtApiBase;


enum Slot {  // OrtApi indices: byte offset = 8 * index
    kGetErrorMessage = 2,
    kCreateEnv = 3,
    kCreateSession = 7,
    kRun = 9,
    kCreateSessionOptions = 10,
    kSetSessionGraphOptimizationLevel = 23,
    kRegisterCustomOpsLibrary = 29,
    kCreateTensorWithDataAsOrtValue = 49,
    kGetTensorMutableData = 51,
    kGetTensorShapeElementCount = 64,
    kGetTensorTypeAndShape = 65,
    kCreateCpuMemoryInfo = 69,
    kReleaseEnv = 92,
    kReleaseMemoryInfo = 94,
    kReleaseSession = 95,
    kReleaseValue = 96,
    kReleaseTensorTypeAndShapeInfo = 99,
    kReleaseSessionOptions = 100,
};
enum { kApiVersion = 17 };  // the native library needs ONNX Runtime 1.17 or newer
enum { kLoggingWarning = 2, kArenaAllocator = 1, kMemTypeDefault = 0, kElementFloat = 1, kDisableAll = 0 };

static void* const* api;
#define CALL(type, slot) ((type)api[slot])

static void check(OrtStatus* status, const char* what) {
    if (status == NULL) return;
    fprintf(stderr, "run_fast: %s: %s\n", what, CALL(const char* (*)(const OrtStatus*), kGetErrorMessage)(status));
    exit(1);
}

static void* read_file(const char* path, size_t* size) {
    FILE* file = fopen(path, "rb");
    if (!file || fseek(file, 0, SEEK_END) != 0) {
        fprintf(stderr, "run_fast: cannot read %s\n", path);
        exit(1);
    }
    *size = (size_t)ftell(file);
    rewind(file);
    void* data = malloc(*size ? *size : 1);
    if (!data || fread(data, 1, *size, file) != *size) {
        fprintf(stderr, "run_fast: cannot read %s\n", path);
        exit(1);
    }
    fclose(file);
    return data;
}

int main(int argc, char** argv) {
    int optimise = 1;
    if (argc > 1 && strcmp(argv[1], "--no-optimisation") == 0) {
        optimise = 0;
        ++argv;
        --argc;
    }
    if (argc < 9) {
        fprintf(stderr, "usage: run_fast [--no-optimisation] LIBONNXRUNTIME MODEL LIBRARY INPUT_NAME OUTPUT_NAME "
                        "IN.f32 OUT.f32 DIM...\n");
        return 2;
    }
    const char *model = argv[2], *library = argv[3], *input_name = argv[4], *output_name = argv[5];
    const char *input_path = argv[6], *output_path = argv[7];
    int64_t shape[8];
    size_t rank = (size_t)(argc - 8), count = 1;
    if (rank > 8) {
        fprintf(stderr, "run_fast: at most 8 dimensions\n");
        return 2;
    }
    for (size_t k = 0; k < rank; ++k) count *= (size_t)(shape[k] = strtoll(argv[8 + k], NULL, 10));
    size_t bytes = 0;
    float* input = read_file(input_path, &bytes);
    if (bytes != count * sizeof(float)) {
        fprintf(stderr, "run_fast: %s holds %zu bytes, the shape asks for %zu\n", input_path, bytes, count * 4);
        return 2;
    }

    void* runtime = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    const OrtApiBase* (*get_api_base)(void) = NULL;
    if (runtime) *(void**)&get_api_base = dlsym(runtime, "OrtGetApiBase");  // the one entry point it exports
    if (get_api_base == NULL) {
        fprintf(stderr, "run_fast: cannot load ONNX Runtime from %s: %s\n", argv[1], dlerror());
        return 1;
    }
    const OrtApiBase* base = get_api_base();
    api = (void* const*)base->GetApi(kApiVersion);
    if (api == NULL) {
        fprintf(stderr, "run_fast: this ONNX Runtime is older than 1.%d\n", kApiVersion);
        return 1;
    }
    OrtEnv* env = NULL;
    check(CALL(OrtStatus* (*)(int, const char*, OrtEnv**), kCreateEnv)(kLoggingWarning, "run_fast", &env),
          "CreateEnv");
    OrtSessionOptions* options = NULL;
    check(CALL(OrtStatus* (*)(OrtSessionOptions**), kCreateSessionOptions)(&options), "CreateSessionOptions");
    void* library_handle = NULL;  // kept loaded until the process ends: its kernels outlive the session
    check(CALL(OrtStatus* (*)(OrtSessionOptions*, const char*, void**), kRegisterCustomOpsLibrary)(
              options, library, &library_handle), "RegisterCustomOpsLibrary");
    if (!optimise) {
        check(CALL(OrtStatus* (*)(OrtSessionOptions*, int), kSetSessionGraphOptimizationLevel)(options, kDisableAll),
              "SetSessionGraphOptimizationLevel");
    }
    OrtSession* session = NULL;
    check(CALL(OrtStatus* (*)(const OrtEnv*, const char*, const OrtSessionOptions*, OrtSession**), kCreateSession)(
              env, model, options, &session), "CreateSession");

    OrtMemoryInfo* memory = NULL;
    check(CALL(OrtStatus* (*)(int, int, OrtMemoryInfo**), kCreateCpuMemoryInfo)(kArenaAllocator, kMemTypeDefault,
                                                                                 &memory), "CreateCpuMemoryInfo");
    OrtValue* input_value = NULL;
    check(CALL(OrtStatus* (*)(const OrtMemoryInfo*, void*, size_t, const int64_t*, size_t, int, OrtValue**),
               kCreateTensorWithDataAsOrtValue)(memory, input, bytes, shape, rank, kElementFloat, &input_value),
          "CreateTensorWithDataAsOrtValue");
    OrtValue* output_value = NULL;
    const OrtValue* inputs[] = {input_value};
    check(CALL(OrtStatus* (*)(OrtSession*, const void*, const char* const*, const OrtValue* const*, size_t,
                              const char* const*, size_t, OrtValue**), kRun)(
              session, NULL, &input_name, inputs, 1, &output_name, 1, &output_value), "Run");

    OrtTensorTypeAndShapeInfo* info = NULL;
    size_t produced = 0;
    float* output = NULL;
    check(CALL(OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**), kGetTensorTypeAndShape)(output_value,
                                                                                                     &info),
          "GetTensorTypeAndShape");
    check(CALL(OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*), kGetTensorShapeElementCount)(info,
                                                                                                        &produced),
          "GetTensorShapeElementCount");
    check(CALL(OrtStatus* (*)(OrtValue*, void**), kGetTensorMutableData)(output_value, (void**)&output),
          "GetTensorMutableData");
    FILE* file = fopen(output_path, "wb");
    if (!file || fwrite(output, sizeof(float), produced, file) != produced || fclose(file) != 0) {
        fprintf(stderr, "run_fast: cannot write %s\n", output_path);
        return 1;
    }
    printf("%s: wrote %zu values of %s to %s (ONNX Runtime %s)\n", model, produced, output_name, output_path,
           base->GetVersionString());

    CALL(void (*)(OrtTensorTypeAndShapeInfo*), kReleaseTensorTypeAndShapeInfo)(info);
    CALL(void (*)(OrtValue*), kReleaseValue)(output_value);
    CALL(void (*)(OrtValue*), kReleaseValue)(input_value);
    CALL(void (*)(OrtMemoryInfo*), kReleaseMemoryInfo)(memory);
    CALL(void (*)(OrtSession*), kReleaseSession)(session);
    CALL(void (*)(OrtSessionOptions*), kReleaseSessionOptions)(options);
    CALL(void (*)(OrtEnv*), kReleaseEnv)(env);
    free(input);
    return 0;
}
