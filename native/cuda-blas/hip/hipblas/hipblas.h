/*
 * The part of hipBLAS's API that ggml's HIP backend calls (through the cublas* -> hipblas*
 * names of ggml-cuda/vendors/hip.h), implemented by ../blas-hip.cu, which is blas.cu (the
 * plain-kernel cuBLAS of the CUDA variant) compiled with hipcc: a HIP variant then needs no
 * libhipblas/librocblas on the target, only the HIP runtime (libamdhip64.so).
 *
 * Put native/cuda-blas/hip first on the include path of the ggml-hip target so that ggml's
 * `#include <hipblas/hipblas.h>` finds this header; compile ../blas-hip.cu into that target.
 * The shims next to blas-hip.cu (cuda_runtime.h, library_types.h, cuda_fp16.h, cuda_bf16.h)
 * are only for blas.cu; ggml's HIP build never includes those names.
 *
 * hip.h changes types at HIP 6.5 and this header follows it:
 *   - data types (CUDA_R_* -> HIPBLAS_R_*) are HIP's hipDataType in both branches: hip.h
 *     types them hipDataType from 6.5 on and hipblasDatatype_t before, which is the same
 *     type here, so HIPBLAS_R_* are HIP_R_* either way;
 *   - the compute type of the *GemmEx functions (CUBLAS_COMPUTE_* / cublasComputeType_t) is
 *     hipblasComputeType_t (HIPBLAS_COMPUTE_*) from 6.5 on, and before 6.5 a data type
 *     (hip.h maps CUBLAS_COMPUTE_32F to HIPBLAS_R_32F), as hipBLAS's own API was.
 * blas-hip.cu maps blas.cu's cuBLAS names the way hip.h does, and since it includes this
 * header, the compiler checks that blas.cu's definitions match these declarations.
 * Enum values equal cublas_v2.h's (and hipDataType's equal CUDA's), so a cuBLAS name that
 * blas-hip.cu failed to map would still mean the same thing.
 */
#pragma once

#include <hip/hip_runtime_api.h>
#include <hip/hip_version.h>
#include <hip/library_types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    HIPBLAS_STATUS_SUCCESS = 0,
    HIPBLAS_STATUS_NOT_INITIALIZED = 1,
    HIPBLAS_STATUS_ALLOC_FAILED = 3,
    HIPBLAS_STATUS_INVALID_VALUE = 7,
    HIPBLAS_STATUS_ARCH_MISMATCH = 8,
    HIPBLAS_STATUS_MAPPING_ERROR = 11,
    HIPBLAS_STATUS_EXECUTION_FAILED = 13,
    HIPBLAS_STATUS_INTERNAL_ERROR = 14,
    HIPBLAS_STATUS_NOT_SUPPORTED = 15,
} hipblasStatus_t;

typedef enum { HIPBLAS_OP_N = 0, HIPBLAS_OP_T = 1, HIPBLAS_OP_C = 2 } hipblasOperation_t;
typedef enum { HIPBLAS_FILL_MODE_LOWER = 0, HIPBLAS_FILL_MODE_UPPER = 1 } hipblasFillMode_t;
typedef enum { HIPBLAS_DIAG_NON_UNIT = 0, HIPBLAS_DIAG_UNIT = 1 } hipblasDiagType_t;
typedef enum { HIPBLAS_SIDE_LEFT = 0, HIPBLAS_SIDE_RIGHT = 1 } hipblasSideMode_t;
typedef enum { HIPBLAS_GEMM_DEFAULT = -1 } hipblasGemmAlgo_t;
typedef enum {
    HIPBLAS_COMPUTE_16F = 64,
    HIPBLAS_COMPUTE_32F = 68,
    HIPBLAS_COMPUTE_32F_FAST_16F = 74,
    HIPBLAS_COMPUTE_32F_FAST_16BF = 75,
    HIPBLAS_COMPUTE_32F_FAST_TF32 = 77,
} hipblasComputeType_t;

typedef hipDataType hipblasDatatype_t;
#define HIPBLAS_R_16F HIP_R_16F
#define HIPBLAS_R_32F HIP_R_32F
#define HIPBLAS_R_16B HIP_R_16BF

#if HIP_VERSION >= 60500000
typedef hipblasComputeType_t pyfile_hipblas_compute_t;
#else
typedef hipblasDatatype_t pyfile_hipblas_compute_t;
#endif

typedef struct pyfile_blas_handle *hipblasHandle_t;  // the same handle as cublas_v2.h's

hipblasStatus_t hipblasCreate(hipblasHandle_t *handle);
hipblasStatus_t hipblasDestroy(hipblasHandle_t handle);
hipblasStatus_t hipblasSetStream(hipblasHandle_t handle, hipStream_t stream);

// Strides are long long (blas.cu's type), not hipBLAS's int64_t: ggml passes int64_t either way.
hipblasStatus_t hipblasSgemm(hipblasHandle_t handle, hipblasOperation_t transa,
                             hipblasOperation_t transb, int m, int n, int k, const float *alpha,
                             const float *A, int lda, const float *B, int ldb, const float *beta,
                             float *C, int ldc);
hipblasStatus_t hipblasSgemmBatched(hipblasHandle_t handle, hipblasOperation_t transa,
                                    hipblasOperation_t transb, int m, int n, int k,
                                    const float *alpha, const float *const Aarray[], int lda,
                                    const float *const Barray[], int ldb, const float *beta,
                                    float *const Carray[], int ldc, int batchCount);
hipblasStatus_t hipblasSgemmStridedBatched(hipblasHandle_t handle, hipblasOperation_t transa,
                                           hipblasOperation_t transb, int m, int n, int k,
                                           const float *alpha, const float *A, int lda,
                                           long long int strideA, const float *B, int ldb,
                                           long long int strideB, const float *beta, float *C,
                                           int ldc, long long int strideC, int batchCount);
hipblasStatus_t hipblasGemmEx(hipblasHandle_t handle, hipblasOperation_t transa,
                              hipblasOperation_t transb, int m, int n, int k, const void *alpha,
                              const void *A, hipblasDatatype_t Atype, int lda, const void *B,
                              hipblasDatatype_t Btype, int ldb, const void *beta, void *C,
                              hipblasDatatype_t Ctype, int ldc,
                              pyfile_hipblas_compute_t computeType, hipblasGemmAlgo_t algo);
hipblasStatus_t hipblasGemmBatchedEx(hipblasHandle_t handle, hipblasOperation_t transa,
                                     hipblasOperation_t transb, int m, int n, int k,
                                     const void *alpha, const void *const Aarray[],
                                     hipblasDatatype_t Atype, int lda, const void *const Barray[],
                                     hipblasDatatype_t Btype, int ldb, const void *beta,
                                     void *const Carray[], hipblasDatatype_t Ctype, int ldc,
                                     int batchCount, pyfile_hipblas_compute_t computeType,
                                     hipblasGemmAlgo_t algo);
hipblasStatus_t hipblasGemmStridedBatchedEx(hipblasHandle_t handle, hipblasOperation_t transa,
                                            hipblasOperation_t transb, int m, int n, int k,
                                            const void *alpha, const void *A,
                                            hipblasDatatype_t Atype, int lda,
                                            long long int strideA, const void *B,
                                            hipblasDatatype_t Btype, int ldb,
                                            long long int strideB, const void *beta, void *C,
                                            hipblasDatatype_t Ctype, int ldc,
                                            long long int strideC, int batchCount,
                                            pyfile_hipblas_compute_t computeType,
                                            hipblasGemmAlgo_t algo);
hipblasStatus_t hipblasStrsmBatched(hipblasHandle_t handle, hipblasSideMode_t side,
                                    hipblasFillMode_t uplo, hipblasOperation_t trans,
                                    hipblasDiagType_t diag, int m, int n, const float *alpha,
                                    const float *const A[], int lda, float *const B[], int ldb,
                                    int batchCount);

#ifdef __cplusplus
}
#endif
