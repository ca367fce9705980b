// See match.hpp.  Layout of the computation:
//
// * atoms are packed into tiles of TA atoms, each tile stored frame-major
//   (n_frames x TA) so that one frame of 2 * W consecutive atoms is two
//   vector loads; a tile (~256 KiB) stays in the core's L2 cache while a
//   chunk of voxels sweeps it;
// * the micro-kernel holds the inner products of VB = 12 voxels with 2 * W
//   atoms in 24 vector registers (W = 16 floats: AVX-512, or two AVX2
//   halves): per frame 2 vector loads and 12 broadcasts feed 24 FMAs, so the
//   FMA units, not the load ports, set the pace (VB = 4 reached ~63% of the
//   sgemm peak, 8 ~69%, 12 ~83%);
// * each voxel keeps, per vector lane, the best |score| and its atom index,
//   so the arg-max costs a compare and two blends per vector; lanes are
//   reduced at the end, smallest index first on ties (numpy's argmax rule).
//
// The GCC/Clang vector extensions keep this portable: the same source is
// compiled for AVX-512, AVX2, SSE2 or NEON (isa.hpp, one object per
// x86-64 level).
#include "isa.hpp"  // first: the level's namespace, for the headers' kernel declarations
#include "match.hpp"

#include <omp.h>

#include "simd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace {

using simd::load;
using simd::vabs;
using simd::vf;
using simd::vi;
using simd::W;

constexpr int AB = 2 * W;       // atoms per micro-kernel step
constexpr int VB = 12;          // voxels per micro-kernel
constexpr int CHUNK = 96;       // voxels per OpenMP work item (multiple of VB)

struct Packed {
    std::int64_t ta;       // atoms per tile (multiple of AB)
    std::int64_t n_tiles;
    std::int64_t n_frames;
    float* data;           // n_tiles x n_frames x ta
};

// Best (value, index) of one voxel, one vector per half of the AB atoms.
struct Best {
    vf val[2];
    vi idx[2];
};

void sweep_tile(const Packed& p, std::int64_t tile, const float* x, std::int64_t n_in_block,
                Best* best) {
    const std::int64_t nf = p.n_frames;
    const float* base = p.data + tile * nf * p.ta;
    const vi lane = simd::lanes();
    // Pad the voxel block to VB with a copy of its first voxel; results unused.
    const float* xv[VB];
    for (int v = 0; v < VB; ++v) xv[v] = x + (v < n_in_block ? v : 0) * nf;
    Best b[VB];
    for (int v = 0; v < VB; ++v) b[v] = best[v < n_in_block ? v : 0];
    for (std::int64_t a = 0; a < p.ta; a += AB) {
        vf acc[VB][2];
        for (int v = 0; v < VB; ++v) acc[v][0] = acc[v][1] = vf{} ;
        const float* col = base + a;
        for (std::int64_t t = 0; t < nf; ++t) {
            const vf d0 = load(col + t * p.ta);
            const vf d1 = load(col + t * p.ta + W);
            for (int v = 0; v < VB; ++v) {
                const float s = xv[v][t];
                acc[v][0] += s * d0;
                acc[v][1] += s * d1;
            }
        }
        const std::int32_t first = static_cast<std::int32_t>(tile * p.ta + a);
        const vi i0 = lane + first;
        const vi i1 = lane + (first + W);
        for (int v = 0; v < VB; ++v) {
            const vf s0 = vabs(acc[v][0]);
            const vf s1 = vabs(acc[v][1]);
            const vi m0 = s0 > b[v].val[0];
            const vi m1 = s1 > b[v].val[1];
            b[v].val[0] = m0 ? s0 : b[v].val[0];
            b[v].val[1] = m1 ? s1 : b[v].val[1];
            b[v].idx[0] = m0 ? i0 : b[v].idx[0];
            b[v].idx[1] = m1 ? i1 : b[v].idx[1];
        }
    }
    for (int v = 0; v < n_in_block; ++v) best[v] = b[v];
}

}  // namespace

void match_argmax_f32(const float* x, std::int64_t n_vox, const float* atoms, std::int64_t n_atoms,
                      std::int64_t n_frames, std::int64_t* index, float* score, int n_threads) {
    if (n_vox <= 0 || n_atoms <= 0) return;
    // ~256 KiB tiles: large enough to amortise the per-tile state traffic,
    // small enough for L2 beside the voxel chunk.
    std::int64_t ta = (256 * 1024 / 4) / std::max<std::int64_t>(n_frames, 1);
    ta = std::max<std::int64_t>(AB, (ta / AB) * AB);
    const std::int64_t padded_atoms = ((n_atoms + AB - 1) / AB) * AB;
    ta = std::min(ta, padded_atoms);
    Packed p{ta, (n_atoms + ta - 1) / ta, n_frames, nullptr};
    const std::size_t total = static_cast<std::size_t>(p.n_tiles * ta * n_frames);
    std::vector<float> buffer(total, 0.0f);  // zero pads score 0 and never win (strict >)
    p.data = buffer.data();
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();

#pragma omp parallel for schedule(static) num_threads(nt)
    for (std::int64_t tile = 0; tile < p.n_tiles; ++tile) {
        float* dst = p.data + tile * n_frames * ta;
        const std::int64_t a0 = tile * ta;
        const std::int64_t a1 = std::min(n_atoms, a0 + ta);
        for (std::int64_t a = a0; a < a1; ++a)
            for (std::int64_t t = 0; t < n_frames; ++t) dst[t * ta + (a - a0)] = atoms[a * n_frames + t];
    }

    const std::int64_t n_chunks = (n_vox + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (std::int64_t c = 0; c < n_chunks; ++c) {
        const std::int64_t v0 = c * CHUNK;
        const std::int64_t nv = std::min<std::int64_t>(CHUNK, n_vox - v0);
        Best best[CHUNK];
        for (std::int64_t v = 0; v < nv; ++v) {
            for (int h = 0; h < 2; ++h) {
                best[v].val[h] = vf{} - 1.0f;
                best[v].idx[h] = vi{};
            }
        }
        for (std::int64_t tile = 0; tile < p.n_tiles; ++tile)
            for (std::int64_t v = 0; v < nv; v += VB)
                sweep_tile(p, tile, x + (v0 + v) * n_frames, std::min<std::int64_t>(VB, nv - v), best + v);
        for (std::int64_t v = 0; v < nv; ++v) {
            float bv = -1.0f;
            std::int32_t bi = 0;
            for (int h = 0; h < 2; ++h)
                for (int j = 0; j < W; ++j) {
                    const float val = best[v].val[h][j];
                    const std::int32_t idx = best[v].idx[h][j];
                    if (val > bv || (val == bv && idx < bi)) {
                        bv = val;
                        bi = idx;
                    }
                }
            index[v0 + v] = bi;
            score[v0 + v] = bv;
        }
    }
}

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
