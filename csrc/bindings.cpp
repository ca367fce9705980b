// Thin pybind11 bindings: shape checks live in the Python wrappers
// (mrfengine/matching/_cpp.py); these only guard memory safety.  Compiled for
// the baseline; the kernels run through the table dispatch.cpp chose at
// import (MRFENGINE_ISA, or the best level this CPU runs).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <array>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "dispatch.hpp"
#include "mppca.hpp"

namespace py = pybind11;

namespace mrfengine {
void register_matching(py::module_& m);  // bindings_matching.cpp
}

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

py::tuple match_argmax(f32 x, f32 atoms, int n_threads) {
    if (x.ndim() != 2 || atoms.ndim() != 2 || x.shape(1) != atoms.shape(1))
        throw std::invalid_argument("match_argmax: x (n, T) and atoms (K, T) must be 2-D with equal T");
    if (atoms.shape(0) > 2147483647LL)
        throw std::invalid_argument("match_argmax: at most 2**31 - 1 atoms");
    const auto n = x.shape(0);
    py::array_t<std::int64_t> index(n);
    py::array_t<float> score(n);
    const float* xp = x.data();
    const float* ap = atoms.data();
    std::int64_t* ip = index.mutable_data();
    float* sp = score.mutable_data();
    const auto k = atoms.shape(0), t = atoms.shape(1);
    {
        py::gil_scoped_release release;
        mrfengine::kernels().match_argmax_f32(xp, n, ap, k, t, ip, sp, n_threads);
    }
    return py::make_tuple(index, score);
}

// MP-PCA: x and out are (a, b, c, frames) arrays with any strides (out is
// written in place); theta_sum, var_sum (a, b, c) and n_components, active
// (window starts) are C-contiguous.  Checks here guard memory only.
template <typename T>
void mppca_accumulate(py::array x, py::array out, py::array theta_sum, py::array var_sum, py::object active,
                      py::array n_components, std::array<std::int64_t, 3> window, int estimator, int n_threads) {
    auto is_t = [](const py::array& a) { return py::isinstance<py::array_t<T>>(a); };
    if (!is_t(x) || !is_t(out) || !is_t(theta_sum) || !is_t(var_sum))
        throw std::invalid_argument("mppca_accumulate: x, out, theta_sum and var_sum must share the kernel dtype");
    if (x.ndim() != 4 || out.ndim() != 4 || !out.writeable())
        throw std::invalid_argument("mppca_accumulate: x and out must be 4-D, out writeable");
    mrfengine::MppcaGeometry g{};
    std::int64_t n_windows = 1, n_voxels = 1;
    for (int i = 0; i < 4; ++i) {
        if (x.shape(i) != out.shape(i)) throw std::invalid_argument("mppca_accumulate: x and out shapes differ");
        g.in_stride[i] = x.strides(i) / static_cast<std::int64_t>(sizeof(T));
        g.out_stride[i] = out.strides(i) / static_cast<std::int64_t>(sizeof(T));
    }
    g.n_frames = x.shape(3);
    for (int i = 0; i < 3; ++i) {
        g.extent[i] = x.shape(i);
        g.window[i] = window[i];
        if (window[i] < 1 || window[i] > g.extent[i])
            throw std::invalid_argument("mppca_accumulate: window extent out of range");
        n_windows *= g.extent[i] - window[i] + 1;
        n_voxels *= g.extent[i];
    }
    auto check_c = [](const py::array& arr, std::int64_t size, const char* name) {
        if (!(arr.flags() & py::array::c_style) || arr.size() != size || !arr.writeable())
            throw std::invalid_argument(std::string("mppca_accumulate: bad ") + name);
    };
    check_c(theta_sum, n_voxels, "theta_sum");
    check_c(var_sum, n_voxels, "var_sum");
    check_c(n_components, n_windows, "n_components");
    if (!py::isinstance<py::array_t<std::int16_t>>(n_components))
        throw std::invalid_argument("mppca_accumulate: n_components must be int16");
    const std::uint8_t* act = nullptr;
    py::array_t<std::uint8_t, py::array::c_style> act_arr;
    if (!active.is_none()) {
        act_arr = active.cast<py::array_t<std::uint8_t, py::array::c_style>>();
        if (act_arr.size() != n_windows) throw std::invalid_argument("mppca_accumulate: bad active");
        act = act_arr.data();
    }
    const T* xp = static_cast<const T*>(x.data());
    T* op = static_cast<T*>(out.mutable_data());
    T* tp = static_cast<T*>(theta_sum.mutable_data());
    T* vp = static_cast<T*>(var_sum.mutable_data());
    auto* np = static_cast<std::int16_t*>(n_components.mutable_data());
    const auto& kernels = mrfengine::kernels();
    const auto run = [&] {
        if constexpr (std::is_same_v<T, float>)
            return kernels.mppca_accumulate_f32;
        else
            return kernels.mppca_accumulate_f64;
    }();
    py::gil_scoped_release release;
    run(xp, op, tp, vp, act, np, g, static_cast<mrfengine::MpEstimator>(estimator), n_threads);
}

// All eigenpairs of symmetric matrices (..., n, n) with the MP-PCA kernel's
// eigen-solver (lower triangle read): (values (..., n) ascending, vectors
// (..., n, n), eigenvector k in column k), as numpy.linalg.eigh.
template <typename T>
py::tuple eigh_sym(py::array_t<T, py::array::c_style | py::array::forcecast> a) {
    if (a.ndim() < 2 || a.shape(a.ndim() - 1) != a.shape(a.ndim() - 2))
        throw std::invalid_argument("_eigh_sym: a must be (..., n, n)");
    const auto n = a.shape(a.ndim() - 1);
    if (n > 4096) throw std::invalid_argument("_eigh_sym: n must be at most 4096");
    std::vector<py::ssize_t> vshape(a.shape(), a.shape() + a.ndim());
    std::vector<py::ssize_t> wshape(a.shape(), a.shape() + a.ndim() - 1);
    const std::int64_t count = n == 0 ? 0 : a.size() / (n * n);
    py::array_t<T> values(wshape), vectors(vshape);
    const T* ap = a.data();
    T* wp = values.mutable_data();
    T* vp = vectors.mutable_data();
    {
        py::gil_scoped_release release;
        if constexpr (std::is_same_v<T, float>)
            mrfengine::kernels().eigh_sym_f32(ap, count, static_cast<int>(n), wp, vp);
        else
            mrfengine::kernels().eigh_sym_f64(ap, count, static_cast<int>(n), wp, vp);
    }
    return py::make_tuple(values, vectors);
}

}  // namespace

PYBIND11_MODULE(_ext, m) {
    // MRFENGINE_ISA, read once: a level the build lacks or the CPU cannot run
    // fails the import with the reason (ImportError), never falls back.
    mrfengine::select_kernels(std::getenv("MRFENGINE_ISA"));
    m.doc() = "mrfengine's C++/OpenMP kernels (numeric only; see mrfengine.matching for the API).";
    m.def("match_argmax", &match_argmax, py::arg("x"), py::arg("atoms"), py::arg("n_threads") = 0,
          "Index and |score| of the best unit-norm atom per voxel (float32, fused, OpenMP).");
    m.def("mppca_accumulate_f32", &mppca_accumulate<float>, py::arg("x"), py::arg("out"), py::arg("theta_sum"),
          py::arg("var_sum"), py::arg("active"), py::arg("n_components"), py::arg("window"), py::arg("estimator"),
          py::arg("n_threads") = 0, "Sliding-window MP-PCA accumulation, float32 (see mrfengine.denoise).");
    m.def("mppca_accumulate_f64", &mppca_accumulate<double>, py::arg("x"), py::arg("out"), py::arg("theta_sum"),
          py::arg("var_sum"), py::arg("active"), py::arg("n_components"), py::arg("window"), py::arg("estimator"),
          py::arg("n_threads") = 0, "Sliding-window MP-PCA accumulation, float64 (see mrfengine.denoise).");
    m.def("_eigh_sym", &eigh_sym<float>, py::arg("a").noconvert(),
          "The MP-PCA kernel's symmetric eigen-solver, float32 (private: for tests).");
    m.def("_eigh_sym", &eigh_sym<double>, py::arg("a").noconvert(),
          "The MP-PCA kernel's symmetric eigen-solver, float64 (private: for tests).");
    m.def("max_threads", []() { return omp_get_max_threads(); }, "OpenMP's default thread count.");
    m.def("isa", []() { return std::string(mrfengine::kernels().name); },
          "The instruction-set level the kernels run: 'avx512', 'avx2' or 'baseline' (portable x86-64 builds, "
          "the best this CPU runs unless MRFENGINE_ISA forced one), 'native' (MRFENGINE_NATIVE=1 builds).");
    m.def("simd_bytes", []() { return mrfengine::kernels().simd_bytes; }, "Bytes per SIMD vector of the chosen kernels.");
    m.def(
        "isa_levels",
        []() {
            py::list out;
            for (const auto& level : mrfengine::isa_levels())
                out.append(py::make_tuple(level.name, level.supported, level.needs));
            return out;
        },
        "The ISA levels this build has, ascending: (name, whether this CPU runs it, CPU features it needs).");
    mrfengine::register_matching(m);
}
