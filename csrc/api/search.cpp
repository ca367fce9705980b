// See search.hpp.  float32 goes through the Python extension's fused SIMD
// kernel (csrc/match.cpp, compiled for the same level); float64 and complex
// data through the blocked kernel below, written in plain loops that the
// compiler vectorises for the level's instruction set:
//
// * atoms are packed into tiles of TA atoms (~256 KiB, kept in L2 while a
//   chunk of voxels sweeps them), frame-major, real and imaginary parts in
//   separate planes, so one frame of AB consecutive atoms is contiguous;
// * a micro-kernel holds the inner products of VB voxels with AB atoms in
//   accumulator arrays: per frame VB broadcasts feed VB x AB multiply-adds;
// * each voxel keeps its best |score|^2 (complex) or |score| (real) and its
//   atom, scanning atoms in ascending order with a strict '>', so ties go to
//   the smallest index.
#include "../isa.hpp"  // first: the level's namespace
#include "search.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

#include "../match.hpp"

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace {

constexpr int VB = 4;     // voxels per micro-kernel
constexpr int CHUNK = 64;  // voxels per OpenMP work item (multiple of VB)

int threads(int n_threads) { return n_threads > 0 ? n_threads : omp_get_max_threads(); }

template <typename R, bool C>
struct Kernel {
    static constexpr int P = C ? 2 : 1;        // planes (re, im)
    static constexpr int AB = C ? 8 : 16;      // atoms per micro-kernel step
    std::int64_t n_atoms, nf, ta, n_tiles;
    std::vector<R> packed;                     // [tile][plane][frame][atom in tile]

    Kernel(const R* atoms, std::int64_t n_atoms_, std::int64_t nf_, int nt) : n_atoms(n_atoms_), nf(nf_) {
        ta = (256 * 1024 / static_cast<std::int64_t>(sizeof(R) * P)) / std::max<std::int64_t>(nf, 1);
        ta = std::max<std::int64_t>(AB, (ta / AB) * AB);
        ta = std::min<std::int64_t>(ta, ((n_atoms + AB - 1) / AB) * AB);
        n_tiles = (n_atoms + ta - 1) / ta;
        packed.assign(static_cast<std::size_t>(n_tiles * P * nf * ta), R(0));  // zero pads: scored, never kept
        R* data = packed.data();
#pragma omp parallel for schedule(static) num_threads(nt)
        for (std::int64_t tile = 0; tile < n_tiles; ++tile) {
            R* dst = data + tile * P * nf * ta;
            const std::int64_t a0 = tile * ta, a1 = std::min(n_atoms, a0 + ta);
            for (std::int64_t a = a0; a < a1; ++a)
                for (std::int64_t t = 0; t < nf; ++t)
                    for (int p = 0; p < P; ++p) dst[(p * nf + t) * ta + (a - a0)] = atoms[(a * nf + t) * P + p];
        }
    }

    // Voxels x[0 .. nv) (nv <= VB) against one tile; best / arg updated in place.
    void sweep(std::int64_t tile, const R* x, int nv, R* best, std::int64_t* arg) const {
        const R* base = packed.data() + tile * P * nf * ta;
        const R* xv[VB];
        for (int v = 0; v < VB; ++v) xv[v] = x + (v < nv ? v : 0) * nf * P;  // pad with voxel 0, unused
        for (std::int64_t a = 0; a < ta; a += AB) {
            const std::int64_t first = tile * ta + a;
            const int valid = static_cast<int>(std::min<std::int64_t>(AB, n_atoms - first));
            if (valid <= 0) break;
            R re[VB][AB] = {};
            R im[VB][AB] = {};
            for (std::int64_t t = 0; t < nf; ++t) {
                const R* dr = base + t * ta + a;
                if constexpr (C) {
                    const R* di = dr + nf * ta;
                    for (int v = 0; v < VB; ++v) {
                        const R s = xv[v][2 * t], q = xv[v][2 * t + 1];
#pragma omp simd
                        for (int j = 0; j < AB; ++j) {  // x conj(d)
                            re[v][j] += s * dr[j] + q * di[j];
                            im[v][j] += q * dr[j] - s * di[j];
                        }
                    }
                } else {
                    for (int v = 0; v < VB; ++v) {
                        const R s = xv[v][t];
#pragma omp simd
                        for (int j = 0; j < AB; ++j) re[v][j] += s * dr[j];
                    }
                }
            }
            for (int v = 0; v < nv; ++v)
                for (int j = 0; j < valid; ++j) {
                    const R score = C ? re[v][j] * re[v][j] + im[v][j] * im[v][j] : std::abs(re[v][j]);
                    if (score > best[v]) {
                        best[v] = score;
                        arg[v] = first + j;
                    }
                }
        }
    }

    void run(const R* x, std::int64_t n_vox, std::int64_t* index, int nt) const {
        const std::int64_t n_chunks = (n_vox + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (std::int64_t c = 0; c < n_chunks; ++c) {
            const std::int64_t v0 = c * CHUNK;
            const int nv = static_cast<int>(std::min<std::int64_t>(CHUNK, n_vox - v0));
            R best[CHUNK];
            std::int64_t arg[CHUNK];
            for (int v = 0; v < nv; ++v) {
                best[v] = R(-1);
                arg[v] = 0;
            }
            for (std::int64_t tile = 0; tile < n_tiles; ++tile)
                for (int v = 0; v < nv; v += VB)
                    sweep(tile, x + (v0 + v) * nf * P, std::min(VB, nv - v), best + v, arg + v);
            for (int v = 0; v < nv; ++v) index[v0 + v] = arg[v];
        }
    }
};

template <typename R, bool C>
void search(const void* x, std::int64_t n_vox, const void* atoms, std::int64_t n_atoms, std::int64_t n_dims,
            std::int64_t* index, int n_threads) {
    if (n_vox <= 0) return;
    const int nt = threads(n_threads);
    const Kernel<R, C> kernel(static_cast<const R*>(atoms), n_atoms, n_dims, nt);
    kernel.run(static_cast<const R*>(x), n_vox, index, nt);
}

void search_f32(const void* x, std::int64_t n_vox, const void* atoms, std::int64_t n_atoms, std::int64_t n_dims,
                std::int64_t* index, int n_threads) {
    if (n_vox <= 0) return;
    std::vector<float> score(static_cast<std::size_t>(n_vox));
    match_argmax_f32(static_cast<const float*>(x), n_vox, static_cast<const float*>(atoms), n_atoms, n_dims, index,
                     score.data(), n_threads);
}

}  // namespace

#if MRFENGINE_ISA_LEVEL == 4
#define MRFENGINE_SEARCH_LEVEL "avx512"
#elif MRFENGINE_ISA_LEVEL == 3
#define MRFENGINE_SEARCH_LEVEL "avx2"
#elif MRFENGINE_ISA_LEVEL == 1 || !defined(MRFENGINE_NATIVE_BUILD)
#define MRFENGINE_SEARCH_LEVEL "baseline"
#else
#define MRFENGINE_SEARCH_LEVEL "native"
#endif

const api::SearchTable search_table = {
    MRFENGINE_SEARCH_LEVEL, &search_f32, &search<double, false>, &search<float, true>, &search<double, true>,
};

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
