// See eigen_sym.hpp: the full decomposition, L matrices per pass.  Compiled
// once per ISA level (isa.hpp).
#include "isa.hpp"  // first: the level's namespace, for the headers' kernel declarations
#include "eigen_sym.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace eigen {

template <typename T>
void eigh_sym(const T* a, std::int64_t count, int n, T* values, T* vectors) {
    using Solver = SymEigLanes<T>;
    using V = typename Solver::V;
    constexpr int L = Solver::L;
    constexpr int NC = 8;  // bisection chains per pass, as in the MP-PCA kernel
    if (n <= 0) return;
    const std::size_t nn = static_cast<std::size_t>(n) * n;
    Solver solver(n);
    std::vector<V> lam(n), u(nn);
    std::vector<T> sorted(n);
    int exponent[L];
    for (std::int64_t g = 0; g < count; g += L) {
        const int nl = static_cast<int>(std::min<std::int64_t>(L, count - g));
        V* A = solver.matrix();
        for (int l = 0; l < L; ++l) {
            exponent[l] = 0;
            if (l >= nl) continue;
            const T* m = a + (g + l) * static_cast<std::int64_t>(nn);
            T peak = 0;
            for (int i = 0; i < n; ++i)
                for (int j = 0; j <= i; ++j) peak = std::max(peak, std::abs(m[i * n + j]));
            if (peak > 0) std::frexp(peak, &exponent[l]);
        }
        for (int i = 0; i < n; ++i)
            for (int j = 0; j <= i; ++j) {
                V& x = A[packed(i, j)];
                for (int l = 0; l < L; ++l)
                    x[l] = l < nl ? std::ldexp(a[(g + l) * static_cast<std::int64_t>(nn) + i * n + j], -exponent[l])
                                  : T(0);
            }
        solver.tridiagonalize();
        solver.bounds();
        for (int k0 = 0; k0 < n; k0 += NC) {
            int kasc[NC];
            V lo[NC], hi[NC];
            for (int c = 0; c < NC; ++c) {
                kasc[c] = std::min(k0 + c, n - 1);
                lo[c] = solver.lower();
                hi[c] = solver.upper();
            }
            solver.template bisect<NC>(kasc, lo, hi);
            for (int c = 0; c < NC && k0 + c < n; ++c) lam[k0 + c] = lo[c];
        }
        // Chains for equal eigenvalues converge independently, to within the
        // bisection tolerance of each other: sort, so the order is ascending.
        for (int l = 0; l < nl; ++l) {
            for (int k = 0; k < n; ++k) sorted[k] = lam[k][l];
            std::sort(sorted.begin(), sorted.end());
            for (int k = 0; k < n; ++k) lam[k][l] = sorted[k];
        }
        // Eigenvectors from the largest eigenvalue down (the MP-PCA kernel's
        // order), each orthogonal to those before it.
        const V tiny = solver.pivot_floor();
        for (int j = 0; j < n; ++j) solver.back_transform(solver.inverse_iteration(lam[n - 1 - j], tiny, j), &u[j * n]);
        for (int l = 0; l < nl; ++l) {
            T* w = values + (g + l) * n;
            T* v = vectors + (g + l) * static_cast<std::int64_t>(nn);
            for (int k = 0; k < n; ++k) {
                w[k] = std::ldexp(lam[k][l], exponent[l]);
                const V* col = &u[static_cast<std::size_t>(n - 1 - k) * n];
                for (int i = 0; i < n; ++i) v[i * n + k] = col[i][l];
            }
        }
    }
}

template void eigh_sym<float>(const float*, std::int64_t, int, float*, float*);
template void eigh_sym<double>(const double*, std::int64_t, int, double*, double*);

}  // namespace eigen
}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
