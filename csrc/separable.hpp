// Structured matching of separable dictionaries (atom = A_p * E_q), see
// mrfengine/matching/_separable.py for the maths and the reference.
#pragma once

#include <cstdint>

namespace mrfengine {

struct SeparableArgs {
    const float* amplitude_t;  // (T, P_pad): A_p(t), zero-padded pairs
    const float* v;            // (T, K): decay basis
    const float* u;            // (K, Q_pad): decays in that basis
    const float* inv_norm;     // (P, Q_pad): 1/|atom|, 0 for holes and pads
    const float* u_coarse;     // (C, K): u at the coarse decays
    const float* inv_coarse;   // (C, P_pad): inv_norm at the coarse decays, transposed
    std::int64_t n_frames, n_pairs, p_pad, q_pad, rank, n_coarse, top_pairs;
};

constexpr int SEPARABLE_MAX_RANK = 12;

}  // namespace mrfengine

#ifdef MRFENGINE_KERNEL_NS  // the kernel, compiled once per ISA level (isa.hpp)
namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {

// x: (n_vox, T) float32.  Writes the best pair and decay index of each voxel.
void match_separable_f32(const float* x, std::int64_t n_vox, const SeparableArgs& a, std::int64_t* pair,
                         std::int64_t* decay, int n_threads);

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
#endif
