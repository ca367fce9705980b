// Bindings of the structured matcher; registered from bindings.cpp.
#include <pybind11/complex.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <complex>
#include <stdexcept>

#include "dispatch.hpp"
#include "separable.hpp"

namespace py = pybind11;
using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace mrfengine {

namespace {

void need(bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("match_separable: ") + what);
}

py::tuple match_separable(f32 x, f32 amplitude_t, f32 v, f32 u, f32 inv_norm, f32 u_coarse, f32 inv_coarse,
                          std::int64_t n_pairs, std::int64_t top_pairs, int n_threads) {
    need(x.ndim() == 2 && amplitude_t.ndim() == 2 && v.ndim() == 2 && u.ndim() == 2 && inv_norm.ndim() == 2 &&
             u_coarse.ndim() == 2 && inv_coarse.ndim() == 2,
         "all arrays must be 2-D");
    SeparableArgs a{};
    a.n_frames = x.shape(1);
    a.p_pad = amplitude_t.shape(1);
    a.rank = v.shape(1);
    a.q_pad = u.shape(1);
    a.n_coarse = u_coarse.shape(0);
    a.n_pairs = n_pairs;
    a.top_pairs = top_pairs;
    need(a.rank >= 1 && a.rank <= SEPARABLE_MAX_RANK, "rank must lie in [1, 12]");
    need(amplitude_t.shape(0) == a.n_frames && v.shape(0) == a.n_frames, "frame counts differ");
    need(a.p_pad % 16 == 0 && a.q_pad % 16 == 0, "pair and decay dimensions must be padded to 16");
    need(n_pairs >= 1 && n_pairs <= a.p_pad && top_pairs >= 1, "bad pair counts");
    need(u.shape(0) == a.rank && inv_norm.shape(0) == n_pairs && inv_norm.shape(1) == a.q_pad, "u/inv_norm shapes");
    need(u_coarse.shape(1) == a.rank && inv_coarse.shape(0) == a.n_coarse && inv_coarse.shape(1) == a.p_pad,
         "coarse shapes");
    need(n_pairs * a.q_pad < 2147483647LL, "too many atoms");
    a.amplitude_t = amplitude_t.data();
    a.v = v.data();
    a.u = u.data();
    a.inv_norm = inv_norm.data();
    a.u_coarse = u_coarse.data();
    a.inv_coarse = inv_coarse.data();
    const auto n = x.shape(0);
    py::array_t<std::int64_t> pair(n), decay(n);
    const float* xp = x.data();
    std::int64_t* pp = pair.mutable_data();
    std::int64_t* dp = decay.mutable_data();
    {
        py::gil_scoped_release release;
        kernels().match_separable_f32(xp, n, a, pp, dp, n_threads);
    }
    return py::make_tuple(pair, decay);
}

// Brute-force |<x, a>| arg-max of float64 or complex rows (the C++ API's
// blocked kernels, api/search.cpp): x (n x d), atoms (k x d), both float64,
// complex64 or complex128 (the same dtype).  <x, a> = sum_t x_t conj(a_t).
py::array_t<std::int64_t> match_argmax_any(py::array x, py::array atoms, int n_threads) {
    const auto dt = x.dtype();
    need(dt.is(atoms.dtype()), "x and atoms must have the same dtype");
    need(x.ndim() == 2 && atoms.ndim() == 2, "x and atoms must be 2-D");
    need(x.shape(1) == atoms.shape(1), "x and atoms must have the same number of columns");
    need((x.flags() & py::array::c_style) && (atoms.flags() & py::array::c_style), "arrays must be C-contiguous");
    need(atoms.shape(0) >= 1 && atoms.shape(0) < 2147483647LL && atoms.shape(1) >= 1, "bad atom count or width");
    const api::SearchTable& t = *kernels().search;
    api::SearchReal f = nullptr;
    if (dt.is(py::dtype::of<double>())) f = t.f64;
    else if (dt.is(py::dtype::of<std::complex<float>>())) f = t.c64;
    else if (dt.is(py::dtype::of<std::complex<double>>())) f = t.c128;
    need(f != nullptr, "dtype must be float64, complex64 or complex128");
    const auto n = x.shape(0);
    py::array_t<std::int64_t> index(n);
    std::int64_t* ip = index.mutable_data();
    const void* xp = x.data();
    const void* ap = atoms.data();
    const auto k = atoms.shape(0), d = atoms.shape(1);
    {
        py::gil_scoped_release release;
        f(xp, n, ap, k, d, ip, n_threads);
    }
    return index;
}

}  // namespace

void register_matching(py::module_& m) {
    m.def("match_argmax_any", &match_argmax_any, py::arg("x"), py::arg("atoms"), py::arg("n_threads") = 0,
          "Index of the row of atoms maximising |<x, a>| per row of x (float64, complex64 or complex128).");
    m.def("match_separable", &match_separable, py::arg("x"), py::arg("amplitude_t"), py::arg("v"), py::arg("u"),
          py::arg("inv_norm"), py::arg("u_coarse"), py::arg("inv_coarse"), py::arg("n_pairs"), py::arg("top_pairs"),
          py::arg("n_threads") = 0,
          "Best (pair, decay) per voxel of a separable dictionary: low-rank decays, coarse-to-fine (float32).");
}

}  // namespace mrfengine
