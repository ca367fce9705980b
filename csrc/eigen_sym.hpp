// Symmetric eigen-decomposition of L matrices at once, one per SIMD lane
// (L = 16 floats or 8 doubles with AVX-512, 8 or 4 with AVX2, 4 or 2 with
// SSE2): the eigen-solver of the MP-PCA kernel (mppca.cpp), which asks it
// for only the eigenpairs the Marchenko-Pastur rule needs, and of eigh_sym
// (all of them; bound as mrfengine._ext._eigh_sym so tests compare it with
// numpy.linalg.eigh).
//
// * tridiagonalize: Householder reduction of the packed lower triangle
//   (dsytd2's algorithm), each step's rank-2 update fused with the next step's
//   matrix-vector product; the reflectors stay in the matrix for
//   back_transform.
// * bisect: eigenvalues by Sturm-count bisection (dstebz's rule), NC chains
//   interleaved so the divisions pipeline and no lane waits for another to
//   converge (unlike QL: measured 4x faster in the MP-PCA kernel).
// * inverse_iteration: an eigenvector of the tridiagonal for a given
//   eigenvalue (dgttrf's partial pivoting), re-orthogonalised every step
//   against the vectors found before it, so clusters and repeated eigenvalues
//   are safe; back_transform takes it to the matrix's basis.
//
// Accuracy is that of any backward-stable method: eigenvalues to a few eps
// ||A||, eigenvectors to eps ||A|| / gap.  Callers scale the matrix to
// ||A|| ~ 1 first (the pivot floor of inverse iteration is relative).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "simd.hpp"

#ifndef MPPCA_STAGE
#define MPPCA_STAGE  // profiling builds define it as __attribute__((noinline))
#endif

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace eigen {

// Index of (i, j), i >= j, in packed lower storage.
inline std::int64_t packed(std::int64_t i, std::int64_t j) { return i * (i + 1) / 2 + j; }

template <typename T>
class SymEigLanes {
  public:
    using V = typename simd::Lanes<T>::V;
    using MV = typename simd::Lanes<T>::M;
    static constexpr int L = simd::Lanes<T>::L;

    explicit SymEigLanes(int n = 0) { resize(n); }

    void resize(int n) {
        n_ = n;
        const std::size_t m = static_cast<std::size_t>(n);
        amat_.assign(m * (m + 1) / 2, V{});
        for (auto* v : {&tau_, &d0_, &e0_, &e2_}) v->assign(m, V{});
        tmp_.assign(4 * m, V{});
        ymat_.assign(m * m, V{});
        spare_.assign(m, V{});
        piv_.assign(m, MV{});
    }

    int size() const { return n_; }

    // The matrix, packed lower (packed(i, j), i >= j); tridiagonalize
    // overwrites it with the reflectors.
    V* matrix() { return amat_.data(); }
    const V* matrix() const { return amat_.data(); }
    // The tridiagonal: diagonal d, off-diagonal e (e[n-1] = 0).
    const V* diagonal() const { return d0_.data(); }
    const V* off_diagonal() const { return e0_.data(); }
    // Gershgorin interval of the tridiagonal (after bounds()).
    V lower() const { return glo_; }
    V upper() const { return ghi_; }

    // Householder tridiagonalisation of matrix() in place: diagonal -> d,
    // off-diagonal -> e, reflector v_k below the subdiagonal of column k
    // (v_k[k+1] = 1 implicit), tau.  One pass over the trailing triangle per
    // step: the rank-2 update of step k is fused with the matrix-vector
    // product of step k + 1, whose reflector is formed first from the updated
    // column k + 1.
    MPPCA_STAGE void tridiagonalize() {
        const int n = n_;
        V* A = amat_.data();
        V* v = tmp_.data();  // v_k
        V* y = v + n;        // y_k
        V* vn = y + n;       // v_{k+1}
        V* yn = vn + n;      // y_{k+1}
        for (int i = 0; i < n; ++i) e0_[i] = tau_[i] = V{};
        if (n < 3) {
            for (int i = 0; i < n; ++i) d0_[i] = A[packed(i, i)];
            if (n == 2) e0_[0] = A[packed(1, 0)];
            return;
        }
        V tau = reflector(A, 0, v);
        for (int i = 1; i < n; ++i) y[i] = V{};
        for (int i = 1; i < n; ++i) {  // y = A22 v (first step only)
            const V* row = A + packed(i, 0);
            const V vi = v[i];
            V acc = row[i] * vi;
            for (int j = 1; j < i; ++j) {
                acc += row[j] * v[j];
                y[j] += row[j] * vi;
            }
            y[i] += acc;
        }
        for (int k = 0; k + 2 < n; ++k) {
            // y_k = tau A22 v - (tau/2)(y.v) v
            V dot{};
            for (int i = k + 1; i < n; ++i) {
                y[i] *= tau;
                dot += y[i] * v[i];
            }
            const V half = T(-0.5) * tau * dot;
            for (int i = k + 1; i < n; ++i) y[i] += half * v[i];
            d0_[k] = A[packed(k, k)];
            tau_[k] = tau;
            // Update column k + 1 (rows k+1..n-1) of the trailing block.
            const int k1 = k + 1;
            for (int i = k1; i < n; ++i) A[packed(i, k1)] -= v[i] * y[k1] + y[i] * v[k1];
            if (k1 + 2 > n - 1) {
                // Last step: the trailing 2 x 2 block.
                for (int i = k1 + 1; i < n; ++i)
                    for (int j = k1 + 1; j <= i; ++j) A[packed(i, j)] -= v[i] * y[j] + y[i] * v[j];
                break;
            }
            const V taun = reflector(A, k1, vn);
            for (int i = k1 + 1; i < n; ++i) yn[i] = V{};
            for (int i = k1 + 1; i < n; ++i) {
                V* row = A + packed(i, 0);
                const V vi = v[i], yi = y[i], vni = vn[i];
                V acc{};
                for (int j = k1 + 1; j < i; ++j) {
                    const V a = row[j] - (vi * y[j] + yi * v[j]);
                    row[j] = a;
                    acc += a * vn[j];
                    yn[j] += a * vni;
                }
                const V aii = row[i] - (vi * y[i] + yi * v[i]);
                row[i] = aii;
                yn[i] += acc + aii * vni;
            }
            std::swap(v, vn);
            std::swap(y, yn);
            tau = taun;
        }
        d0_[n - 2] = A[packed(n - 2, n - 2)];
        e0_[n - 2] = A[packed(n - 1, n - 2)];
        d0_[n - 1] = A[packed(n - 1, n - 1)];
    }

    // Gershgorin bounds, pivot floor and tolerance of bisect (dstebz's).
    void bounds() {
        const int n = n_;
        V glo = d0_[0], ghi = d0_[0], emax{};
        for (int i = 0; i < n; ++i) {
            e2_[i] = e0_[i] * e0_[i];
            emax = e2_[i] > emax ? e2_[i] : emax;
            const V rad = simd::vabs(e0_[i]) + (i > 0 ? simd::vabs(e0_[i - 1]) : V{});  // e0[n-1] = 0
            const V a = d0_[i] - rad, b = d0_[i] + rad;
            glo = a < glo ? a : glo;
            ghi = b > ghi ? b : ghi;
        }
        const V one = simd::splat(T(1));
        pivmin_ = (emax > one ? emax : one) * std::numeric_limits<T>::min();
        const V gmax = simd::vabs(glo) > simd::vabs(ghi) ? simd::vabs(glo) : simd::vabs(ghi);
        tol_ = T(2) * std::numeric_limits<T>::epsilon() * gmax + pivmin_;
        glo_ = glo;
        ghi_ = ghi;
    }

    // Eigenvalues of the tridiagonal with ascending indices kasc[c] (the same
    // for every lane), NC of them at once (call bounds() first).  lo/hi:
    // per-chain brackets (lower(), upper() for a fresh search), refined in
    // place; result = midpoint, in lo.
    template <int NC>
    MPPCA_STAGE void bisect(const int* kasc, V* lo, V* hi) const {
        const int n = n_;
        const V* d = d0_.data();
        const V* e2 = e2_.data();
        const V pivmin = pivmin_;
        const V tol = tol_;
        for (int it = 0; it < 4 * std::numeric_limits<T>::digits; ++it) {
            V mid[NC], q[NC];
            MV below[NC];
            for (int c = 0; c < NC; ++c) {
                mid[c] = (lo[c] + hi[c]) * T(0.5);
                V t = d[0] - mid[c];
                t = simd::vabs(t) < pivmin ? -pivmin : t;
                q[c] = t;
                below[c] = MV{} - (t < 0);
            }
            for (int i = 1; i < n; ++i) {
                const V di = d[i], ei = e2[i - 1];
                for (int c = 0; c < NC; ++c) {
                    V t = (di - mid[c]) - ei / q[c];
                    t = simd::vabs(t) < pivmin ? -pivmin : t;
                    q[c] = t;
                    below[c] -= (t < 0);
                }
            }
            MV open{};
            for (int c = 0; c < NC; ++c) {
                const MV up = below[c] <= kasc[c];  // at most k eigenvalues below mid: lambda_k >= mid
                lo[c] = up ? mid[c] : lo[c];
                hi[c] = up ? hi[c] : mid[c];
                open |= (hi[c] - lo[c]) > tol;
            }
            if (!simd::any(open)) break;
        }
        for (int c = 0; c < NC; ++c) lo[c] = (lo[c] + hi[c]) * T(0.5);
    }

    // The pivot floor of inverse_iteration: eps times the tridiagonal's
    // largest row sum (1 for a zero matrix, where any pivot gives the same
    // vectors).
    V pivot_floor() const {
        const int n = n_;
        V tiny{};
        for (int i = 0; i < n; ++i) {
            V row = simd::vabs(d0_[i]);
            if (i + 1 < n) row += simd::vabs(e0_[i]);
            if (i > 0) row += simd::vabs(e0_[i - 1]);
            tiny = row > tiny ? row : tiny;
        }
        tiny = tiny * std::numeric_limits<T>::epsilon();
        return tiny > 0 ? tiny : simd::splat(T(1));
    }

    // Unit eigenvector y of the tridiagonal for eigenvalue lam (per lane),
    // orthogonal to the j vectors found before (rows 0..j-1 of the vector
    // store); returns row j, where it is stored (callers may change it before
    // the next call: later vectors are orthogonalised against it as it is).
    MPPCA_STAGE V* inverse_iteration(V lam, V tiny, int j) {
        const int n = n_;
        V* y = ymat_.data() + static_cast<std::size_t>(j) * n;
        V* dl = tmp_.data();
        V* dd = dl + n;
        V* du = dd + n;
        V* du2 = du + n;
        MV* piv = piv_.data();
        for (int i = 0; i < n; ++i) {
            dd[i] = d0_[i] - lam;
            dl[i] = e0_[i];
            du[i] = e0_[i];
            du2[i] = V{};
        }
        // LU with partial pivoting (dgttrf).
        for (int i = 0; i + 1 < n; ++i) {
            const V di = dd[i], li = dl[i], ui = du[i], di1 = dd[i + 1];
            const V ui1 = i + 2 < n ? du[i + 1] : V{};
            const MV swap = simd::vabs(di) < simd::vabs(li);
            const V fact_ns = li / (di != 0 ? di : simd::splat(T(1)));
            const V fact_s = di / (li != 0 ? li : simd::splat(T(1)));
            dl[i] = swap ? fact_s : fact_ns;
            dd[i] = swap ? li : di;
            du[i] = swap ? di1 : ui;
            dd[i + 1] = swap ? ui - fact_s * di1 : di1 - fact_ns * ui;
            if (i + 2 < n) {
                du2[i] = swap ? ui1 : V{};
                du[i + 1] = swap ? -fact_s * ui1 : ui1;
            }
            piv[i] = swap;
        }
        for (int i = 0; i < n; ++i) {
            const MV small = simd::vabs(dd[i]) < tiny;
            dd[i] = small ? (dd[i] >= 0 ? tiny : -tiny) : dd[i];
        }
        // Start from a fixed, generic vector.
        for (int i = 0; i < n; ++i)
            y[i] = simd::splat(static_cast<T>(1.0 + 0.5 * std::fmod(0.6180339887 * (i + 1), 1.0)));
        for (int it = 0; it < 3; ++it) {
            orthonormalize(y, j);
            for (int i = 0; i + 1 < n; ++i) {
                const V yi = y[i], yi1 = y[i + 1];
                const MV swap = piv[i];
                y[i] = swap ? yi1 : yi;
                y[i + 1] = swap ? yi - dl[i] * yi1 : yi1 - dl[i] * yi;
            }
            y[n - 1] = y[n - 1] / dd[n - 1];
            if (n > 1) y[n - 2] = (y[n - 2] - du[n - 2] * y[n - 1]) / dd[n - 2];
            for (int i = n - 3; i >= 0; --i) y[i] = (y[i] - du[i] * y[i + 1] - du2[i] * y[i + 2]) / dd[i];
        }
        orthonormalize(y, j);
        return y;
    }

    // u = H_0 H_1 ... H_{n-3} y: a tridiagonal-basis vector in the matrix's basis.
    MPPCA_STAGE void back_transform(const V* y, V* u) const {
        const int n = n_;
        const V* A = amat_.data();
        for (int i = 0; i < n; ++i) u[i] = y[i];
        for (int k = n - 3; k >= 0; --k) {
            V s = u[k + 1];
            for (int i = k + 2; i < n; ++i) s += A[packed(i, k)] * u[i];
            s *= tau_[k];
            u[k + 1] -= s;
            for (int i = k + 2; i < n; ++i) u[i] -= s * A[packed(i, k)];
        }
    }

  private:
    int n_ = 0;
    std::vector<V> amat_, tau_, d0_, e0_, e2_, tmp_, ymat_, spare_;
    std::vector<MV> piv_;
    V pivmin_{}, tol_{}, glo_{}, ghi_{};

    // Reflector annihilating A(k+2.., k) (dlarfg): v (support k+1..n-1,
    // v[k+1] = 1) is also stored below the subdiagonal of column k; the new
    // subdiagonal beta goes to e[k]; returns tau.
    V reflector(V* A, int k, V* v) {
        const int n = n_;
        const V alpha = A[packed(k + 1, k)];
        V xn2{};
        for (int i = k + 2; i < n; ++i) xn2 += A[packed(i, k)] * A[packed(i, k)];
        const MV trivial = xn2 == 0;
        const V mag = simd::vsqrt(alpha * alpha + xn2);
        const V beta = trivial ? alpha : (alpha >= 0 ? -mag : mag);
        const V tau = trivial ? V{} : (beta - alpha) / beta;
        const V diff = alpha - beta;
        const V sc = trivial ? V{} : simd::splat(T(1)) / (trivial ? simd::splat(T(1)) : diff);
        v[k + 1] = simd::splat(T(1));
        for (int i = k + 2; i < n; ++i) {
            v[i] = A[packed(i, k)] * sc;
            A[packed(i, k)] = v[i];
        }
        e0_[k] = beta;
        return tau;
    }

    // y minus its components along rows 0..j-1 of the vector store (one
    // Gram-Schmidt pass); returns |y|^2 after.
    V project_out(V* y, int j) const {
        const int n = n_;
        for (int jj = 0; jj < j; ++jj) {
            const V* u = ymat_.data() + static_cast<std::size_t>(jj) * n;
            V dot{};
            for (int i = 0; i < n; ++i) dot += u[i] * y[i];
            for (int i = 0; i < n; ++i) y[i] -= dot * u[i];
        }
        V nrm2{};
        for (int i = 0; i < n; ++i) nrm2 += y[i] * y[i];
        return nrm2;
    }

    // y orthogonal to rows 0..j-1 of the vector store, unit length.  Lanes
    // where the pass removed more than half of |y|^2 get a second pass
    // (Kahan's "twice is enough"): inside a cluster of equal eigenvalues y is
    // nearly in the span, and one pass leaves it far from orthogonal.  A lane
    // whose y lies in their span (what is left is rounding, or exactly zero:
    // an eigenvalue repeated, as in a zero matrix, where the start vector
    // gives the same y for every j) restarts from a vector that differs per
    // j, so it still gets a unit vector orthogonal to the ones before (the
    // iterations after it pull that towards the eigenspace).  Without this,
    // code built without FMA (the x86-64 baseline) returned zero vectors for
    // a zero matrix: FMA's rounding left noise that happened to rescue it.
    void orthonormalize(V* y, int j) {
        const int n = n_;
        V before{};
        for (int i = 0; i < n; ++i) before += y[i] * y[i];
        V nrm = project_out(y, j);
        V* r = spare_.data();
        const MV again = nrm < before * T(0.5);
        if (j > 0 && simd::any(again)) {
            for (int i = 0; i < n; ++i) r[i] = y[i];
            const V rn = project_out(r, j);
            for (int i = 0; i < n; ++i) y[i] = again ? r[i] : y[i];
            nrm = again ? rn : nrm;
        }
        const T rel = T(4 * n) * std::numeric_limits<T>::epsilon();
        const MV lost = nrm <= before * (rel * rel);
        if (simd::any(lost)) {
            for (int i = 0; i < n; ++i)
                r[i] = simd::splat(static_cast<T>(
                    std::fmod(0.7548776662 * (i + 1) + 0.5698402910 * (j + 1) * (i + 1) * (i + 1), 1.0) - 0.5));
            project_out(r, j);
            const V rn = project_out(r, j);  // twice is enough (Kahan)
            for (int i = 0; i < n; ++i) y[i] = lost ? r[i] : y[i];
            nrm = lost ? rn : nrm;
        }
        nrm = simd::vsqrt(nrm);
        const V inv = nrm > 0 ? simd::splat(T(1)) / (nrm > 0 ? nrm : simd::splat(T(1))) : V{};
        for (int i = 0; i < n; ++i) y[i] *= inv;
    }
};

// All eigenvalues (ascending) and unit eigenvectors of `count` symmetric
// n x n matrices (C order, lower triangle read), like numpy.linalg.eigh:
// values (count, n), vectors (count, n, n) with eigenvector k in column k.
// Each matrix is scaled by a power of two to a largest entry in [0.5, 1)
// (exact) before the solve.  T is float or double.
template <typename T>
void eigh_sym(const T* a, std::int64_t count, int n, T* values, T* vectors);

}  // namespace eigen
}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
