/// @file mrfengine/match.hpp
/// @brief mrfengine's dictionary matcher for C++ projects: the public API of
///        the static library `mrfengine::match` (CMake target `mrfengine_match`).
///
/// Magnetic resonance fingerprinting (MRF) matches each voxel's fingerprint
/// x (n_frames time points) to the dictionary atom d_k (a simulated
/// fingerprint) that maximises the normalised inner product
///
///     |<x, d_k>| / ||d_k||,   <x, d> = sum_t x_t * conj(d_t),
///
/// (Ma et al., Nature 2013), and reports the winner's correlation
/// |<x, d>| / (||x|| ||d||) in [0, 1] and its proton density
/// M0 = <x, d> / <d, d> (the least-squares scale of the atom; complex for
/// complex data).  This is what `mrfengine.match(..., method="brute")` in
/// Python computes, and the results agree with it (tests/test_cpp_api.py).
///
/// Conventions shared by every function here:
///  - Arrays are dense and row-major (C order): `signals` is
///    (n_voxels x n_frames), `atoms` (n_atoms x n_frames), a `basis`
///    (n_frames x rank); complex arrays are std::complex, i.e. interleaved
///    (re, im) pairs, the layout of numpy's complex64/complex128.
///  - Atoms need not be normalised; every atom must be finite and non-zero.
///  - A voxel with a NaN or Inf value, or one that is all zero, is not
///    matched: best_index -1, correlation 0, M0 0 (Python's invalid="mask").
///  - Each voxel is scaled by a power of two before the search (exact), so
///    results do not depend on the signal's scale (no overflow near the top
///    of the float range, no lost bits near the bottom).
///  - The search is exact in the data's precision: float32 data are
///    searched in float32 (SIMD kernels chosen at run time for the CPU:
///    SSE2, AVX2 or AVX-512, see isa()), float64 data in float64.  The
///    winner's correlation and M0 are then recomputed in float64.
///  - Ties go to the smallest atom index (numpy.argmax's rule).
///  - Errors are reported by exceptions: std::invalid_argument for a bad
///    argument (null pointer, negative or zero size, a zero or non-finite
///    atom, a rank out of range), std::range_error when an M0 does not fit
///    the output type, std::runtime_error when MRFENGINE_ISA forces an
///    instruction-set level that this build or CPU lacks.  The outputs are
///    unspecified after an exception.  Nothing else is thrown, except
///    std::bad_alloc.
///  - Thread safety: the functions keep no state between calls (besides the
///    instruction-set choice, made once) and may be called concurrently.
///    Each call runs its own OpenMP parallel regions.
///  - Extra memory: one packed copy of the atoms (or compressed atoms) plus
///    a block of scaled signals.
///
/// Example:
/// @code
///   #include <mrfengine/match.hpp>
///   std::vector<std::complex<float>> x(n_vox * n_frames), d(n_atoms * n_frames);
///   // ... fill x (measured) and d (simulated) ...
///   std::vector<std::int64_t> index(n_vox);
///   std::vector<float> corr(n_vox);
///   std::vector<std::complex<float>> m0(n_vox);
///   mrfengine::MatchOptions opts;
///   opts.n_threads = 8;
///   mrfengine::match(x.data(), n_vox, d.data(), n_atoms, n_frames, index.data(), corr.data(), m0.data(), opts);
/// @endcode
#pragma once

#include <complex>
#include <cstdint>

/// Version of this API (bumped on any incompatible change of match.hpp).
#define MRFENGINE_MATCH_API_VERSION 1

namespace mrfengine {

/// Options of match() and match_compressed().
struct MatchOptions {
    /// OpenMP threads of the search; 0 or negative: the OpenMP default
    /// (OMP_NUM_THREADS, else all cores).
    int n_threads = 0;
    /// Voxels scaled and searched per block: bounds the extra memory
    /// (block x n_frames values); 0 chooses (16384, or more with many threads).
    std::int64_t block_voxels = 0;
};

/// @name Brute-force matching
/// Score every atom for every voxel and keep the best.
///
/// @param signals      (n_voxels x n_frames) fingerprints, row-major; may be
///                     null when n_voxels is 0.
/// @param n_voxels     number of fingerprints, >= 0.
/// @param atoms        (n_atoms x n_frames) dictionary, row-major; any
///                     non-zero norm (normalised internally).
/// @param n_atoms      number of atoms, >= 1 (and < 2^31).
/// @param n_frames     time points per fingerprint, >= 1.
/// @param best_index   (n_voxels) output: the winning atom's row, or -1 for
///                     a voxel that was not matched.
/// @param correlation  (n_voxels) output, or null: |<x, d>| / (||x|| ||d||).
/// @param m0           (n_voxels) output, or null: <x, d> / <d, d>.
/// @param options      threads and block size.
/// @throws std::invalid_argument, std::range_error, std::runtime_error (see
///         the file's conventions).
/// @{
void match(const float* signals, std::int64_t n_voxels, const float* atoms, std::int64_t n_atoms,
           std::int64_t n_frames, std::int64_t* best_index, float* correlation, float* m0,
           const MatchOptions& options = MatchOptions());
void match(const double* signals, std::int64_t n_voxels, const double* atoms, std::int64_t n_atoms,
           std::int64_t n_frames, std::int64_t* best_index, double* correlation, double* m0,
           const MatchOptions& options = MatchOptions());
void match(const std::complex<float>* signals, std::int64_t n_voxels, const std::complex<float>* atoms,
           std::int64_t n_atoms, std::int64_t n_frames, std::int64_t* best_index, float* correlation,
           std::complex<float>* m0, const MatchOptions& options = MatchOptions());
void match(const std::complex<double>* signals, std::int64_t n_voxels, const std::complex<double>* atoms,
           std::int64_t n_atoms, std::int64_t n_frames, std::int64_t* best_index, double* correlation,
           std::complex<double>* m0, const MatchOptions& options = MatchOptions());
/// @}

/// @name SVD-compressed matching (McGivney et al., IEEE TMI 2014)
/// Search in a rank-r subspace of the dictionary, then rescore the winner
/// on its full atom: Python's `mrfengine.match(..., rank=r)`.
///
/// Each signal is projected, xc = x B (no conjugation), and the search
/// maximises |<xc, c_k>| over the compressed atoms c_k = (d_k / ||d_k||) B;
/// correlation and M0 are then computed with the full atom d of the winner,
/// exactly as match() does.  Long fingerprints (hundreds to thousands of
/// frames) are searched at rank 5-25 for a fraction of the cost; the winner
/// is the brute-force one wherever the subspace keeps the dictionary's
/// energy (choose B from the leading right singular vectors of the
/// normalised atoms, e.g. `Dictionary.compress(rank).basis` in Python).
///
/// @param signals, n_voxels, atoms, n_atoms, n_frames  as in match(); the
///                     full atoms are needed for the rescoring.
/// @param basis        (n_frames x rank) row-major, orthonormal columns.
/// @param rank         1 <= rank <= n_frames.
/// @param compressed_atoms  (n_atoms x rank) row-major c_k as defined above
///                     (e.g. `Dictionary.compress(rank).atoms`), or null to
///                     compute them here from atoms and basis.
/// @param best_index, correlation, m0, options  as in match().
/// @throws as match(); std::invalid_argument also for a rank out of range
///         or a non-finite basis / compressed atom.
/// @{
void match_compressed(const float* signals, std::int64_t n_voxels, const float* atoms, std::int64_t n_atoms,
                      std::int64_t n_frames, const float* basis, std::int64_t rank, const float* compressed_atoms,
                      std::int64_t* best_index, float* correlation, float* m0,
                      const MatchOptions& options = MatchOptions());
void match_compressed(const double* signals, std::int64_t n_voxels, const double* atoms, std::int64_t n_atoms,
                      std::int64_t n_frames, const double* basis, std::int64_t rank, const double* compressed_atoms,
                      std::int64_t* best_index, double* correlation, double* m0,
                      const MatchOptions& options = MatchOptions());
void match_compressed(const std::complex<float>* signals, std::int64_t n_voxels, const std::complex<float>* atoms,
                      std::int64_t n_atoms, std::int64_t n_frames, const std::complex<float>* basis,
                      std::int64_t rank, const std::complex<float>* compressed_atoms, std::int64_t* best_index,
                      float* correlation, std::complex<float>* m0, const MatchOptions& options = MatchOptions());
void match_compressed(const std::complex<double>* signals, std::int64_t n_voxels,
                      const std::complex<double>* atoms, std::int64_t n_atoms, std::int64_t n_frames,
                      const std::complex<double>* basis, std::int64_t rank,
                      const std::complex<double>* compressed_atoms, std::int64_t* best_index, double* correlation,
                      std::complex<double>* m0, const MatchOptions& options = MatchOptions());
/// @}

/// The instruction-set level of the search kernels this process uses:
/// "baseline" (x86-64 SSE2), "avx2", "avx512", or, for a build without
/// run-time dispatch, "baseline" / "native".  Chosen on first use: the best
/// level the CPU runs, unless the environment variable MRFENGINE_ISA names
/// one (as for the Python package).
/// @throws std::runtime_error if MRFENGINE_ISA names a level this build or
///         CPU lacks.
const char* isa();

/// The library's version, e.g. "0.1.0" (the Python package's version).
const char* version();

}  // namespace mrfengine
