"""pyfile's BLAS (native/cuda-blas/blas.cu) against numpy on a real GPU: random shapes
(odd sizes, padding, transposes, batches), every type pair ggml asks for, the three call
forms (plain, strided batched, pointer-array batched) and the batched triangular solve.

    python3 check.py LIBBLASCHECK.so [--cases N] [--seed S]

The reference is float64 numpy on the inputs rounded to the asked type; a case fails when
its largest error passes the type's tolerance, relative to the largest reference value.
Prints one line per kind and exits 1 when any case failed.
"""

import argparse
import ctypes
import sys

import numpy as np

F32, F16, BF16 = 0, 2, 14  # cudaDataType_t
C16F, C32F = 64, 68  # cublasComputeType_t
#: (A/B type, C type, compute, tolerance relative to the largest |reference|)
KINDS = {
    "f32 x f32 -> f32": (F32, F32, C32F, 2e-5),
    "f16 x f16 -> f32": (F16, F32, C32F, 2e-5),
    "f16 x f16 -> f16 (f32 compute)": (F16, F16, C32F, 2e-3),
    "f16 x f16 -> f16 (f16 compute)": (F16, F16, C16F, 1e-2),
    "bf16 x bf16 -> f32": (BF16, F32, C32F, 2e-5),
}
API = {0: "plain", 1: "strided", 2: "pointer array"}


def rounded(x, t):
    if t == F16:
        return x.astype(np.float16).astype(np.float64)
    if t == BF16:  # round to nearest even on the top 16 bits
        bits = x.astype(np.float32).view(np.uint32)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        return bits.view(np.float32).astype(np.float64)
    return x.astype(np.float32).astype(np.float64)


def ptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def gemm_case(lib, rng, kind):
    ab, c, compute, tol = KINDS[kind]
    m, n, k = (int(v) for v in rng.choice([1, 2, 3, 7, 16, 31, 32, 33, 64, 65, 127, 128, 257,
                                           300, 513], 3))
    batch, api = int(rng.integers(1, 5)), int(rng.integers(0, 3))
    ta, tb = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    pad = int(rng.choice([0, 0, 3]))
    ra, ca = (k, m) if ta else (m, k)  # stored shape of A (column-major)
    rb, cb = (n, k) if tb else (k, n)
    lda, ldb, ldc = ra + pad, rb + pad, m + pad
    alpha, beta = float(rng.choice([1.0, 0.5])), float(rng.choice([0.0, 1.0, -0.5]))
    A = rng.standard_normal((batch, ca, lda)).astype(np.float32)  # column-major: [col][row]
    B = rng.standard_normal((batch, cb, ldb)).astype(np.float32)
    C = rng.standard_normal((batch, n, ldc)).astype(np.float32)
    want = np.empty((batch, m, n))
    for i in range(batch):
        a = rounded(A[i, :, :ra].T, ab)
        b = rounded(B[i, :, :rb].T, ab)
        opa, opb = (a.T if ta else a), (b.T if tb else b)
        want[i] = alpha * (opa @ opb) + beta * rounded(C[i, :, :m].T, c)
    status = lib.blas_check_gemm(api, ab, c, compute, ta, tb, m, n, k, batch, lda, ldb, ldc,
                                 ctypes.c_float(alpha), ctypes.c_float(beta), ptr(A), ptr(B),
                                 ptr(C))
    got = np.stack([C[i, :, :m].T for i in range(batch)]).astype(np.float64)
    err = float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))
    shape = f"{API[api]} m={m} n={n} k={k} batch={batch} ta={ta} tb={tb} pad={pad}"
    return status, err, tol, shape


def trsm_case(lib, rng):
    m, n = (int(v) for v in rng.choice([1, 2, 5, 16, 33, 64, 100], 2))
    batch = int(rng.integers(1, 4))
    left, upper, trans, unit = (int(rng.integers(0, 2)) for _ in range(4))
    order = m if left else n
    alpha = float(rng.choice([1.0, 2.0]))
    A = np.zeros((batch, order, order), np.float32)
    for i in range(batch):  # well conditioned: a strong diagonal
        t = rng.standard_normal((order, order)) * 0.1 + np.eye(order) * 2.0
        A[i] = (np.triu(t) if upper else np.tril(t)).T  # stored column-major
    B = rng.standard_normal((batch, n, m)).astype(np.float32)
    want = np.empty((batch, m, n))
    for i in range(batch):
        a = A[i].T.astype(np.float64)
        if unit:
            a = a - np.diag(np.diag(a)) + np.eye(order)
        op = a.T if trans else a
        b = B[i].T.astype(np.float64)
        want[i] = np.linalg.solve(op, alpha * b) if left else np.linalg.solve(op.T, alpha * b.T).T
    status = lib.blas_check_trsm(left, upper, trans, unit, m, n, batch, ctypes.c_float(alpha),
                                 ptr(A), ptr(B))
    got = np.stack([B[i].T for i in range(batch)]).astype(np.float64)
    err = float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))
    return status, err, 1e-4, f"m={m} n={n} batch={batch} left={left} upper={upper} " \
                              f"trans={trans} unit={unit}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    rng = np.random.default_rng(args.seed)
    failed = 0
    runs = [(kind, lambda kind=kind: gemm_case(lib, rng, kind)) for kind in KINDS]
    runs.append(("strsm batched", lambda: trsm_case(lib, rng)))
    for name, run in runs:
        worst, bad = 0.0, []
        for _ in range(args.cases):
            status, err, tol, shape = run()
            worst = max(worst, err)
            if status != 0 or not err <= tol:
                bad.append(f"{shape}: status {status}, error {err:.2e}")
        failed += len(bad)
        print(f"{'FAIL' if bad else 'ok  '} {name}: {args.cases} cases, largest relative "
              f"error {worst:.2e} (tolerance {tol:.0e})")
        for line in bad[:5]:
            print(f"     {line}")
    print(f"blas check: {'FAILED' if failed else 'passed'} ({failed} failed cases)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
