"""The Numba CUDA matching kernel, as a plain function so that it can be
jitted for a device, run in the CUDA simulator, or compiled to PTX
(``numba.cuda.compile_ptx``) without a GPU.  Imported only when used."""

from numba import cuda, float32

TILE = 64  # atoms per shared-memory tile
MAX_FRAMES = 64


def match_tile_kernel(x, atoms, out):  # pragma: no cover - runs on a GPU or the simulator
    """One thread per voxel; atoms are streamed through shared memory in
    tiles of ``TILE``; the running |inner product| arg-max stays in registers."""
    tile = cuda.shared.array(shape=(TILE, MAX_FRAMES), dtype=float32)
    i = cuda.grid(1)
    n = x.shape[0]
    t_len = x.shape[1]
    k = atoms.shape[0]
    best = float32(-1.0)
    arg = 0
    for base in range(0, k, TILE):
        # The block loads a tile of atoms cooperatively.
        for e in range(cuda.threadIdx.x, TILE * t_len, cuda.blockDim.x):
            a = e // t_len
            t = e - a * t_len
            if base + a < k:
                tile[a, t] = atoms[base + a, t]
        cuda.syncthreads()
        # (no builtin min(): numba compiles it for the current device, which
        # breaks compile_ptx on machines without a GPU)
        count = k - base
        if count > TILE:
            count = TILE
        if i < n:
            for a in range(count):
                s = float32(0.0)
                for t in range(t_len):
                    s += x[i, t] * tile[a, t]
                s = abs(s)
                if s > best:
                    best = s
                    arg = base + a
        cuda.syncthreads()
    if i < n:
        out[i] = arg


def match_tile_kernel_complex(xr, xi, ar, ai, out):  # pragma: no cover - runs on a GPU or the simulator
    """The complex version of :func:`match_tile_kernel`: signals and atoms as
    real and imaginary float32 planes; maximises ``|<x, d>|^2`` with
    ``<x, d> = sum_t x_t conj(d_t)`` (first atom on ties)."""
    tile_r = cuda.shared.array(shape=(TILE, MAX_FRAMES), dtype=float32)
    tile_i = cuda.shared.array(shape=(TILE, MAX_FRAMES), dtype=float32)
    i = cuda.grid(1)
    n = xr.shape[0]
    t_len = xr.shape[1]
    k = ar.shape[0]
    best = float32(-1.0)
    arg = 0
    for base in range(0, k, TILE):
        for e in range(cuda.threadIdx.x, TILE * t_len, cuda.blockDim.x):
            a = e // t_len
            t = e - a * t_len
            if base + a < k:
                tile_r[a, t] = ar[base + a, t]
                tile_i[a, t] = ai[base + a, t]
        cuda.syncthreads()
        count = k - base
        if count > TILE:
            count = TILE
        if i < n:
            for a in range(count):
                re = float32(0.0)
                im = float32(0.0)
                for t in range(t_len):
                    s = xr[i, t]
                    q = xi[i, t]
                    re += s * tile_r[a, t] + q * tile_i[a, t]
                    im += q * tile_r[a, t] - s * tile_i[a, t]
                score = re * re + im * im
                if score > best:
                    best = score
                    arg = base + a
        cuda.syncthreads()
    if i < n:
        out[i] = arg
