// Per voxel (all float32, vectorised over pairs or decays, W lanes):
//   1. y_j(t) = x(t) v(t, j)                                   K x T
//   2. W[j, p] = sum_t y_j(t) A_p(t)                           2 K T P FLOPs
//   3. coarse: proxy[p] = max_c |sum_j W[j, p] u_c[c, j]| inv_c[c, p]
//   4. keep the top_pairs pairs by proxy (nth_element)
//   5. fine: every decay q of those pairs, running arg-max per lane.
// The rank K is a template parameter so the accumulators live in registers.
// Compiled once per ISA level (isa.hpp).
#include "isa.hpp"  // first: the level's namespace, for the headers' kernel declarations
#include "separable.hpp"

#include <omp.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "simd.hpp"

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace {

using simd::load;
using simd::splat;
using simd::store;
using simd::vabs;
using simd::vf;
using simd::vi;
using simd::W;

template <int K>
void one_voxel(const float* x, const SeparableArgs& a, float* y, float* w, float* proxy, std::int32_t* order,
               std::int64_t* best_pair, std::int64_t* best_decay) {
    const std::int64_t T = a.n_frames, PP = a.p_pad, QP = a.q_pad;
    for (int j = 0; j < K; ++j)
        for (std::int64_t t = 0; t < T; ++t) y[j * T + t] = x[t] * a.v[t * K + j];
    // 2. W, two pair-vectors at a time: 2 loads and K broadcasts feed 2 K FMAs.
    std::int64_t pv = 0;
    for (; pv + 2 * W <= PP; pv += 2 * W) {
        vf acc0[K], acc1[K];
        for (int j = 0; j < K; ++j) acc0[j] = acc1[j] = vf{};
        for (std::int64_t t = 0; t < T; ++t) {
            const vf a0 = load(a.amplitude_t + t * PP + pv);
            const vf a1 = load(a.amplitude_t + t * PP + pv + W);
            for (int j = 0; j < K; ++j) {
                const float yj = y[j * T + t];
                acc0[j] += yj * a0;
                acc1[j] += yj * a1;
            }
        }
        for (int j = 0; j < K; ++j) {
            store(w + j * PP + pv, acc0[j]);
            store(w + j * PP + pv + W, acc1[j]);
        }
    }
    for (; pv < PP; pv += W) {
        vf acc[K];
        for (int j = 0; j < K; ++j) acc[j] = vf{};
        for (std::int64_t t = 0; t < T; ++t) {
            const vf av = load(a.amplitude_t + t * PP + pv);
            for (int j = 0; j < K; ++j) acc[j] += y[j * T + t] * av;
        }
        for (int j = 0; j < K; ++j) store(w + j * PP + pv, acc[j]);
    }
    // 3. coarse pass over every pair, vectorised over pairs.
    for (std::int64_t p = 0; p < PP; p += W) {
        vf wj[K];
        for (int j = 0; j < K; ++j) wj[j] = load(w + j * PP + p);
        vf best = vf{};
        for (std::int64_t c = 0; c < a.n_coarse; ++c) {
            const float* uc = a.u_coarse + c * K;
            vf s = wj[0] * uc[0];
            for (int j = 1; j < K; ++j) s += wj[j] * uc[j];
            s = vabs(s) * load(a.inv_coarse + c * PP + p);
            best = s > best ? s : best;
        }
        store(proxy + p, best);
    }
    // 4. the top pairs.
    const std::int64_t m = std::min(a.top_pairs, a.n_pairs);
    std::iota(order, order + a.n_pairs, 0);
    if (m < a.n_pairs)
        std::nth_element(order, order + m, order + a.n_pairs,
                         [proxy](std::int32_t i, std::int32_t j) { return proxy[i] > proxy[j] || (proxy[i] == proxy[j] && i < j); });
    // 5. fine pass, vectorised over decays.
    const vi lane = simd::lanes();
    vf bv = splat(-1.0f);
    vi bi = vi{};
    for (std::int64_t r = 0; r < m; ++r) {
        const std::int64_t p = order[r];
        const float* inv = a.inv_norm + p * QP;
        for (std::int64_t q = 0; q < QP; q += W) {
            vf s = splat(w[p]) * load(a.u + q);
            for (int j = 1; j < K; ++j) s += w[j * PP + p] * load(a.u + j * QP + q);
            s = vabs(s) * load(inv + q);
            const vi flat = lane + static_cast<std::int32_t>(p * QP + q);
            const vi better = s > bv;
            bv = better ? s : bv;
            bi = better ? flat : bi;
        }
    }
    float v = -1.0f;
    std::int32_t idx = 0;
    for (int j = 0; j < W; ++j)
        if (bv[j] > v || (bv[j] == v && bi[j] < idx)) {
            v = bv[j];
            idx = bi[j];
        }
    *best_pair = idx / QP;
    *best_decay = idx % QP;
}

template <int K>
void run(const float* x, std::int64_t n_vox, const SeparableArgs& a, std::int64_t* pair, std::int64_t* decay,
         int nt) {
#pragma omp parallel num_threads(nt)
    {
        std::vector<float> y(K * a.n_frames), w(K * a.p_pad), proxy(a.p_pad);
        std::vector<std::int32_t> order(a.n_pairs);
#pragma omp for schedule(dynamic, 256)
        for (std::int64_t i = 0; i < n_vox; ++i)
            one_voxel<K>(x + i * a.n_frames, a, y.data(), w.data(), proxy.data(), order.data(), pair + i,
                         decay + i);
    }
}

}  // namespace

void match_separable_f32(const float* x, std::int64_t n_vox, const SeparableArgs& a, std::int64_t* pair,
                         std::int64_t* decay, int n_threads) {
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    switch (a.rank) {
#define MRFENGINE_RANK(K) \
    case K:               \
        run<K>(x, n_vox, a, pair, decay, nt); \
        break;
        MRFENGINE_RANK(1) MRFENGINE_RANK(2) MRFENGINE_RANK(3) MRFENGINE_RANK(4) MRFENGINE_RANK(5)
        MRFENGINE_RANK(6) MRFENGINE_RANK(7) MRFENGINE_RANK(8) MRFENGINE_RANK(9) MRFENGINE_RANK(10)
        MRFENGINE_RANK(11) MRFENGINE_RANK(12)
#undef MRFENGINE_RANK
        default:
            break;  // the binding rejects other ranks
    }
}

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
