// The cuBLAS calls ggml's CUDA backend makes, as plain CUDA kernels (see cublas_v2.h).
//
// GEMM: one 16x16 tile of C per thread block, tiles of op(A) and op(B) staged in shared
// memory with loads laid out so that neighbouring threads read neighbouring addresses for
// either transpose; accumulation in float whatever the input type. Batches (strided or
// through device arrays of pointers) run along the grid's z dimension. TRSM: one thread per
// independent row (right side) or column (left side) of the right-hand side, substituting in
// the order the triangle allows. This is simpler and slower than cuBLAS's tuned kernels;
// ggml sends quantized matrix products to its own MMQ/MMVQ kernels, so these carry the
// float and half products (attention without flash attention, f16/f32 weights).

#include "cublas_v2.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <new>

struct pyfile_blas_handle {
    cudaStream_t stream = nullptr;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

constexpr int TILE = 16;
constexpr unsigned MAX_GRID_Z = 65535;

template <typename T> __device__ __forceinline__ float load(const T *p, long long i);
template <> __device__ __forceinline__ float load<float>(const float *p, long long i) {
    return p[i];
}
template <> __device__ __forceinline__ float load<__half>(const __half *p, long long i) {
    return __half2float(p[i]);
}
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16 *p,
                                                                 long long i) {
    return __bfloat162float(p[i]);
}

template <typename T> __device__ __forceinline__ void store(T *p, long long i, float v);
template <> __device__ __forceinline__ void store<float>(float *p, long long i, float v) {
    p[i] = v;
}
template <> __device__ __forceinline__ void store<__half>(__half *p, long long i, float v) {
    p[i] = __float2half(v);
}
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16 *p, long long i,
                                                                 float v) {
    p[i] = __float2bfloat16(v);
}

struct Operand {
    const void *base;           // first matrix (strided batches), or nullptr
    const void *const *ptrs;    // device array of per-batch matrices, or nullptr
    long long stride;           // elements between strided batches
    int ld;
};

template <typename T> __device__ __forceinline__ const T *matrix(const Operand &o, int batch) {
    return o.ptrs ? static_cast<const T *>(o.ptrs[batch])
                  : static_cast<const T *>(o.base) + o.stride * batch;
}

// C = alpha * op(A) * op(B) + beta * C, column-major; op(A) is m x k, op(B) is k x n.
template <typename TA, typename TB, typename TC>
__global__ void gemm(int m, int n, int k, bool ta, bool tb, float alpha, Operand A, Operand B,
                     float beta, Operand C, int batches) {
    __shared__ float as[TILE][TILE + 1];  // as[l][i] = op(A)[i0 + i, l0 + l]
    __shared__ float bs[TILE][TILE + 1];  // bs[j][l] = op(B)[l0 + l, j0 + j]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i0 = blockIdx.x * TILE, j0 = blockIdx.y * TILE;
    for (int batch = blockIdx.z; batch < batches; batch += gridDim.z) {
        const TA *a = matrix<TA>(A, batch);
        const TB *b = matrix<TB>(B, batch);
        float acc = 0.0f;
        for (int l0 = 0; l0 < k; l0 += TILE) {
            if (ta) {  // op(A)[i, l] = A[l + i*lda]: tx walks l
                const int i = i0 + ty, l = l0 + tx;
                as[tx][ty] = (i < m && l < k) ? load(a, l + (long long)i * A.ld) : 0.0f;
            } else {   // op(A)[i, l] = A[i + l*lda]: tx walks i
                const int i = i0 + tx, l = l0 + ty;
                as[ty][tx] = (i < m && l < k) ? load(a, i + (long long)l * A.ld) : 0.0f;
            }
            if (tb) {  // op(B)[l, j] = B[j + l*ldb]: tx walks j
                const int l = l0 + ty, j = j0 + tx;
                bs[tx][ty] = (l < k && j < n) ? load(b, j + (long long)l * B.ld) : 0.0f;
            } else {   // op(B)[l, j] = B[l + j*ldb]: tx walks l
                const int l = l0 + tx, j = j0 + ty;
                bs[ty][tx] = (l < k && j < n) ? load(b, l + (long long)j * B.ld) : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int l = 0; l < TILE; ++l) {
                acc += as[l][tx] * bs[ty][l];
            }
            __syncthreads();
        }
        const int i = i0 + tx, j = j0 + ty;
        if (i < m && j < n) {
            TC *c = const_cast<TC *>(matrix<TC>(C, batch));
            const long long at = i + (long long)j * C.ld;
            float v = alpha * acc;
            if (beta != 0.0f) {  // beta == 0: C is not read (it may hold garbage)
                v += beta * load(c, at);
            }
            store(c, at, v);
        }
    }
}

float scalar(const void *p, cublasComputeType_t compute) {
    if (compute == CUBLAS_COMPUTE_16F) {
        return __half2float(*static_cast<const __half *>(p));
    }
    return *static_cast<const float *>(p);
}

template <typename TA, typename TB, typename TC>
cublasStatus_t launch(cublasHandle_t h, bool ta, bool tb, int m, int n, int k, float alpha,
                      const Operand &A, const Operand &B, float beta, const Operand &C,
                      int batches) {
    const dim3 block(TILE, TILE);
    const dim3 grid((m + TILE - 1) / TILE, (n + TILE - 1) / TILE,
                    batches < (int)MAX_GRID_Z ? batches : MAX_GRID_Z);
    if (grid.y > MAX_GRID_Z) {
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    gemm<TA, TB, TC><<<grid, block, 0, h->stream>>>(m, n, k, ta, tb, alpha, A, B, beta, C,
                                                     batches);
    return cudaGetLastError() == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                             : CUBLAS_STATUS_EXECUTION_FAILED;
}

template <typename TAB>
cublasStatus_t by_c(cublasHandle_t h, cudaDataType_t tc, bool ta, bool tb, int m, int n, int k,
                    float alpha, const Operand &A, const Operand &B, float beta,
                    const Operand &C, int batches) {
    switch (tc) {
    case CUDA_R_32F: return launch<TAB, TAB, float>(h, ta, tb, m, n, k, alpha, A, B, beta, C, batches);
    case CUDA_R_16F: return launch<TAB, TAB, __half>(h, ta, tb, m, n, k, alpha, A, B, beta, C, batches);
    case CUDA_R_16BF: return launch<TAB, TAB, __nv_bfloat16>(h, ta, tb, m, n, k, alpha, A, B, beta, C, batches);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t gemm_any(cublasHandle_t h, cublasOperation_t opa, cublasOperation_t opb, int m,
                        int n, int k, float alpha, cudaDataType_t tab, cudaDataType_t tb_type,
                        const Operand &A, const Operand &B, float beta, cudaDataType_t tc,
                        const Operand &C, int batches) {
    if (h == nullptr) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (m < 0 || n < 0 || k < 0 || batches < 0 || opa == CUBLAS_OP_C || opb == CUBLAS_OP_C) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m == 0 || n == 0 || batches == 0) {
        return CUBLAS_STATUS_SUCCESS;
    }
    if (tab != tb_type) {  // ggml never mixes input types
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    const bool ta = opa == CUBLAS_OP_T, tb = opb == CUBLAS_OP_T;
    switch (tab) {
    case CUDA_R_32F: return by_c<float>(h, tc, ta, tb, m, n, k, alpha, A, B, beta, C, batches);
    case CUDA_R_16F: return by_c<__half>(h, tc, ta, tb, m, n, k, alpha, A, B, beta, C, batches);
    case CUDA_R_16BF: return by_c<__nv_bfloat16>(h, tc, ta, tb, m, n, k, alpha, A, B, beta, C, batches);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

// Solve op(T) * X = alpha * B (left) or X * op(T) = alpha * B (right); X overwrites B.
__global__ void trsm(bool left, bool upper, bool trans, bool unit, int m, int n, float alpha,
                     const float *const *tp, int ldt, float *const *bp, int ldb, int batches) {
    const int lines = left ? n : m;  // independent columns (left) or rows (right) of X
    const long long total = (long long)lines * batches;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int batch = (int)(t / lines), line = (int)(t % lines);
        const float *T = tp[batch];
        float *B = bp[batch];
        const int size = left ? m : n;  // order of the triangle
        // op(T)[r, c] and whether op(T) is upper triangular
        auto at = [&](int r, int c) {
            return trans ? T[c + (long long)r * ldt] : T[r + (long long)c * ldt];
        };
        const bool up = upper != trans;
        // X element number p of this line (a row index for left, a column index for right)
        auto x = [&](int p) -> float & {
            return left ? B[p + (long long)line * ldb] : B[line + (long long)p * ldb];
        };
        // left:  sum_q op(T)[p, q] x[q] = alpha b[p]; needs x[q] for q after p when upper.
        // right: sum_q x[q] op(T)[q, p] = alpha b[p]; needs x[q] for q before p when upper.
        const bool forward = left ? !up : up;
        for (int s = 0; s < size; ++s) {
            const int p = forward ? s : size - 1 - s;
            float v = alpha * x(p);
            for (int s2 = 0; s2 < s; ++s2) {
                const int q = forward ? s2 : size - 1 - s2;
                v -= (left ? at(p, q) : at(q, p)) * x(q);
            }
            x(p) = unit ? v : v / at(p, p);
        }
    }
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    if (handle == nullptr) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    *handle = new (std::nothrow) pyfile_blas_handle();
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (handle == nullptr) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (handle == nullptr) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *, size_t) {
    return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t cublasLoggerConfigure(int, int, int, const char *) {
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED (pyfile's small BLAS)";
    }
    return "unknown cuBLAS status";
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t opa, cublasOperation_t opb,
                           int m, int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc) {
    return gemm_any(h, opa, opb, m, n, k, *alpha, CUDA_R_32F, CUDA_R_32F,
                    {A, nullptr, 0, lda}, {B, nullptr, 0, ldb}, *beta, CUDA_R_32F,
                    {C, nullptr, 0, ldc}, 1);
}

cublasStatus_t cublasSgemmBatched(cublasHandle_t h, cublasOperation_t opa,
                                  cublasOperation_t opb, int m, int n, int k,
                                  const float *alpha, const float *const Aarray[], int lda,
                                  const float *const Barray[], int ldb, const float *beta,
                                  float *const Carray[], int ldc, int batches) {
    return gemm_any(h, opa, opb, m, n, k, *alpha, CUDA_R_32F, CUDA_R_32F,
                    {nullptr, reinterpret_cast<const void *const *>(Aarray), 0, lda},
                    {nullptr, reinterpret_cast<const void *const *>(Barray), 0, ldb}, *beta,
                    CUDA_R_32F, {nullptr, reinterpret_cast<const void *const *>(Carray), 0, ldc},
                    batches);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t opa,
                                         cublasOperation_t opb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long int sa, const float *B, int ldb,
                                         long long int sb, const float *beta, float *C, int ldc,
                                         long long int sc, int batches) {
    return gemm_any(h, opa, opb, m, n, k, *alpha, CUDA_R_32F, CUDA_R_32F, {A, nullptr, sa, lda},
                    {B, nullptr, sb, ldb}, *beta, CUDA_R_32F, {C, nullptr, sc, ldc}, batches);
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t opa, cublasOperation_t opb,
                            int m, int n, int k, const void *alpha, const void *A,
                            cudaDataType_t ta, int lda, const void *B, cudaDataType_t tb, int ldb,
                            const void *beta, void *C, cudaDataType_t tc, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
    return gemm_any(h, opa, opb, m, n, k, scalar(alpha, compute), ta, tb, {A, nullptr, 0, lda},
                    {B, nullptr, 0, ldb}, scalar(beta, compute), tc, {C, nullptr, 0, ldc}, 1);
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t opa,
                                   cublasOperation_t opb, int m, int n, int k,
                                   const void *alpha, const void *const Aarray[],
                                   cudaDataType_t ta, int lda, const void *const Barray[],
                                   cudaDataType_t tb, int ldb, const void *beta,
                                   void *const Carray[], cudaDataType_t tc, int ldc,
                                   int batches, cublasComputeType_t compute, cublasGemmAlgo_t) {
    return gemm_any(h, opa, opb, m, n, k, scalar(alpha, compute), ta, tb,
                    {nullptr, Aarray, 0, lda}, {nullptr, Barray, 0, ldb}, scalar(beta, compute),
                    tc, {nullptr, reinterpret_cast<const void *const *>(Carray), 0, ldc},
                    batches);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t opa,
                                          cublasOperation_t opb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType_t ta,
                                          int lda, long long int sa, const void *B,
                                          cudaDataType_t tb, int ldb, long long int sb,
                                          const void *beta, void *C, cudaDataType_t tc, int ldc,
                                          long long int sc, int batches,
                                          cublasComputeType_t compute, cublasGemmAlgo_t) {
    return gemm_any(h, opa, opb, m, n, k, scalar(alpha, compute), ta, tb, {A, nullptr, sa, lda},
                    {B, nullptr, sb, ldb}, scalar(beta, compute), tc, {C, nullptr, sc, ldc},
                    batches);
}

cublasStatus_t cublasStrsmBatched(cublasHandle_t h, cublasSideMode_t side, cublasFillMode_t uplo,
                                  cublasOperation_t trans, cublasDiagType_t diag, int m, int n,
                                  const float *alpha, const float *const A[], int lda,
                                  float *const B[], int ldb, int batches) {
    if (h == nullptr) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (m < 0 || n < 0 || batches < 0 || trans == CUBLAS_OP_C) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m == 0 || n == 0 || batches == 0) {
        return CUBLAS_STATUS_SUCCESS;
    }
    const bool left = side == CUBLAS_SIDE_LEFT;
    const long long total = (long long)(left ? n : m) * batches;
    const int threads = 128;
    const long long blocks = (total + threads - 1) / threads;
    trsm<<<(unsigned)(blocks < 65535 ? blocks : 65535), threads, 0, h->stream>>>(
        left, uplo == CUBLAS_FILL_MODE_UPPER, trans == CUBLAS_OP_T, diag == CUBLAS_DIAG_UNIT, m,
        n, *alpha, A, lda, B, ldb, batches);
    return cudaGetLastError() == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                             : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"
