// The C interface (include/mrfengine/match.h): the C++ API's functions with
// exceptions turned into status codes and a per-thread message.  Complex
// arrays arrive as interleaved (re, im) pairs, the layout of std::complex
// (which the C++ standard guarantees: [complex.numbers]).
#include "mrfengine/match.h"

#include <complex>
#include <new>
#include <stdexcept>
#include <string>

#include "mrfengine/match.hpp"

namespace {

thread_local std::string g_error;

template <typename F>
int guarded(F&& call) {
    try {
        call();
        g_error.clear();
        return MRFENGINE_OK;
    } catch (const std::invalid_argument& e) {
        g_error = e.what();
        return MRFENGINE_INVALID_ARGUMENT;
    } catch (const std::range_error& e) {
        g_error = e.what();
        return MRFENGINE_RANGE_ERROR;
    } catch (const std::bad_alloc&) {
        g_error = "mrfengine: out of memory";
        return MRFENGINE_OUT_OF_MEMORY;
    } catch (const std::runtime_error& e) {
        g_error = e.what();
        return MRFENGINE_RUNTIME_ERROR;
    } catch (const std::exception& e) {
        g_error = e.what();
        return MRFENGINE_INTERNAL_ERROR;
    } catch (...) {
        g_error = "mrfengine: unknown error";
        return MRFENGINE_INTERNAL_ERROR;
    }
}

mrfengine::MatchOptions options(int n_threads) {
    mrfengine::MatchOptions o;
    o.n_threads = n_threads;
    return o;
}

template <typename R>
const std::complex<R>* cx(const R* p) { return reinterpret_cast<const std::complex<R>*>(p); }
template <typename R>
std::complex<R>* cx(R* p) { return reinterpret_cast<std::complex<R>*>(p); }

}  // namespace

extern "C" {

const char* mrfengine_last_error(void) { return g_error.c_str(); }

#define MRFENGINE_C_REAL(SUFFIX, R)                                                                                  \
    int mrfengine_match_##SUFFIX(const R* signals, int64_t n_voxels, const R* atoms, int64_t n_atoms,               \
                                 int64_t n_frames, int64_t* best_index, R* correlation, R* m0, int n_threads) {     \
        return guarded([&] {                                                                                         \
            mrfengine::match(signals, n_voxels, atoms, n_atoms, n_frames, best_index, correlation, m0,              \
                             options(n_threads));                                                                    \
        });                                                                                                          \
    }                                                                                                                \
    int mrfengine_match_compressed_##SUFFIX(const R* signals, int64_t n_voxels, const R* atoms, int64_t n_atoms,    \
                                            int64_t n_frames, const R* basis, int64_t rank, const R* compressed,    \
                                            int64_t* best_index, R* correlation, R* m0, int n_threads) {            \
        return guarded([&] {                                                                                         \
            mrfengine::match_compressed(signals, n_voxels, atoms, n_atoms, n_frames, basis, rank, compressed,       \
                                        best_index, correlation, m0, options(n_threads));                            \
        });                                                                                                          \
    }

#define MRFENGINE_C_COMPLEX(SUFFIX, R)                                                                               \
    int mrfengine_match_##SUFFIX(const R* signals, int64_t n_voxels, const R* atoms, int64_t n_atoms,               \
                                 int64_t n_frames, int64_t* best_index, R* correlation, R* m0, int n_threads) {     \
        return guarded([&] {                                                                                         \
            mrfengine::match(cx(signals), n_voxels, cx(atoms), n_atoms, n_frames, best_index, correlation, cx(m0),  \
                             options(n_threads));                                                                    \
        });                                                                                                          \
    }                                                                                                                \
    int mrfengine_match_compressed_##SUFFIX(const R* signals, int64_t n_voxels, const R* atoms, int64_t n_atoms,    \
                                            int64_t n_frames, const R* basis, int64_t rank, const R* compressed,    \
                                            int64_t* best_index, R* correlation, R* m0, int n_threads) {            \
        return guarded([&] {                                                                                         \
            mrfengine::match_compressed(cx(signals), n_voxels, cx(atoms), n_atoms, n_frames, cx(basis), rank,       \
                                        cx(compressed), best_index, correlation, cx(m0), options(n_threads));       \
        });                                                                                                          \
    }

MRFENGINE_C_REAL(f32, float)
MRFENGINE_C_REAL(f64, double)
MRFENGINE_C_COMPLEX(c64, float)
MRFENGINE_C_COMPLEX(c128, double)

const char* mrfengine_isa(void) {
    const char* name = nullptr;
    return guarded([&] { name = mrfengine::isa(); }) == MRFENGINE_OK ? name : nullptr;
}

const char* mrfengine_version(void) { return mrfengine::version(); }

}  // extern "C"
