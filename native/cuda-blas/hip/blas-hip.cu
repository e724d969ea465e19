// blas.cu compiled with hipcc as the hipBLAS subset that hipblas/hipblas.h declares (read
// that header first). The shims in this folder give blas.cu its CUDA runtime and type names;
// the macros below rename its cuBLAS API to hipBLAS's, mapping the compute type the way
// ggml's vendors/hip.h does for the HIP version at hand.

#include "hipblas/hipblas.h"

// blas.cu's own #include "cublas_v2.h" always resolves next to blas.cu, whatever the include
// path: included here first, before the renames, its #pragma once makes that one a no-op.
// Its cublas* declarations stay unused.
#include "../cublas_v2.h"

#define cublasStatus_t hipblasStatus_t
#define CUBLAS_STATUS_SUCCESS HIPBLAS_STATUS_SUCCESS
#define CUBLAS_STATUS_NOT_INITIALIZED HIPBLAS_STATUS_NOT_INITIALIZED
#define CUBLAS_STATUS_ALLOC_FAILED HIPBLAS_STATUS_ALLOC_FAILED
#define CUBLAS_STATUS_INVALID_VALUE HIPBLAS_STATUS_INVALID_VALUE
#define CUBLAS_STATUS_ARCH_MISMATCH HIPBLAS_STATUS_ARCH_MISMATCH
#define CUBLAS_STATUS_MAPPING_ERROR HIPBLAS_STATUS_MAPPING_ERROR
#define CUBLAS_STATUS_EXECUTION_FAILED HIPBLAS_STATUS_EXECUTION_FAILED
#define CUBLAS_STATUS_INTERNAL_ERROR HIPBLAS_STATUS_INTERNAL_ERROR
#define CUBLAS_STATUS_NOT_SUPPORTED HIPBLAS_STATUS_NOT_SUPPORTED

#define cublasOperation_t hipblasOperation_t
#define CUBLAS_OP_N HIPBLAS_OP_N
#define CUBLAS_OP_T HIPBLAS_OP_T
#define CUBLAS_OP_C HIPBLAS_OP_C
#define cublasFillMode_t hipblasFillMode_t
#define CUBLAS_FILL_MODE_LOWER HIPBLAS_FILL_MODE_LOWER
#define CUBLAS_FILL_MODE_UPPER HIPBLAS_FILL_MODE_UPPER
#define cublasDiagType_t hipblasDiagType_t
#define CUBLAS_DIAG_NON_UNIT HIPBLAS_DIAG_NON_UNIT
#define CUBLAS_DIAG_UNIT HIPBLAS_DIAG_UNIT
#define cublasSideMode_t hipblasSideMode_t
#define CUBLAS_SIDE_LEFT HIPBLAS_SIDE_LEFT
#define CUBLAS_SIDE_RIGHT HIPBLAS_SIDE_RIGHT
#define cublasGemmAlgo_t hipblasGemmAlgo_t
#define CUBLAS_GEMM_DEFAULT HIPBLAS_GEMM_DEFAULT
#define CUBLAS_GEMM_DEFAULT_TENSOR_OP HIPBLAS_GEMM_DEFAULT
#define cublasHandle_t hipblasHandle_t

#if HIP_VERSION >= 60500000
#define cublasComputeType_t hipblasComputeType_t
#define CUBLAS_COMPUTE_16F HIPBLAS_COMPUTE_16F
#define CUBLAS_COMPUTE_32F HIPBLAS_COMPUTE_32F
#define CUBLAS_COMPUTE_32F_FAST_16F HIPBLAS_COMPUTE_32F_FAST_16F
#define CUBLAS_COMPUTE_32F_FAST_16BF HIPBLAS_COMPUTE_32F_FAST_16BF
#define CUBLAS_COMPUTE_32F_FAST_TF32 HIPBLAS_COMPUTE_32F_FAST_TF32
#else
#define cublasComputeType_t hipblasDatatype_t
#define CUBLAS_COMPUTE_16F HIPBLAS_R_16F
#define CUBLAS_COMPUTE_32F HIPBLAS_R_32F
#define CUBLAS_COMPUTE_32F_FAST_16F HIPBLAS_R_32F
#define CUBLAS_COMPUTE_32F_FAST_16BF HIPBLAS_R_32F
#define CUBLAS_COMPUTE_32F_FAST_TF32 HIPBLAS_R_32F
#endif

#define cublasCreate hipblasCreate
#define cublasDestroy hipblasDestroy
#define cublasSetStream hipblasSetStream
#define cublasSgemm hipblasSgemm
#define cublasSgemmBatched hipblasSgemmBatched
#define cublasSgemmStridedBatched hipblasSgemmStridedBatched
#define cublasGemmEx hipblasGemmEx
#define cublasGemmBatchedEx hipblasGemmBatchedEx
#define cublasGemmStridedBatchedEx hipblasGemmStridedBatchedEx
#define cublasStrsmBatched hipblasStrsmBatched
// Not called on ggml's HIP path (hip.h makes SetMathMode a constant; the other three sit
// behind CUDA-only #ifs), so hipblas.h leaves them out; renamed only because their return
// type is now hipblasStatus_t, which would clash with cublas_v2.h's declarations.
#define cublasSetMathMode hipblasSetMathMode
#define cublasSetWorkspace hipblasSetWorkspace
#define cublasLoggerConfigure hipblasLoggerConfigure
#define cublasGetStatusString hipblasGetStatusString

#include "../blas.cu"
