// For blas.cu under HIP (see hipblas/hipblas.h): the CUDA runtime names it uses.
#pragma once
#include <hip/hip_runtime.h>
#define cudaStream_t hipStream_t
#define cudaGetLastError hipGetLastError
#define cudaSuccess hipSuccess
