// Sliding-window Marchenko-Pastur PCA denoising (Veraart et al. 2016), the
// numeric core of mrfengine.denoise.  Definitions: mrfengine/denoise/_common.py
// and the slow reference mrfengine/denoise/_reference.py, which this kernel
// reproduces (tests/denoise hold it to it).
#pragma once

#include <cstdint>

namespace mrfengine {

// Geometry in the kernel's axis roles (a, b, c) + frames; strides in elements,
// any sign.  Windows have extent window[i] <= extent[i] and start at every
// position 0..extent[i] - window[i].
struct MppcaGeometry {
    std::int64_t extent[3];
    std::int64_t n_frames;
    std::int64_t in_stride[4];   // a, b, c, frame
    std::int64_t out_stride[4];  // a, b, c, frame
    std::int64_t window[3];
};

// 0: Veraart 2016 (gamma = k / q); 1: Cordero-Grande 2019 "Exp2" (gamma = k / (q - r + k)).
enum class MpEstimator : int { Veraart = 0, Exp2 = 1 };

}  // namespace mrfengine

#ifdef MRFENGINE_KERNEL_NS  // the kernel, compiled once per ISA level (isa.hpp)
namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {

// Adds every window's theta-weighted rank-p estimate to `out` (zero-initialised
// by the caller), i.e. out(v) += sum_w theta_w (m_w + P_w (x_v - m_w)), and
// theta_w, theta_w sigma_w^2 to theta_sum / var_sum ((a, b, c), C-contiguous,
// zero-initialised).  `active` ((a, b, c) window starts, C-contiguous, or
// nullptr for all) selects the windows to compute; n_components (same shape)
// receives p_w, or -1 for windows not computed.  T is float or double: all
// arithmetic is in T except the classification (double).  Runs OpenMP-parallel
// on n_threads (<= 0: OpenMP's default); call without the GIL.
template <typename T>
void mppca_accumulate(const T* data, T* out, T* theta_sum, T* var_sum, const std::uint8_t* active,
                      std::int16_t* n_components, const MppcaGeometry& geometry, MpEstimator estimator,
                      int n_threads);

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
#endif
