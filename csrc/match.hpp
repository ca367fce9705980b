// Fused dictionary matching: inner products with a running arg-max.
//
// For each voxel x (n_frames values) find the atom index maximising |<x, d_k>|
// over unit-norm atoms d_k, without ever forming the [voxels x atoms] matrix.
#pragma once

#include <cstdint>

#ifdef MRFENGINE_KERNEL_NS  // the kernel, compiled once per ISA level (isa.hpp)
namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {

// x:      (n_vox, n_frames) float32, row-major.
// atoms:  (n_atoms, n_frames) float32, row-major, unit L2 norm.
// index:  (n_vox,) output; the first atom reaching the largest |<x, d>|.
// score:  (n_vox,) output; |<x, d_index>| as accumulated by the kernel.
// n_threads <= 0 uses the OpenMP default.
void match_argmax_f32(const float* x, std::int64_t n_vox, const float* atoms, std::int64_t n_atoms,
                      std::int64_t n_frames, std::int64_t* index, float* score, int n_threads);

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
#endif
