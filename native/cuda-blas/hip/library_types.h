// For blas.cu under HIP (see hipblas/hipblas.h): CUDA's data types are HIP's, same values.
#pragma once
#include <hip/library_types.h>
#define cudaDataType_t hipDataType
#define CUDA_R_16F HIP_R_16F
#define CUDA_R_32F HIP_R_32F
#define CUDA_R_16BF HIP_R_16BF
