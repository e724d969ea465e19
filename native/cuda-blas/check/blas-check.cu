// A C entry point over pyfile's BLAS (../blas.cu) for checking it against numpy on a real GPU
// (check.py loads it with ctypes; scripts/device-gpu-check.sh builds and runs both).
// Matrices arrive as float, column-major, batches one after another; they are converted to
// the asked type, copied to the GPU, multiplied through the same cublas* entry points ggml
// calls, and the result comes back as float.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <vector>

#include "cublas_v2.h"

namespace {

size_t type_size(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

std::vector<unsigned char> to_type(const float *x, size_t n, cudaDataType_t t) {
    std::vector<unsigned char> out(n * type_size(t));
    for (size_t i = 0; i < n; i++) {
        if (t == CUDA_R_32F) {
            reinterpret_cast<float *>(out.data())[i] = x[i];
        } else if (t == CUDA_R_16F) {
            reinterpret_cast<__half *>(out.data())[i] = __float2half(x[i]);
        } else {
            reinterpret_cast<__nv_bfloat16 *>(out.data())[i] = __float2bfloat16(x[i]);
        }
    }
    return out;
}

float from_type(const unsigned char *p, size_t i, cudaDataType_t t) {
    if (t == CUDA_R_32F) return reinterpret_cast<const float *>(p)[i];
    if (t == CUDA_R_16F) return __half2float(reinterpret_cast<const __half *>(p)[i]);
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(p)[i]);
}

void *upload(const std::vector<unsigned char> &host) {
    void *dev = nullptr;
    if (cudaMalloc(&dev, host.size() ? host.size() : 1) != cudaSuccess) return nullptr;
    cudaMemcpy(dev, host.data(), host.size(), cudaMemcpyHostToDevice);
    return dev;
}

}  // namespace

extern "C" {

// api: 0 plain (Sgemm / GemmEx, looped per batch), 1 strided batched, 2 pointer-array
// batched. ab/c: cudaDataType_t of A and B / of C. compute: cublasComputeType_t (16F takes
// half scalars). lda/ldb/ldc may exceed the rows (padding). Returns the cublasStatus_t, or
// 100 + a CUDA error.
int blas_check_gemm(int api, int ab, int c, int compute, int ta, int tb, int m, int n, int k,
                    int batch, int lda, int ldb, int ldc, float alpha, float beta,
                    const float *A, const float *B, float *C) {
    const cudaDataType_t tab = (cudaDataType_t)ab, tc = (cudaDataType_t)c;
    const size_t sa = (size_t)lda * (ta ? m : k), sb = (size_t)ldb * (tb ? k : n),
                 sc = (size_t)ldc * n;
    std::vector<unsigned char> ha = to_type(A, sa * batch, tab), hb = to_type(B, sb * batch, tab),
                               hc = to_type(C, sc * batch, tc);
    void *da = upload(ha), *db = upload(hb), *dc = upload(hc);
    cublasHandle_t h = nullptr;
    cublasCreate(&h);
    __half ha16 = __float2half(alpha), hb16 = __float2half(beta);
    const void *pa = compute == CUBLAS_COMPUTE_16F ? (const void *)&ha16 : (const void *)&alpha;
    const void *pb = compute == CUBLAS_COMPUTE_16F ? (const void *)&hb16 : (const void *)&beta;
    const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const size_t ea = type_size(tab), ec = type_size(tc);
    const cublasComputeType_t ct = (cublasComputeType_t)compute;
    int status = 0;
    if (api == 0) {
        for (int i = 0; i < batch && status == 0; i++) {
            const char *a = (const char *)da + i * sa * ea, *b = (const char *)db + i * sb * ea;
            char *cc = (char *)dc + i * sc * ec;
            status = (tab == CUDA_R_32F && tc == CUDA_R_32F && ct == CUBLAS_COMPUTE_32F)
                ? cublasSgemm(h, oa, ob, m, n, k, &alpha, (const float *)a, lda,
                              (const float *)b, ldb, &beta, (float *)cc, ldc)
                : cublasGemmEx(h, oa, ob, m, n, k, pa, a, tab, lda, b, tab, ldb, pb, cc, tc, ldc,
                               ct, CUBLAS_GEMM_DEFAULT);
        }
    } else if (api == 1) {
        status = cublasGemmStridedBatchedEx(h, oa, ob, m, n, k, pa, da, tab, lda, sa, db, tab,
                                            ldb, sb, pb, dc, tc, ldc, sc, batch, ct,
                                            CUBLAS_GEMM_DEFAULT);
    } else {
        std::vector<const void *> pas(batch), pbs(batch);
        std::vector<void *> pcs(batch);
        for (int i = 0; i < batch; i++) {
            pas[i] = (const char *)da + i * sa * ea;
            pbs[i] = (const char *)db + i * sb * ea;
            pcs[i] = (char *)dc + i * sc * ec;
        }
        void **dp = nullptr;
        cudaMalloc(&dp, 3 * batch * sizeof(void *));
        cudaMemcpy(dp, pas.data(), batch * sizeof(void *), cudaMemcpyHostToDevice);
        cudaMemcpy(dp + batch, pbs.data(), batch * sizeof(void *), cudaMemcpyHostToDevice);
        cudaMemcpy(dp + 2 * batch, pcs.data(), batch * sizeof(void *), cudaMemcpyHostToDevice);
        status = cublasGemmBatchedEx(h, oa, ob, m, n, k, pa, (const void *const *)dp, tab, lda,
                                     (const void *const *)(dp + batch), tab, ldb, pb,
                                     (void *const *)(dp + 2 * batch), tc, ldc, batch, ct,
                                     CUBLAS_GEMM_DEFAULT);
        cudaDeviceSynchronize();
        cudaFree(dp);
    }
    cudaError_t e = cudaDeviceSynchronize();
    if (status == 0 && e != cudaSuccess) status = 100 + (int)e;
    cudaMemcpy(hc.data(), dc, hc.size(), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < sc * batch; i++) C[i] = from_type(hc.data(), i, tc);
    cublasDestroy(h);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    return status;
}

// Batched triangular solve in place (what ggml's solve_tri calls): B := alpha * op(A)^-1 B
// (left) or alpha * B op(A)^-1 (right); A is m x m (left) or n x n (right), lda = its order.
int blas_check_trsm(int left, int upper, int trans, int unit, int m, int n, int batch,
                    float alpha, const float *A, float *B) {
    const int order = left ? m : n;
    const size_t sa = (size_t)order * order, sb = (size_t)m * n;
    std::vector<unsigned char> ha = to_type(A, sa * batch, CUDA_R_32F),
                               hb = to_type(B, sb * batch, CUDA_R_32F);
    float *da = (float *)upload(ha), *db = (float *)upload(hb);
    std::vector<const float *> pas(batch);
    std::vector<float *> pbs(batch);
    for (int i = 0; i < batch; i++) {
        pas[i] = da + i * sa;
        pbs[i] = db + i * sb;
    }
    void **dp = nullptr;
    cudaMalloc(&dp, 2 * batch * sizeof(void *));
    cudaMemcpy(dp, pas.data(), batch * sizeof(void *), cudaMemcpyHostToDevice);
    cudaMemcpy(dp + batch, pbs.data(), batch * sizeof(void *), cudaMemcpyHostToDevice);
    cublasHandle_t h = nullptr;
    cublasCreate(&h);
    int status = cublasStrsmBatched(
        h, left ? CUBLAS_SIDE_LEFT : CUBLAS_SIDE_RIGHT,
        upper ? CUBLAS_FILL_MODE_UPPER : CUBLAS_FILL_MODE_LOWER, trans ? CUBLAS_OP_T : CUBLAS_OP_N,
        unit ? CUBLAS_DIAG_UNIT : CUBLAS_DIAG_NON_UNIT, m, n, &alpha,
        (const float *const *)dp, order, (float *const *)(dp + batch), m, batch);
    cudaError_t e = cudaDeviceSynchronize();
    if (status == 0 && e != cudaSuccess) status = 100 + (int)e;
    cudaMemcpy(B, db, sb * batch * sizeof(float), cudaMemcpyDeviceToHost);
    cublasDestroy(h);
    cudaFree(dp);
    cudaFree(da);
    cudaFree(db);
    return status;
}

}  // extern "C"
