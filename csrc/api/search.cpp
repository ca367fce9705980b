// See search.hpp.  float32 goes through the Python extension's fused SIMD
// kernel (csrc/match.cpp, compiled for the same level); float64 and complex
// data through the blocked kernel below, in the GCC/Clang vector types of
// simd.hpp (one register per vector at every level):
//
// * atoms are packed into tiles of TA atoms (~256 KiB, kept in L2 while a
//   chunk of voxels sweeps them), frame-major, real and imaginary parts in
//   separate planes, so one frame of AB consecutive atoms is one (complex) or
//   two (real) vector loads per plane;
// * the micro-kernel holds the inner products of VB = 6 voxels with AB atoms
//   in 12 accumulator registers: per frame, 2 loads and 6 (real) or 12
//   (complex) broadcasts feed 12 or 24 multiply-adds;
// * each voxel keeps, per vector lane, its best |score| (real) or |score|^2
//   (complex) and its atom (a compare and two blends per vector); lanes are
//   reduced at the end, smallest index first on ties (numpy's argmax rule).
#include "../isa.hpp"  // first: the level's namespace
#include "search.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

#include "../match.hpp"
#include "../simd.hpp"

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace {

constexpr int CHUNK = 60;  // voxels per OpenMP work item (multiple of Kernel::VB)

int threads(int n_threads) { return n_threads > 0 ? n_threads : omp_get_max_threads(); }

template <typename R, bool C>
struct Kernel {
    using Ln = simd::Lanes<R>;
    using V = typename Ln::V;                  // one register of R
    using M = typename Ln::M;                  // its mask / lane-index vector
    static constexpr int L = Ln::L;
    static constexpr int P = C ? 2 : 1;        // planes (re, im)
    static constexpr int NV = C ? 1 : 2;       // vectors of atoms per micro-kernel step
    static constexpr int AB = NV * L;          // atoms per micro-kernel step
    static constexpr int VB = 6;               // voxels per micro-kernel: 12 accumulator registers
    static_assert(CHUNK % VB == 0, "CHUNK is a multiple of VB");

    // Best |score| (|score|^2 for complex) and its atom, per vector lane.
    struct Best {
        V val[NV];
        M idx[NV];
    };

    std::int64_t n_atoms, nf, ta, n_tiles;
    std::vector<R> packed;                     // [tile][plane][frame][atom in tile]

    Kernel(const R* atoms, std::int64_t n_atoms_, std::int64_t nf_, int nt) : n_atoms(n_atoms_), nf(nf_) {
        ta = (256 * 1024 / static_cast<std::int64_t>(sizeof(R) * P)) / std::max<std::int64_t>(nf, 1);
        ta = std::max<std::int64_t>(AB, (ta / AB) * AB);
        ta = std::min<std::int64_t>(ta, ((n_atoms + AB - 1) / AB) * AB);
        n_tiles = (n_atoms + ta - 1) / ta;
        packed.assign(static_cast<std::size_t>(n_tiles * P * nf * ta), R(0));  // zero pads score 0: never first
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

    // Voxels x[0 .. nv) (nv <= VB) against one tile.
    void sweep(std::int64_t tile, const R* x, int nv, Best* best) const {
        const R* base = packed.data() + tile * P * nf * ta;
        const R* xv[VB];
        Best b[VB];
        for (int v = 0; v < VB; ++v) {  // pad with voxel 0; results unused
            xv[v] = x + (v < nv ? v : 0) * nf * P;
            b[v] = best[v < nv ? v : 0];
        }
        M lane;
        for (int j = 0; j < L; ++j) lane[j] = j;
        for (std::int64_t a = 0; a < ta && tile * ta + a < n_atoms; a += AB) {
            V re[VB][NV], im[VB][NV];
            for (int v = 0; v < VB; ++v)
                for (int n = 0; n < NV; ++n) re[v][n] = im[v][n] = V{};
            const R* col = base + a;
            for (std::int64_t t = 0; t < nf; ++t) {
                V dr[NV], di[NV];
                for (int n = 0; n < NV; ++n) {
                    dr[n] = simd::load(col + t * ta + n * L);
                    if constexpr (C) di[n] = simd::load(col + (nf + t) * ta + n * L);
                }
                for (int v = 0; v < VB; ++v) {
                    const R s = xv[v][P * t];
                    if constexpr (C) {  // x conj(d)
                        const R q = xv[v][2 * t + 1];
                        for (int n = 0; n < NV; ++n) {
                            re[v][n] += s * dr[n] + q * di[n];
                            im[v][n] += q * dr[n] - s * di[n];
                        }
                    } else {
                        for (int n = 0; n < NV; ++n) re[v][n] += s * dr[n];
                    }
                }
            }
            const M first = lane + static_cast<typename Ln::Int>(tile * ta + a);
            for (int v = 0; v < VB; ++v)
                for (int n = 0; n < NV; ++n) {
                    V score;
                    if constexpr (C) score = re[v][n] * re[v][n] + im[v][n] * im[v][n];
                    else score = simd::detail::abs<R>(re[v][n]);
                    const M better = score > b[v].val[n];
                    b[v].val[n] = better ? score : b[v].val[n];
                    b[v].idx[n] = better ? first + static_cast<typename Ln::Int>(n * L) : b[v].idx[n];
                }
        }
        for (int v = 0; v < nv; ++v) best[v] = b[v];
    }

    void run(const R* x, std::int64_t n_vox, std::int64_t* index, int nt) const {
        const std::int64_t n_chunks = (n_vox + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (std::int64_t c = 0; c < n_chunks; ++c) {
            const std::int64_t v0 = c * CHUNK;
            const int nv = static_cast<int>(std::min<std::int64_t>(CHUNK, n_vox - v0));
            Best best[CHUNK];
            for (int v = 0; v < nv; ++v)
                for (int n = 0; n < NV; ++n) {
                    best[v].val[n] = V{} - R(1);
                    best[v].idx[n] = M{};
                }
            for (std::int64_t tile = 0; tile < n_tiles; ++tile)
                for (int v = 0; v < nv; v += VB) sweep(tile, x + (v0 + v) * nf * P, std::min(VB, nv - v), best + v);
            for (int v = 0; v < nv; ++v) {  // lanes: the largest score, the smallest atom on ties
                R bv = R(-1);
                std::int64_t bi = 0;
                for (int n = 0; n < NV; ++n)
                    for (int j = 0; j < L; ++j) {
                        const R val = best[v].val[n][j];
                        const std::int64_t idx = best[v].idx[n][j];
                        if (val > bv || (val == bv && idx < bi)) {
                            bv = val;
                            bi = idx;
                        }
                    }
                index[v0 + v] = bi;
            }
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
