/* A stand-in for the NVIDIA driver library (libcuda.so.1) for machines without an NVIDIA
 * GPU: it answers the calls pyfile's driver probe makes with the driver version and the one
 * GPU that the environment describes, so the launcher's checks can be tested.
 *   FAKE_CUDA_VERSION  the CUDA version the "driver" supports (12020 = 12.2; default 13000)
 *   FAKE_CUDA_CC       the GPU's compute capability, major*10+minor (default 86)
 *   FAKE_CUDA_LOG      a file that gets one line per cuInit call (who asked the driver)
 * Anything else (what the CUDA runtime inside ggml's CUDA backend looks up) is absent, as
 * on a machine whose driver is broken. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}

int cuInit(unsigned flags) {
    const char *log = getenv("FAKE_CUDA_LOG");
    (void)flags;
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            fputs("cuInit\n", f);
            fclose(f);
        }
    }
    return 0;
}

int cuDriverGetVersion(int *version) {
    *version = env_int("FAKE_CUDA_VERSION", 13000);
    return 0;
}

int cuDeviceGetCount(int *count) {
    *count = 1;
    return 0;
}

int cuDeviceGet(int *device, int ordinal) {
    *device = ordinal;
    return 0;
}

int cuDeviceGetName(char *name, int len, int device) {
    (void)device;
    snprintf(name, (size_t)len, "Fake GPU");
    return 0;
}

int cuDeviceGetAttribute(int *value, int attribute, int device) {
    int cc = env_int("FAKE_CUDA_CC", 86);
    (void)device;
    switch (attribute) {
    case 75: *value = cc / 10; break;  /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
    case 76: *value = cc % 10; break;  /* ..._MINOR */
    default: *value = 0;
    }
    return 0;
}

int cuDeviceTotalMem_v2(size_t *bytes, int device) {
    (void)device;
    *bytes = (size_t)8 << 30;
    return 0;
}
