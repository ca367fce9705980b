/** @file mrfengine/match.h
 *  @brief The C interface of mrfengine's matcher (C99; also C++), for C,
 *         Fortran (ISO_C_BINDING), Julia, MATLAB MEX and other callers that
 *         cannot call C++: the functions of mrfengine/match.hpp with status
 *         codes in place of exceptions.  Link the same library
 *         (mrfengine::match, libmrfengine_match.a) with a C++ linker or
 *         add the C++ runtime (-lstdc++) and OpenMP (-fopenmp).
 *
 *  Semantics, layouts and conventions are those of mrfengine/match.hpp:
 *  row-major arrays; complex arrays (suffix c64 / c128) are interleaved
 *  (re, im) pairs of float / double, so `signals` holds 2 x n_voxels x
 *  n_frames values and `m0` 2 x n_voxels; correlation and m0 may be NULL;
 *  n_threads <= 0 uses the OpenMP default.
 *
 *  Every function returns MRFENGINE_OK (0) or an error code, and then
 *  mrfengine_last_error() describes the error (per thread).
 */
#ifndef MRFENGINE_MATCH_H
#define MRFENGINE_MATCH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Status codes. */
enum mrfengine_status {
    MRFENGINE_OK = 0,               /**< success */
    MRFENGINE_INVALID_ARGUMENT = 1, /**< a bad argument (std::invalid_argument in C++) */
    MRFENGINE_RANGE_ERROR = 2,      /**< an M0 beyond the output type's range */
    MRFENGINE_RUNTIME_ERROR = 3,    /**< MRFENGINE_ISA names a level this build or CPU lacks */
    MRFENGINE_OUT_OF_MEMORY = 4,    /**< an allocation failed */
    MRFENGINE_INTERNAL_ERROR = 5    /**< anything else (a bug: please report it) */
};

/** The message of the last failed call in this thread ("" if none failed). */
const char* mrfengine_last_error(void);

/** @name Brute-force matching (mrfengine::match) @{ */
int mrfengine_match_f32(const float* signals, int64_t n_voxels, const float* atoms, int64_t n_atoms,
                        int64_t n_frames, int64_t* best_index, float* correlation, float* m0, int n_threads);
int mrfengine_match_f64(const double* signals, int64_t n_voxels, const double* atoms, int64_t n_atoms,
                        int64_t n_frames, int64_t* best_index, double* correlation, double* m0, int n_threads);
int mrfengine_match_c64(const float* signals, int64_t n_voxels, const float* atoms, int64_t n_atoms,
                        int64_t n_frames, int64_t* best_index, float* correlation, float* m0, int n_threads);
int mrfengine_match_c128(const double* signals, int64_t n_voxels, const double* atoms, int64_t n_atoms,
                         int64_t n_frames, int64_t* best_index, double* correlation, double* m0, int n_threads);
/** @} */

/** @name SVD-compressed matching (mrfengine::match_compressed); compressed_atoms may be NULL @{ */
int mrfengine_match_compressed_f32(const float* signals, int64_t n_voxels, const float* atoms, int64_t n_atoms,
                                   int64_t n_frames, const float* basis, int64_t rank, const float* compressed_atoms,
                                   int64_t* best_index, float* correlation, float* m0, int n_threads);
int mrfengine_match_compressed_f64(const double* signals, int64_t n_voxels, const double* atoms, int64_t n_atoms,
                                   int64_t n_frames, const double* basis, int64_t rank,
                                   const double* compressed_atoms, int64_t* best_index, double* correlation,
                                   double* m0, int n_threads);
int mrfengine_match_compressed_c64(const float* signals, int64_t n_voxels, const float* atoms, int64_t n_atoms,
                                   int64_t n_frames, const float* basis, int64_t rank, const float* compressed_atoms,
                                   int64_t* best_index, float* correlation, float* m0, int n_threads);
int mrfengine_match_compressed_c128(const double* signals, int64_t n_voxels, const double* atoms, int64_t n_atoms,
                                    int64_t n_frames, const double* basis, int64_t rank,
                                    const double* compressed_atoms, int64_t* best_index, double* correlation,
                                    double* m0, int n_threads);
/** @} */

/** The kernels' instruction-set level (mrfengine::isa()), or NULL on error (see mrfengine_last_error). */
const char* mrfengine_isa(void);

/** The library's version, e.g. "0.1.0". */
const char* mrfengine_version(void);

#ifdef __cplusplus
}
#endif

#endif /* MRFENGINE_MATCH_H */
