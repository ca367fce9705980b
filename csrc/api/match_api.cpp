// The public C++ API (include/mrfengine/match.hpp): argument checks, atom
// normalisation or SVD projection, per-voxel power-of-two scaling, the
// search through the ISA level's kernels (search.hpp), and the float64
// rescoring of each winner, the same steps as mrfengine.match in Python
// (mrfengine/matching/api.py).  Compiled for the baseline: nothing here may
// use an instruction the levels it chooses between need.
#include "mrfengine/match.hpp"

#include <omp.h>

#include <cmath>
#include <complex>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../cpu_features.hpp"
#include "search.hpp"

#ifndef MRFENGINE_VERSION
#define MRFENGINE_VERSION "unknown"
#endif
#ifndef MRFENGINE_DISPATCH_X86
#define MRFENGINE_DISPATCH_X86 0
#endif

namespace mrfengine {

#if MRFENGINE_DISPATCH_X86
namespace isa_baseline {
extern const api::SearchTable search_table;
}
namespace isa_avx2 {
extern const api::SearchTable search_table;
}
namespace isa_avx512 {
extern const api::SearchTable search_table;
}
#else
namespace isa_single {
extern const api::SearchTable search_table;
}
#endif

namespace {

// --------------------------------------------------------------- ISA level
struct Level {
    const api::SearchTable* table;
    const char* needs;
    bool (*cpu_has)();
};

using cpu::always;
#if MRFENGINE_DISPATCH_X86
using cpu::has_avx2;  // one definition of what the CPU can run: csrc/cpu_features.hpp
using cpu::has_avx512;
const Level kLevels[] = {
    {&isa_baseline::search_table, "sse2", &always},
    {&isa_avx2::search_table, "avx2 fma bmi bmi2", &has_avx2},
    {&isa_avx512::search_table, "avx512f avx512bw avx512dq avx512vl avx2 fma bmi bmi2", &has_avx512},
};
#else
const Level kLevels[] = {{&isa_single::search_table, "the build machine's (single build)", &always}};
#endif

const api::SearchTable* choose() {
    const char* env = std::getenv("MRFENGINE_ISA");
    const std::string want = env == nullptr ? "" : env;
    std::string built, runs;
    const api::SearchTable* best = nullptr;
    for (const Level& level : kLevels) {
        built += (built.empty() ? "" : ", ") + std::string(level.table->name);
        if (!level.cpu_has()) continue;
        runs += (runs.empty() ? "" : ", ") + std::string(level.table->name);
        best = level.table;  // ascending: the last supported is the best
    }
    if (want.empty() || want == "auto") return best;
    for (const Level& level : kLevels) {
        if (want != level.table->name) continue;
        if (!level.cpu_has())
            throw std::runtime_error("MRFENGINE_ISA=" + want + ": this CPU lacks what the " + want +
                                     " kernels need (" + level.needs + "); this build has " + built +
                                     "; this CPU runs " + runs + ". Unset MRFENGINE_ISA to use the best.");
        return level.table;
    }
    throw std::runtime_error("MRFENGINE_ISA=" + want + ": no such kernels (auto, baseline, avx2, avx512); this build has " +
                             built + "; this CPU runs " + runs + ".");
}

const api::SearchTable& table() {
    static const api::SearchTable* chosen = choose();  // thread-safe; retried if it threw
    return *chosen;
}

// ------------------------------------------------------------ type traits
template <typename T>
struct Traits {  // real
    using R = T;
    static constexpr bool C = false;
    static double re(T v) { return v; }
    static double im(T) { return 0.0; }
    static T make(double r, double) { return static_cast<T>(r); }
};
template <typename R_>
struct Traits<std::complex<R_>> {
    using R = R_;
    static constexpr bool C = true;
    static double re(std::complex<R_> v) { return v.real(); }
    static double im(std::complex<R_> v) { return v.imag(); }
    static std::complex<R_> make(double r, double i) { return {static_cast<R_>(r), static_cast<R_>(i)}; }
};

api::SearchReal kernel_for(float*) { return table().f32; }
api::SearchReal kernel_for(double*) { return table().f64; }
api::SearchReal kernel_for(std::complex<float>*) { return table().c64; }
api::SearchReal kernel_for(std::complex<double>*) { return table().c128; }

[[noreturn]] void fail(const char* fn, const std::string& what) {
    throw std::invalid_argument(std::string("mrfengine::") + fn + ": " + what);
}

template <typename T>
bool finite(T v) {
    return std::isfinite(Traits<T>::re(v)) && std::isfinite(Traits<T>::im(v));
}

template <typename T>
void match_impl(const char* fn, const T* signals, std::int64_t n_vox, const T* atoms, std::int64_t n_atoms,
                std::int64_t nf, const T* basis, std::int64_t rank, const T* catoms, bool compressed,
                std::int64_t* best_index, typename Traits<T>::R* correlation, T* m0, const MatchOptions& opt) {
    using Tr = Traits<T>;
    using R = typename Tr::R;
    using CD = std::complex<double>;
    // ------------------------------------------------------------- checks
    if (n_vox < 0) fail(fn, "n_voxels must be >= 0; got " + std::to_string(n_vox));
    if (n_atoms < 1 || n_atoms > std::numeric_limits<std::int32_t>::max())
        fail(fn, "n_atoms must be in [1, 2^31 - 1]; got " + std::to_string(n_atoms));
    if (nf < 1) fail(fn, "n_frames must be >= 1; got " + std::to_string(nf));
    const std::int64_t cap = std::numeric_limits<std::int64_t>::max() / 16;
    if (n_atoms > cap / nf || (n_vox > 0 && n_vox > cap / nf))
        fail(fn, "n_voxels x n_frames or n_atoms x n_frames overflows");
    if (atoms == nullptr) fail(fn, "atoms is null");
    if (n_vox > 0 && signals == nullptr) fail(fn, "signals is null");
    if (n_vox > 0 && best_index == nullptr) fail(fn, "best_index is null");
    if (compressed) {
        if (rank < 1 || rank > nf)
            fail(fn, "rank must be in [1, n_frames=" + std::to_string(nf) + "]; got " + std::to_string(rank));
        if (basis == nullptr) fail(fn, "basis is null");
        for (std::int64_t i = 0; i < nf * rank; ++i)
            if (!finite(basis[i])) fail(fn, "basis has a NaN or Inf value (row " + std::to_string(i / rank) + ")");
    }
    const int nt = opt.n_threads > 0 ? opt.n_threads : omp_get_max_threads();
    const api::SearchReal search = kernel_for(static_cast<T*>(nullptr));  // may throw (MRFENGINE_ISA)

    // ------------------------------------------------- atoms: norms, search copy
    std::vector<double> norm(static_cast<std::size_t>(n_atoms));
    std::int64_t bad = -1;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(max : bad)
    for (std::int64_t k = 0; k < n_atoms; ++k) {
        double s = 0.0;
        bool ok = true;
        for (std::int64_t t = 0; t < nf; ++t) {
            const T v = atoms[k * nf + t];
            ok = ok && finite(v);
            s += Tr::re(v) * Tr::re(v) + Tr::im(v) * Tr::im(v);
        }
        norm[k] = std::sqrt(s);
        if (!ok || !(norm[k] > 0.0) || !std::isfinite(norm[k])) bad = std::max(bad, k);
    }
    if (bad >= 0)
        fail(fn, "atom " + std::to_string(bad) + (norm[bad] == 0.0 ? " is all zero" : " has a NaN or Inf value") +
                     "; every atom must be finite and non-zero");
    const std::int64_t nd = compressed ? rank : nf;  // dimension searched
    std::vector<T> search_atoms(static_cast<std::size_t>(n_atoms * nd));
    if (compressed && catoms != nullptr) {
        for (std::int64_t i = 0; i < n_atoms * nd; ++i) {
            if (!finite(catoms[i]))
                fail(fn, "compressed_atoms has a NaN or Inf value (atom " + std::to_string(i / nd) + ")");
            search_atoms[i] = catoms[i];
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (std::int64_t k = 0; k < n_atoms; ++k) {
            const double inv = 1.0 / norm[k];
            const T* d = atoms + k * nf;
            T* out = search_atoms.data() + k * nd;
            if (!compressed) {
                for (std::int64_t t = 0; t < nf; ++t) out[t] = Tr::make(Tr::re(d[t]) * inv, Tr::im(d[t]) * inv);
                continue;
            }
            std::vector<CD> acc(static_cast<std::size_t>(rank));  // (d / ||d||) B, no conjugation
            for (std::int64_t t = 0; t < nf; ++t) {
                const CD dv(Tr::re(d[t]) * inv, Tr::im(d[t]) * inv);
                for (std::int64_t r = 0; r < rank; ++r)
                    acc[r] += dv * CD(Tr::re(basis[t * rank + r]), Tr::im(basis[t * rank + r]));
            }
            for (std::int64_t r = 0; r < rank; ++r) out[r] = Tr::make(acc[r].real(), acc[r].imag());
        }
    }

    // --------------------------------------------------- voxels, block by block
    std::int64_t block = opt.block_voxels > 0 ? opt.block_voxels : std::max<std::int64_t>(16384, 256 * nt);
    block = std::min<std::int64_t>(block, std::max<std::int64_t>(n_vox, 1));
    std::vector<int> shift(static_cast<std::size_t>(block));
    std::vector<char> valid(static_cast<std::size_t>(block));
    std::vector<std::int64_t> rows, found(static_cast<std::size_t>(block));
    std::vector<T> xs;
    const R r_max = std::numeric_limits<R>::max();
    for (std::int64_t b0 = 0; b0 < n_vox; b0 += block) {
        const std::int64_t nb = std::min(block, n_vox - b0);
        // Validity and the power of two that brings each voxel's peak into [0.5, 1).
#pragma omp parallel for schedule(static) num_threads(nt)
        for (std::int64_t v = 0; v < nb; ++v) {
            const T* x = signals + (b0 + v) * nf;
            double peak = 0.0;
            bool ok = true;
            for (std::int64_t t = 0; t < nf; ++t) {
                ok = ok && finite(x[t]);
                peak = std::max(peak, std::max(std::abs(Tr::re(x[t])), std::abs(Tr::im(x[t]))));
            }
            valid[v] = ok && peak > 0.0;
            int e = 0;
            std::frexp(peak, &e);
            shift[v] = valid[v] ? e : 0;
        }
        rows.clear();
        for (std::int64_t v = 0; v < nb; ++v)
            if (valid[v]) rows.push_back(v);
        const std::int64_t n_valid = static_cast<std::int64_t>(rows.size());
        xs.resize(static_cast<std::size_t>(n_valid * nd));
#pragma omp parallel for schedule(static) num_threads(nt)
        for (std::int64_t i = 0; i < n_valid; ++i) {
            const std::int64_t v = rows[i];
            const T* x = signals + (b0 + v) * nf;
            T* out = xs.data() + i * nd;
            if (!compressed) {  // exact: a power of two
                for (std::int64_t t = 0; t < nf; ++t)
                    out[t] = Tr::make(std::ldexp(Tr::re(x[t]), -shift[v]), std::ldexp(Tr::im(x[t]), -shift[v]));
                continue;
            }
            std::vector<CD> acc(static_cast<std::size_t>(rank));  // x B, no conjugation
            for (std::int64_t t = 0; t < nf; ++t) {
                const CD xv(std::ldexp(Tr::re(x[t]), -shift[v]), std::ldexp(Tr::im(x[t]), -shift[v]));
                for (std::int64_t r = 0; r < rank; ++r)
                    acc[r] += xv * CD(Tr::re(basis[t * rank + r]), Tr::im(basis[t * rank + r]));
            }
            for (std::int64_t r = 0; r < rank; ++r) out[r] = Tr::make(acc[r].real(), acc[r].imag());
        }
        search(xs.data(), n_valid, search_atoms.data(), n_atoms, nd, found.data(), opt.n_threads);

        // Rescoring of each winner with its full atom, in float64.
#pragma omp parallel for schedule(static) num_threads(nt)
        for (std::int64_t v = 0; v < nb; ++v) {
            const std::int64_t out = b0 + v;
            if (!valid[v]) {
                best_index[out] = -1;
                if (correlation != nullptr) correlation[out] = R(0);
                if (m0 != nullptr) m0[out] = T(0);
            }
        }
        std::int64_t overflow = -1;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(max : overflow)
        for (std::int64_t i = 0; i < n_valid; ++i) {
            const std::int64_t v = rows[i], out = b0 + v, k = found[i];
            const T* x = signals + out * nf;
            const T* d = atoms + k * nf;
            CD ip(0.0, 0.0);
            double xx = 0.0;
            for (std::int64_t t = 0; t < nf; ++t) {
                const CD xv(std::ldexp(Tr::re(x[t]), -shift[v]), std::ldexp(Tr::im(x[t]), -shift[v]));
                ip += xv * CD(Tr::re(d[t]), -Tr::im(d[t]));
                xx += std::norm(xv);
            }
            best_index[out] = k;
            if (correlation != nullptr) correlation[out] = static_cast<R>(std::abs(ip) / (std::sqrt(xx) * norm[k]));
            if (m0 != nullptr) {
                const double scale = 1.0 / (norm[k] * norm[k]);
                const double re = std::ldexp(ip.real() * scale, shift[v]), im = std::ldexp(ip.imag() * scale, shift[v]);
                if (!(std::abs(re) <= r_max) || !(std::abs(im) <= r_max)) overflow = std::max(overflow, out);
                m0[out] = Tr::make(re, im);
            }
        }
        if (overflow >= 0)
            throw std::range_error(std::string("mrfengine::") + fn + ": the M0 of voxel " + std::to_string(overflow) +
                                   " exceeds the range of the output type (a signal near the type's largest value "
                                   "against an atom of norm below 1); rescale the signals");
    }
}

}  // namespace

#define MRFENGINE_MATCH_DEFS(T, R)                                                                                    \
    void match(const T* signals, std::int64_t n_voxels, const T* atoms, std::int64_t n_atoms, std::int64_t n_frames, \
               std::int64_t* best_index, R* correlation, T* m0, const MatchOptions& options) {                       \
        match_impl<T>("match", signals, n_voxels, atoms, n_atoms, n_frames, nullptr, 0, nullptr, false, best_index,  \
                      correlation, m0, options);                                                                     \
    }                                                                                                                \
    void match_compressed(const T* signals, std::int64_t n_voxels, const T* atoms, std::int64_t n_atoms,             \
                          std::int64_t n_frames, const T* basis, std::int64_t rank, const T* compressed_atoms,       \
                          std::int64_t* best_index, R* correlation, T* m0, const MatchOptions& options) {            \
        match_impl<T>("match_compressed", signals, n_voxels, atoms, n_atoms, n_frames, basis, rank,                  \
                      compressed_atoms, true, best_index, correlation, m0, options);                                 \
    }

MRFENGINE_MATCH_DEFS(float, float)
MRFENGINE_MATCH_DEFS(double, double)
MRFENGINE_MATCH_DEFS(std::complex<float>, float)
MRFENGINE_MATCH_DEFS(std::complex<double>, double)
#undef MRFENGINE_MATCH_DEFS

const char* isa() { return table().name; }

const char* version() { return MRFENGINE_VERSION; }

}  // namespace mrfengine
