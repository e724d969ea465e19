// For blas.cu under HIP (see hipblas/hipblas.h): __half and its conversions.
#pragma once
#include <hip/hip_fp16.h>
