// For blas.cu under HIP (see hipblas/hipblas.h): bfloat16 and its conversions.
#pragma once
#include <hip/hip_bf16.h>
typedef __hip_bfloat16 __nv_bfloat16;
