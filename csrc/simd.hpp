// Portable SIMD helpers (GCC/Clang vector extensions): the same source is
// lowered to AVX-512, AVX2, SSE2 or NEON by the flags of the level it is
// compiled for (isa.hpp).  One vector is one register (kBytes below): 16
// floats with AVX-512, 8 with AVX2, 4 with SSE2.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 intrinsics (_mm512_sqrt_ps's undefined pass-through) trip
// a false -Wmaybe-uninitialized (GCC PR 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "isa.hpp"

// Without AVX-512 a 64-byte vector is wider than a register, and GCC notes
// (-Wpsabi) that its calling convention changed in GCC 4.6.  These vectors
// never cross the extension's boundary (every function that takes one is
// compiled here, with the same flags), so the note is not about this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace simd {

// One vector is one register where the target has AVX-512 (64 bytes), AVX
// (32 bytes) or only SSE2 (16 bytes: the x86-64 baseline level).  A 64-byte
// vector on an AVX2-only machine is lowered badly by GCC 12 (spills and
// scalarised reductions): measured on an AVX2 EPYC (znver3), 32-byte vectors
// made structured matching 11x, brute-force matching 24x and MP-PCA 5x faster
// (benchmarks/README.md).  Elsewhere (NEON) 64 bytes.  The widths differ per
// x86 level, so no two levels share a vector type (isa.hpp).
#if defined(__AVX512F__)
constexpr int kBytes = 64;
#elif defined(__AVX__)
constexpr int kBytes = 32;
#elif defined(__SSE2__)
constexpr int kBytes = 16;
#else
constexpr int kBytes = 64;
#endif

// Lanes<T>: the vector of T (V), its comparison mask (M, all bits set where
// true, of the integer Int as wide as T) and the lane count L.
template <typename T>
struct Lanes {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "lanes of float or double");
    static constexpr int L = kBytes / sizeof(T);
    using Int = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
    typedef T V __attribute__((vector_size(kBytes)));
    typedef Int M __attribute__((vector_size(kBytes)));
};

constexpr int W = Lanes<float>::L;  // floats per vector
typedef Lanes<float>::V vf;
typedef Lanes<float>::M vi;
typedef Lanes<double>::V vd;
typedef Lanes<double>::M vl;

template <typename T>
inline typename Lanes<T>::V load(const T* p) {
    typename Lanes<T>::V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <typename T>
inline void store(T* p, typename Lanes<T>::V v) {
    std::memcpy(p, &v, sizeof(v));
}

template <typename T>
inline typename Lanes<T>::V splat(T s) {
    return typename Lanes<T>::V{} + s;
}

namespace detail {

template <typename T>
inline typename Lanes<T>::V abs(typename Lanes<T>::V v) {
    typename Lanes<T>::M bits;
    std::memcpy(&bits, &v, sizeof(v));
    bits &= std::numeric_limits<typename Lanes<T>::Int>::max();  // clear the sign bits
    std::memcpy(&v, &bits, sizeof(v));
    return v;
}

template <typename M>
inline bool any(M m) {
    for (std::size_t l = 0; l < sizeof(M) / sizeof(m[0]); ++l)
        if (m[l]) return true;
    return false;
}

// sqrt in place of one ISA register's worth of lanes at p (kChunk bytes).
#if defined(__AVX512F__)
constexpr int kChunk = 64;
inline void sqrt_chunk(float* p) { _mm512_storeu_ps(p, _mm512_sqrt_ps(_mm512_loadu_ps(p))); }
inline void sqrt_chunk(double* p) { _mm512_storeu_pd(p, _mm512_sqrt_pd(_mm512_loadu_pd(p))); }
#elif defined(__AVX__)
constexpr int kChunk = 32;
inline void sqrt_chunk(float* p) { _mm256_storeu_ps(p, _mm256_sqrt_ps(_mm256_loadu_ps(p))); }
inline void sqrt_chunk(double* p) { _mm256_storeu_pd(p, _mm256_sqrt_pd(_mm256_loadu_pd(p))); }
#elif defined(__SSE2__)
constexpr int kChunk = 16;
inline void sqrt_chunk(float* p) { _mm_storeu_ps(p, _mm_sqrt_ps(_mm_loadu_ps(p))); }
inline void sqrt_chunk(double* p) { _mm_storeu_pd(p, _mm_sqrt_pd(_mm_loadu_pd(p))); }
#else
constexpr int kChunk = 0;
#endif

template <typename T>
inline typename Lanes<T>::V sqrt(typename Lanes<T>::V v) {
    T x[Lanes<T>::L];
    std::memcpy(x, &v, sizeof(v));
    if constexpr (kChunk > 0) {
        for (int l = 0; l < Lanes<T>::L; l += kChunk / static_cast<int>(sizeof(T))) sqrt_chunk(x + l);
    } else {
        for (int l = 0; l < Lanes<T>::L; ++l) x[l] = std::sqrt(x[l]);
    }
    std::memcpy(&v, x, sizeof(v));
    return v;
}

}  // namespace detail

inline vf vabs(vf v) { return detail::abs<float>(v); }
inline vd vabs(vd v) { return detail::abs<double>(v); }

// Lane-wise square root as one instruction per register where the ISA has
// one (a plain std::sqrt loop is not vectorised: errno semantics).
inline vf vsqrt(vf v) { return detail::sqrt<float>(v); }
inline vd vsqrt(vd v) { return detail::sqrt<double>(v); }

// True when any lane of the mask is set.
inline bool any(vi m) { return detail::any(m); }
inline bool any(vl m) { return detail::any(m); }

inline vi lanes() {
    vi l;
    for (int j = 0; j < W; ++j) l[j] = j;
    return l;
}

}  // namespace simd
}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
