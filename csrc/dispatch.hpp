// Run-time dispatch of the numeric kernels to the best instruction set the CPU
// has.  Each ISA level's objects (isa.hpp) export one KernelTable of
// function pointers; dispatch.cpp, compiled for the baseline like the
// bindings, picks one table when the extension is imported and the bindings
// call through it.  No pybind11 here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "api/search.hpp"
#include "mppca.hpp"
#include "separable.hpp"

namespace mrfengine {

struct KernelTable {
    const char* name;  // "baseline", "avx2", "avx512" or, for a single build, "native" / "baseline"
    int simd_bytes;    // bytes per SIMD vector of this level's kernels
    void (*match_argmax_f32)(const float* x, std::int64_t n_vox, const float* atoms, std::int64_t n_atoms,
                             std::int64_t n_frames, std::int64_t* index, float* score, int n_threads);
    void (*match_separable_f32)(const float* x, std::int64_t n_vox, const SeparableArgs& a, std::int64_t* pair,
                                std::int64_t* decay, int n_threads);
    void (*mppca_accumulate_f32)(const float* data, float* out, float* theta_sum, float* var_sum,
                                 const std::uint8_t* active, std::int16_t* n_components,
                                 const MppcaGeometry& geometry, MpEstimator estimator, int n_threads);
    void (*mppca_accumulate_f64)(const double* data, double* out, double* theta_sum, double* var_sum,
                                 const std::uint8_t* active, std::int16_t* n_components,
                                 const MppcaGeometry& geometry, MpEstimator estimator, int n_threads);
    void (*eigh_sym_f32)(const float* a, std::int64_t count, int n, float* values, float* vectors);
    void (*eigh_sym_f64)(const double* a, std::int64_t count, int n, double* values, double* vectors);
    // The C++ API's search kernels (api/search.hpp): float64 and complex brute force.
    const api::SearchTable* search;
};

// One ISA level this build has kernels for, ascending.
struct IsaLevel {
    std::string name;
    bool supported;     // this CPU (and OS) can run it
    std::string needs;  // the CPU features it needs, e.g. "avx2 fma bmi bmi2"
};

std::vector<IsaLevel> isa_levels();

// Choose the kernels once: forced = nullptr, "" or "auto" takes the best
// supported level, a level's name takes that one.  Throws std::runtime_error
// (with the levels this build and CPU offer) for an unknown name, a level
// this build lacks or one the CPU cannot run: a forced level never falls back.
const KernelTable& select_kernels(const char* forced);

// The chosen kernels (the best supported level if select_kernels was not called).
const KernelTable& kernels();

}  // namespace mrfengine
