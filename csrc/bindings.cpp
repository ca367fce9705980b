// Thin pybind11 bindings: shape checks live in the Python wrappers
// (mrfengine/matching/_cpp.py); these only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <omp.h>

#include <stdexcept>

#include "match.hpp"

namespace py = pybind11;
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
        mrfengine::match_argmax_f32(xp, n, ap, k, t, ip, sp, n_threads);
    }
    return py::make_tuple(index, score);
}

}  // namespace

PYBIND11_MODULE(_ext, m) {
    m.doc() = "mrfengine's C++/OpenMP kernels (numeric only; see mrfengine.matching for the API).";
    m.def("match_argmax", &match_argmax, py::arg("x"), py::arg("atoms"), py::arg("n_threads") = 0,
          "Index and |score| of the best unit-norm atom per voxel (float32, fused, OpenMP).");
    m.def("max_threads", []() { return omp_get_max_threads(); }, "OpenMP's default thread count.");
}
