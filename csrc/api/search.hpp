// The search kernels behind the public C++ API (include/mrfengine/match.hpp):
// for each row x of a (n_vox x n_dims) array, the row k of a (n_atoms x
// n_dims) array maximising |<x, a_k>| = |sum_t x_t conj(a_tk)|, the first on
// ties (numpy.argmax's rule).  Row-major; complex arrays as interleaved
// (re, im) pairs.  No normalisation here: match_api.cpp passes unit-norm (or
// compressed) atoms and power-of-two-scaled signals.
//
// search.cpp is compiled once per ISA level (isa.hpp), like the Python
// extension's kernels, and each level exports one SearchTable;
// match_api.cpp (baseline code) picks one at run time.
#pragma once

#include <cstdint>

namespace mrfengine {
namespace api {

using SearchReal = void (*)(const void* x, std::int64_t n_vox, const void* atoms, std::int64_t n_atoms,
                            std::int64_t n_dims, std::int64_t* index, int n_threads);

struct SearchTable {
    const char* name;  // "baseline", "avx2", "avx512" or, for a single build, "native" / "baseline"
    SearchReal f32;    // float, through the Python extension's SIMD kernel (csrc/match.cpp)
    SearchReal f64;    // double
    SearchReal c64;    // std::complex<float> (accumulated in float)
    SearchReal c128;   // std::complex<double>
};

}  // namespace api
}  // namespace mrfengine

#ifdef MRFENGINE_KERNEL_NS
namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
extern const api::SearchTable search_table;
}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
#endif
