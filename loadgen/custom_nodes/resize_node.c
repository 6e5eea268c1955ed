/* A custom node library with OVMS's C ABI (custom_node_interface.h), built by the test suite with gcc.
 *
 * Input  "image"    FP32 [1, C, H, W] (H and W any size: dims 0 in the inputs info)
 * Output "resized"  FP32 [1, C, target_height, target_width]  (nearest neighbour)
 * Output "original" FP32 [1, C, H, W]                         (the input, passed on)
 * Params: target_height, target_width (required); fail_below (optional: execute fails with 3 when the
 * first pixel is below it, so tests can see a library failure); break_contract (optional: "bytes",
 * "name" or "precision" makes the first output lie about its size, name or precision).
 *
 * The declarations are written here from OVMS's documented ABI, so the test exercises the layout the
 * gateway declares with ctypes against a second, independent declaration.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef enum { UNSPECIFIED, FP32, FP16, U8, I8, I16, U16, I32, FP64, I64 } CustomNodeTensorPrecision;

struct CustomNodeTensor {
    const char* name;
    uint8_t* data;
    uint64_t dataBytes;
    uint64_t* dims;
    uint64_t dimsCount;
    CustomNodeTensorPrecision precision;
};

struct CustomNodeTensorInfo {
    const char* name;
    uint64_t* dims;
    uint64_t dimsCount;
    CustomNodeTensorPrecision precision;
};

struct CustomNodeParam {
    const char *key, *value;
};

static int live_states = 0; /* initialize - deinitialize, read by the test through live_count() */

struct state {
    int initialized;
};

static const char* param(const struct CustomNodeParam* params, int count, const char* key) {
    for (int i = 0; i < count; i++)
        if (strcmp(params[i].key, key) == 0) return params[i].value;
    return NULL;
}

static int int_param(const struct CustomNodeParam* params, int count, const char* key, int fallback) {
    const char* value = param(params, count, key);
    return value ? atoi(value) : fallback;
}

int live_count(void) { return live_states; }

int initialize(void** manager, const struct CustomNodeParam* params, int paramsCount) {
    if (int_param(params, paramsCount, "target_height", 0) <= 0 ||
        int_param(params, paramsCount, "target_width", 0) <= 0)
        return 1;
    struct state* s = malloc(sizeof(struct state));
    s->initialized = 1;
    *manager = s;
    live_states++;
    return 0;
}

int deinitialize(void* manager) {
    if (manager) {
        free(manager);
        live_states--;
    }
    return 0;
}

static void fill_info(struct CustomNodeTensorInfo* info, const char* name, uint64_t c, uint64_t h, uint64_t w) {
    info->name = name;
    info->dimsCount = 4;
    info->dims = malloc(4 * sizeof(uint64_t));
    info->dims[0] = 1;
    info->dims[1] = c;
    info->dims[2] = h;
    info->dims[3] = w;
    info->precision = FP32;
}

int getInputsInfo(struct CustomNodeTensorInfo** info, int* infoCount, const struct CustomNodeParam* params,
                  int paramsCount, void* manager) {
    *infoCount = 1;
    *info = malloc(sizeof(struct CustomNodeTensorInfo));
    fill_info(&(*info)[0], "image", 3, 0, 0);
    return 0;
}

int getOutputsInfo(struct CustomNodeTensorInfo** info, int* infoCount, const struct CustomNodeParam* params,
                   int paramsCount, void* manager) {
    *infoCount = 2;
    *info = malloc(2 * sizeof(struct CustomNodeTensorInfo));
    fill_info(&(*info)[0], "resized", 3, int_param(params, paramsCount, "target_height", 0),
              int_param(params, paramsCount, "target_width", 0));
    fill_info(&(*info)[1], "original", 3, 0, 0);
    return 0;
}

static void set_output(struct CustomNodeTensor* out, const char* name, float* data, uint64_t c, uint64_t h,
                       uint64_t w) {
    out->name = name;
    out->data = (uint8_t*)data;
    out->dataBytes = c * h * w * sizeof(float);
    out->dimsCount = 4;
    out->dims = malloc(4 * sizeof(uint64_t));
    out->dims[0] = 1;
    out->dims[1] = c;
    out->dims[2] = h;
    out->dims[3] = w;
    out->precision = FP32;
}

int execute(const struct CustomNodeTensor* inputs, int inputsCount, struct CustomNodeTensor** outputs,
            int* outputsCount, const struct CustomNodeParam* params, int paramsCount, void* manager) {
    if (manager == NULL || inputsCount != 1 || strcmp(inputs[0].name, "image") != 0) return 1;
    const struct CustomNodeTensor* image = &inputs[0];
    if (image->precision != FP32 || image->dimsCount != 4 || image->dims[0] != 1) return 2;
    uint64_t c = image->dims[1], h = image->dims[2], w = image->dims[3];
    if (image->dataBytes != c * h * w * sizeof(float)) return 2;
    const float* pixels = (const float*)image->data;
    const char* fail_below = param(params, paramsCount, "fail_below");
    if (fail_below && h * w > 0 && pixels[0] < atof(fail_below)) return 3;
    uint64_t th = int_param(params, paramsCount, "target_height", 0);
    uint64_t tw = int_param(params, paramsCount, "target_width", 0);

    float* resized = malloc(c * th * tw * sizeof(float));
    for (uint64_t ch = 0; ch < c; ch++)
        for (uint64_t y = 0; y < th; y++)
            for (uint64_t x = 0; x < tw; x++)
                resized[(ch * th + y) * tw + x] = pixels[(ch * h + y * h / th) * w + x * w / tw];
    float* original = malloc(c * h * w * sizeof(float));
    memcpy(original, pixels, c * h * w * sizeof(float));

    *outputsCount = 2;
    *outputs = malloc(2 * sizeof(struct CustomNodeTensor));
    set_output(&(*outputs)[0], "resized", resized, c, th, tw);
    set_output(&(*outputs)[1], "original", original, c, h, w);
    const char* broken = param(params, paramsCount, "break_contract");
    if (broken && strcmp(broken, "bytes") == 0) (*outputs)[0].dataBytes -= 4;
    if (broken && strcmp(broken, "name") == 0) (*outputs)[0].name = "surprise";
    if (broken && strcmp(broken, "precision") == 0) (*outputs)[0].precision = (CustomNodeTensorPrecision)42;
    return 0;
}

static int released = 0; /* buffers given back, read by the test through released_count() */

int released_count(void) { return released; }

int release(void* ptr, void* manager) {
    free(ptr);
    released++;
    return 0;
}
