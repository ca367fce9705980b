"""GPU backends: CuPy (cuBLAS GEMM per chunk + a fused |.|-argmax kernel, and
the structured search) and a Numba CUDA kernel.

The CuPy orchestration is array-module code: with ``xp=numpy`` the same body
runs on the CPU, which is how CI exercises it.  Device memory is bounded by
the chunk size: a (chunk x atoms) float32 score block plus the atoms.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from ..errors import BackendUnavailableError

__all__ = ["best_atoms_gemm_xp", "abs_argmax", "best_atoms_numba_cuda", "numba_cuda_kernel", "gpu_chunk"]

_ABS_ARGMAX = None


def gpu_chunk(n_atoms: int, budget_bytes: int = 512 * 2**20) -> int:
    """Voxels per GPU chunk so the float32 score block stays within ``budget_bytes``."""
    return int(max(256, min(1 << 18, budget_bytes // (4 * max(1, n_atoms)))))


def abs_argmax(scores, xp: ModuleType):
    """Row-wise ``argmax(|scores|)``, first index on ties.

    On CuPy a single fused reduction kernel (no ``|scores|`` temporary); on
    numpy the plain expression.
    """
    if xp is np:
        return np.argmax(np.abs(scores), axis=1)
    global _ABS_ARGMAX
    if _ABS_ARGMAX is None:  # pragma: no cover - needs a GPU
        import cupy

        # One block per row; each thread scans a strided part of the row, then
        # a shared-memory tree reduction keeps the larger |value| (smaller index on ties).
        _ABS_ARGMAX = cupy.RawKernel(
            r"""
            extern "C" __global__ void abs_argmax(const float* s, long long n_rows, long long n_cols,
                                                  long long* out) {
                __shared__ float bv[256];
                __shared__ long long bi[256];
                long long row = blockIdx.x;
                if (row >= n_rows) return;
                const float* r = s + row * n_cols;
                float v = -1.0f; long long idx = 0;
                for (long long c = threadIdx.x; c < n_cols; c += blockDim.x) {
                    float a = fabsf(r[c]);
                    if (a > v) { v = a; idx = c; }
                }
                bv[threadIdx.x] = v; bi[threadIdx.x] = idx;
                __syncthreads();
                for (int step = blockDim.x / 2; step > 0; step >>= 1) {
                    if (threadIdx.x < step) {
                        float ov = bv[threadIdx.x + step]; long long oi = bi[threadIdx.x + step];
                        if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
                            bv[threadIdx.x] = ov; bi[threadIdx.x] = oi;
                        }
                    }
                    __syncthreads();
                }
                if (threadIdx.x == 0) out[row] = bi[0];
            }
            """,
            "abs_argmax",
        )
    out = xp.empty(scores.shape[0], dtype=xp.int64)
    if scores.shape[0]:
        _ABS_ARGMAX((scores.shape[0],), (256,), (scores, np.int64(scores.shape[0]), np.int64(scores.shape[1]), out))
    return out


def best_atoms_gemm_xp(x: np.ndarray, atoms: np.ndarray, xp: ModuleType, *, chunk: int | None = None) -> np.ndarray:
    """Brute-force match: one GEMM per voxel chunk, then the fused |.|-argmax.

    Parameters
    ----------
    x : host ndarray, (n, T), float32 or complex
    atoms : host ndarray, (K, T), float32 or complex, unit norm
    xp : numpy or cupy

    Returns
    -------
    host ndarray of int64, (n,)

    Notes
    -----
    With CuPy, chunks are staged through pinned host memory and uploaded on a
    second stream while the previous chunk computes.
    """
    complex_data = np.iscomplexobj(x) or np.iscomplexobj(atoms)
    dtype = np.complex64 if complex_data else np.float32
    # Complex: the chunk's complex64 scores plus their float32 magnitudes.
    chunk = gpu_chunk(atoms.shape[0] * (3 if complex_data else 1)) if chunk is None else chunk
    # <x, d> = x conj(d): one GEMM against the conjugated, transposed atoms.
    d_atoms_t = xp.ascontiguousarray(xp.asarray(np.conj(atoms) if complex_data else atoms, dtype=dtype).T)
    out = np.empty(x.shape[0], dtype=np.int64)
    starts = list(range(0, x.shape[0], chunk))

    def best_of(scores):
        return abs_argmax(xp.abs(scores) if complex_data else scores, xp)

    if xp is np:
        for s in starts:
            out[s : s + chunk] = best_of(x[s : s + chunk].astype(dtype, copy=False) @ d_atoms_t)
        return out
    import cupy  # pragma: no cover - needs a GPU

    copy_stream = cupy.cuda.Stream(non_blocking=True)
    size = np.dtype(dtype).itemsize
    pinned = [cupy.cuda.alloc_pinned_memory(size * chunk * x.shape[1]) for _ in range(2)]
    staged = [np.frombuffer(p, dtype, chunk * x.shape[1]).reshape(chunk, x.shape[1]) for p in pinned]

    def upload(i: int):
        s = starts[i]
        n = min(chunk, x.shape[0] - s)
        buf = staged[i % 2][:n]
        buf[...] = x[s : s + n]
        with copy_stream:
            dev = cupy.asarray(buf)
            done = copy_stream.record()
        return dev, done

    pending = upload(0) if starts else None
    for i, s in enumerate(starts):
        dev, done = pending
        cupy.cuda.get_current_stream().wait_event(done)
        if i + 1 < len(starts):
            pending = upload(i + 1)
        out[s : s + dev.shape[0]] = cupy.asnumpy(best_of(dev @ d_atoms_t))
    return out


_NUMBA_CUDA_KERNELS: dict[bool, object] = {}


def numba_cuda_kernel(complex_data: bool = False):
    """The jitted Numba CUDA kernel (see :mod:`._numba_cuda_kernel`), real or complex, compiled lazily."""
    if complex_data not in _NUMBA_CUDA_KERNELS:
        from numba import cuda

        from ._numba_cuda_kernel import match_tile_kernel, match_tile_kernel_complex

        _NUMBA_CUDA_KERNELS[complex_data] = cuda.jit(match_tile_kernel_complex if complex_data else match_tile_kernel)
    return _NUMBA_CUDA_KERNELS[complex_data]


def best_atoms_numba_cuda(x: np.ndarray, atoms: np.ndarray, *, chunk: int = 1 << 20, threads: int = 128) -> np.ndarray:
    """Brute-force match with the Numba CUDA kernel, ``chunk`` voxels per launch.

    Real data in float32; complex data as float32 real and imaginary planes
    (complex64 precision).  At most ``MAX_FRAMES`` (64) frames: long complex
    fingerprints are matched with ``rank=`` (their SVD compression).
    """
    from ._numba_cuda_kernel import MAX_FRAMES

    if atoms.shape[1] > MAX_FRAMES:
        raise BackendUnavailableError(
            f"backend 'numba-cuda' handles at most {MAX_FRAMES} frames; use 'cupy', or rank= to compress"
        )
    from numba import cuda

    complex_data = np.iscomplexobj(x) or np.iscomplexobj(atoms)
    kernel = numba_cuda_kernel(complex_data)

    def planes(a: np.ndarray) -> list[np.ndarray]:
        if not complex_data:
            return [np.ascontiguousarray(a, dtype=np.float32)]
        return [np.ascontiguousarray(a.real, dtype=np.float32), np.ascontiguousarray(np.imag(a), dtype=np.float32)]

    d_atoms = [cuda.to_device(p) for p in planes(atoms)]
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], chunk):
        xs = [cuda.to_device(p) for p in planes(x[s : s + chunk])]
        n = xs[0].shape[0]
        d_out = cuda.device_array(n, dtype=np.int64)
        blocks = math.ceil(n / threads)
        kernel[blocks, threads](*xs, *d_atoms, d_out)
        out[s : s + n] = d_out.copy_to_host()
    return out
