// Portable SIMD helpers (GCC/Clang vector extensions): -march=native lowers
// them to AVX-512, AVX2 or NEON from the same source.
#pragma once

#include <cstdint>
#include <cstring>

namespace mrfengine {
namespace simd {

constexpr int W = 16;  // floats per vector

typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef std::int32_t vi __attribute__((vector_size(W * sizeof(std::int32_t))));

inline vf vabs(vf v) {
    vi bits;
    std::memcpy(&bits, &v, sizeof(v));
    bits &= 0x7fffffff;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
}

inline vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

inline vf splat(float s) { return vf{} + s; }

inline vi lanes() {
    vi l;
    for (int j = 0; j < W; ++j) l[j] = j;
    return l;
}

}  // namespace simd
}  // namespace mrfengine
