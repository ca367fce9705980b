// See mppca.hpp.  How the work is laid out (M frames, window wa x wb x wc):
//
// * SIMD across windows: a "lane group" is L consecutive window starts along
//   the c axis (L floats or doubles, one vector register), so every
//   step of the per-window linear algebra is one vector instruction for L
//   windows and no lane ever waits for another's data.
// * A work item is a block of window planes (fixed a); inside it, one lane
//   group ("chunk" of c) sweeps the b axis.  Window sums reuse overlapping
//   sums: per data row b, Q_b = sum over the wa rows (a..a+wa-1, b) of the
//   outer products x x^T (one product per voxel and window plane); the
//   window's Gram is then the sum of the wb ring slots Q_b and of wc
//   neighbouring columns.  Data are shifted by the sweep's mean before the
//   products, so float32 sums do not cancel catastrophically.
// * Per lane group, the eigen-solver of eigen_sym.hpp (one window per SIMD
//   lane): Householder tridiagonalisation of the centred covariance; only
//   the eigenvalues the MP rule needs -- the smallest, then the largest down
//   to the first below the MP edge -- by Sturm-count bisection, 8 chains
//   interleaved; the classification per lane in double; inverse iteration
//   for the p signal eigenvectors, and the back-transformation.
// * Windows whose covariance is at rounding level (constant or zero
//   regions) are recomputed two-pass in double, so they give p = 0 and
//   sigma = 0 exactly as the reference does.
// * Recombination without scattering 125 patch estimates: each window's
//   weighted projector F = theta U U^T (and offset g = theta m - F m) is
//   box-summed into the voxels it covers, column-wise inside the lane group
//   and row-wise through a ring of wb window lines; a finished voxel row then
//   gets (sum F) x + sum g for each of the wa planes of the window block.
// * Work items of even and odd block index run in two phases, so blocks that
//   run concurrently never write the same voxel plane (blocks are at least
//   wa - 1 planes thick).
//
// Compiled once per ISA level (isa.hpp): L is the level's lane count.
#include "isa.hpp"  // first: the level's namespace, for the headers' kernel declarations
#include "mppca.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "eigen_sym.hpp"
#include "simd.hpp"

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {
namespace {

using eigen::packed;
using simd::any;
using simd::load;
using simd::splat;
using simd::store;
using simd::vabs;

template <typename T>
class Denoiser {
    using Eig = eigen::SymEigLanes<T>;
    using V = typename Eig::V;
    using MV = typename Eig::MV;
    static constexpr int L = Eig::L;

  public:
    Denoiser(const T* data, T* out, T* theta_sum, T* var_sum, const std::uint8_t* active, std::int16_t* ncomp,
             const MppcaGeometry& g, MpEstimator est)
        : data_(data), out_(out), theta_sum_(theta_sum), var_sum_(var_sum), active_(active), ncomp_(ncomp), g_(g),
          est_(est) {
        A_ = g.extent[0];
        B_ = g.extent[1];
        C_ = g.extent[2];
        n_ = static_cast<int>(g.n_frames);
        wa_ = static_cast<int>(g.window[0]);
        wb_ = static_cast<int>(g.window[1]);
        wc_ = static_cast<int>(g.window[2]);
        Aw_ = A_ - wa_ + 1;
        Bw_ = B_ - wb_ + 1;
        Cw_ = C_ - wc_ + 1;
        n_samples_ = static_cast<std::int64_t>(wa_) * wb_ * wc_;
        const std::int64_t n_eff = n_samples_ - 1;
        r_ = static_cast<int>(std::min<std::int64_t>(n_, n_eff));
        q_ = std::max<std::int64_t>(n_, n_eff);
        np_ = n_ * (n_ + 1) / 2;
        nq_ = np_ + n_;
        ne_ = np_ + n_ + 2;
        ncv_ = (L + wc_ - 1 + L - 1) / L;
        ncp_ = ncv_ * L;
        padlen_ = wc_ - 1 + ncp_;
    }

    std::int64_t window_planes() const { return Aw_; }

    // Per-thread buffers.
    struct Work {
        std::vector<T> dring, ybuf, qring, psum, gring, fpad, rrow, ref;
        std::vector<V> s, umat, xv, yv;
        Eig eig;                      // the window covariances, one per lane
        std::vector<char> slot_nonzero;
        std::vector<T> desc;          // L x n: each lane's eigenvalues, descending
    };

    void init(Work& w) const {
        const std::size_t n = n_;
        w.dring.assign(static_cast<std::size_t>(wb_) * wa_ * n * ncp_, T(0));
        w.ybuf.assign(static_cast<std::size_t>(wa_) * n * ncp_, T(0));
        w.qring.assign(static_cast<std::size_t>(wb_) * nq_ * ncp_, T(0));
        w.psum.assign(static_cast<std::size_t>(nq_) * ncp_, T(0));
        w.gring.assign(static_cast<std::size_t>(wb_) * ne_ * ncp_, T(0));
        w.fpad.assign(static_cast<std::size_t>(ne_) * padlen_, T(0));
        w.rrow.assign(static_cast<std::size_t>(ne_) * ncp_, T(0));
        w.ref.assign(n, T(0));
        w.s.assign(nq_, V{});
        w.eig.resize(n_);
        w.xv.assign(static_cast<std::size_t>(std::max(wa_, 8)) * n, V{});
        w.yv.assign(static_cast<std::size_t>(std::max(wa_, 8)) * n, V{});
        w.umat.assign(n * n, V{});
        w.slot_nonzero.assign(wb_, 0);
        w.desc.assign(static_cast<std::size_t>(L) * n, T(0));
    }

    // All window planes a in [a0, a1).
    void run_block(Work& w, std::int64_t a0, std::int64_t a1) const {
        for (std::int64_t a = a0; a < a1; ++a)
            for (std::int64_t c0 = 0; c0 < Cw_; c0 += L) sweep(w, a, c0);
    }

  private:
    const T* data_;
    T* out_;
    T* theta_sum_;
    T* var_sum_;
    const std::uint8_t* active_;
    std::int16_t* ncomp_;
    MppcaGeometry g_;
    MpEstimator est_;
    std::int64_t A_, B_, C_, Aw_, Bw_, Cw_, n_samples_, q_;
    int n_, wa_, wb_, wc_, r_, np_, nq_, ne_, ncv_, ncp_, padlen_;

    bool window_active(std::int64_t a, std::int64_t b, std::int64_t c) const {
        return active_ == nullptr || active_[(a * Bw_ + b) * Cw_ + c] != 0;
    }

    // ---- stage 1: data rows and window sums --------------------------------

    MPPCA_STAGE void sweep(Work& w, std::int64_t a, std::int64_t c0) const {
        const int nl = static_cast<int>(std::min<std::int64_t>(L, Cw_ - c0));
        const int ncols = nl + wc_ - 1;
        bool any_active = active_ == nullptr;
        for (std::int64_t b = 0; b < Bw_ && !any_active; ++b)
            for (int l = 0; l < nl && !any_active; ++l) any_active = window_active(a, b, c0 + l);
        if (!any_active) return;
        sweep_mean(w, a, c0, ncols);
        std::fill(w.slot_nonzero.begin(), w.slot_nonzero.end(), 0);
        for (std::int64_t b = 0; b < B_; ++b) {
            const int slot = static_cast<int>(b % wb_);
            load_row(w, a, b, c0, ncols, slot);
            row_products(w, slot, ncols);
            if (b >= wb_ - 1) {
                const std::int64_t bw = b - wb_ + 1;
                window_line(w, a, bw, c0, nl);
                finish_row(w, a, bw, c0, ncols);
            }
        }
        for (std::int64_t b = Bw_; b < B_; ++b) finish_row(w, a, b, c0, ncols);
    }

    MPPCA_STAGE void sweep_mean(Work& w, std::int64_t a, std::int64_t c0, int ncols) const {
        std::vector<double> acc(n_, 0.0);
        for (int da = 0; da < wa_; ++da)
            for (std::int64_t b = 0; b < B_; ++b) {
                const T* base = data_ + (a + da) * g_.in_stride[0] + b * g_.in_stride[1] + c0 * g_.in_stride[2];
                for (int col = 0; col < ncols; ++col)
                    for (int t = 0; t < n_; ++t) acc[t] += base[col * g_.in_stride[2] + t * g_.in_stride[3]];
            }
        const double count = static_cast<double>(wa_) * B_ * ncols;
        for (int t = 0; t < n_; ++t) w.ref[t] = static_cast<T>(acc[t] / count);
    }

    T* dring(Work& w, int slot, int da) const {
        return w.dring.data() + (static_cast<std::size_t>(slot) * wa_ + da) * n_ * ncp_;
    }

    MPPCA_STAGE void load_row(Work& w, std::int64_t a, std::int64_t b, std::int64_t c0, int ncols, int slot) const {
        const std::int64_t sc = g_.in_stride[2], st = g_.in_stride[3];
        for (int da = 0; da < wa_; ++da) {
            const T* base = data_ + (a + da) * g_.in_stride[0] + b * g_.in_stride[1] + c0 * sc;
            T* dst = dring(w, slot, da);
            if (std::abs(st) <= std::abs(sc)) {
                for (int col = 0; col < ncols; ++col)
                    for (int t = 0; t < n_; ++t) dst[t * ncp_ + col] = base[col * sc + t * st];
            } else {
                for (int t = 0; t < n_; ++t)
                    for (int col = 0; col < ncols; ++col) dst[t * ncp_ + col] = base[col * sc + t * st];
            }
            for (int t = 0; t < n_; ++t)
                for (int col = ncols; col < ncp_; ++col) dst[t * ncp_ + col] = T(0);
        }
    }

    // Q_slot = sum over the wa rows of y y^T (packed) and of y, y = x - ref.
    MPPCA_STAGE void row_products(Work& w, int slot, int ncols) const {
        for (int da = 0; da < wa_; ++da) {
            const T* src = dring(w, slot, da);
            T* y = w.ybuf.data() + static_cast<std::size_t>(da) * n_ * ncp_;
            for (int t = 0; t < n_; ++t) {
                const T r = w.ref[t];
                for (int col = 0; col < ncols; ++col) y[t * ncp_ + col] = src[t * ncp_ + col] - r;
                for (int col = ncols; col < ncp_; ++col) y[t * ncp_ + col] = T(0);
            }
        }
        T* q = w.qring.data() + static_cast<std::size_t>(slot) * nq_ * ncp_;
        const std::size_t dstride = static_cast<std::size_t>(n_) * ncp_;
        V yi[8];
        for (int cv = 0; cv < ncv_; ++cv) {
            const T* y0 = w.ybuf.data() + cv * L;
            for (int i = 0; i < n_; ++i) {
                for (int da0 = 0; da0 < wa_; da0 += 8) {
                    const int nd = std::min(8, wa_ - da0);
                    for (int k = 0; k < nd; ++k) yi[k] = load(y0 + (da0 + k) * dstride + i * ncp_);
                    for (int j = 0; j <= i; ++j) {
                        V acc = da0 == 0 ? V{} : load(q + packed(i, j) * ncp_ + cv * L);
                        for (int k = 0; k < nd; ++k) acc += yi[k] * load(y0 + (da0 + k) * dstride + j * ncp_);
                        store(q + packed(i, j) * ncp_ + cv * L, acc);
                    }
                }
                V s1{};
                for (int da = 0; da < wa_; ++da) s1 += load(y0 + da * dstride + i * ncp_);
                store(q + (np_ + i) * ncp_ + cv * L, s1);
            }
        }
    }

    // Window sums of the L windows of line bw: S[x][lane].
    MPPCA_STAGE void window_sums(Work& w) const {
        T* ps = w.psum.data();
        const std::size_t slot_stride = static_cast<std::size_t>(nq_) * ncp_;
        for (std::size_t x = 0; x < static_cast<std::size_t>(nq_) * ncv_; ++x) {
            V acc = load(w.qring.data() + x * L);
            for (int s = 1; s < wb_; ++s) acc += load(w.qring.data() + s * slot_stride + x * L);
            store(ps + x * L, acc);
        }
        for (int x = 0; x < nq_; ++x) {
            const T* p = ps + static_cast<std::size_t>(x) * ncp_;
            V acc = load(p);
            for (int dc = 1; dc < wc_; ++dc) acc += load(p + dc);
            w.s[x] = acc;
        }
    }

    // ---- stage 2: per-window eigen-analysis ---------------------------------

    MPPCA_STAGE void window_line(Work& w, std::int64_t a, std::int64_t bw, std::int64_t c0, int nl) const {
        const int slot = static_cast<int>(bw % wb_);
        bool group_active = false;
        for (int l = 0; l < nl; ++l) group_active = group_active || window_active(a, bw, c0 + l);
        std::int16_t* nc = ncomp_ + (a * Bw_ + bw) * Cw_ + c0;
        if (!group_active) {
            for (int l = 0; l < nl; ++l) nc[l] = -1;
            w.slot_nonzero[slot] = 0;
            return;
        }
        window_sums(w);
        const int n = n_;
        const T inv_n = T(1) / static_cast<T>(n_samples_);
        const T inv_eff = T(1) / static_cast<T>(n_samples_ - 1);
        // Centred covariance, scaled per lane so its largest diagonal entry is 1.
        V* amat = w.eig.matrix();
        for (int i = 0; i < n; ++i) {
            const V si = w.s[np_ + i];
            for (int j = 0; j <= i; ++j) amat[packed(i, j)] = (w.s[packed(i, j)] - si * (w.s[np_ + j] * inv_n)) * inv_eff;
        }
        exact_where_imprecise(w, a, bw, c0, nl);
        V scale{};
        for (int i = 0; i < n; ++i) scale = amat[packed(i, i)] > scale ? amat[packed(i, i)] : scale;
        scale = scale > 0 ? scale : splat(T(1));
        const V inv_scale = splat(T(1)) / scale;
        for (int x = 0; x < np_; ++x) amat[x] *= inv_scale;

        // Mean square of each window, sum_t ((N-1)/N C_tt + m_t^2), for the zero floor.
        V ev{};
        const T biased = static_cast<T>(n_samples_ - 1) * inv_n;
        for (int i = 0; i < n; ++i) {
            const V m = w.s[np_ + i] * inv_n + w.ref[i];
            ev += amat[packed(i, i)] * scale * biased + m * m;
        }
        double energy[L];
        for (int l = 0; l < L; ++l) energy[l] = static_cast<double>(ev[l]);
        w.eig.tridiagonalize();
        int p[L];
        double sigma2[L];
        eigen_classify(w, scale, energy, nl, p, sigma2);
        T theta[L], tvar[L];
        int pmax = 0;
        for (int l = 0; l < L; ++l) {
            if (l >= nl) {
                p[l] = 0;
                theta[l] = tvar[l] = T(0);
                continue;
            }
            const double th = 1.0 / (1.0 + p[l]);
            theta[l] = static_cast<T>(th);
            tvar[l] = static_cast<T>(th * sigma2[l]);
            nc[l] = window_active(a, bw, c0 + l) ? static_cast<std::int16_t>(p[l]) : std::int16_t(-1);
            pmax = std::max(pmax, p[l]);
        }

        // Signal eigenvectors (tridiagonal basis), then back to the frame basis.
        const V tiny = w.eig.pivot_floor();
        for (int j = 0; j < pmax; ++j) {
            V lam{};
            MV keep{};
            for (int l = 0; l < L; ++l) {
                lam[l] = w.desc[static_cast<std::size_t>(l) * n + j];
                keep[l] = j < p[l] ? -1 : 0;
            }
            V* y = w.eig.inverse_iteration(lam, tiny, j);
            for (int i = 0; i < n; ++i) y[i] = keep ? y[i] : V{};
            w.eig.back_transform(y, w.umat.data() + static_cast<std::size_t>(j) * n);
        }

        // Weighted projector F (packed), offset g, theta, theta * sigma^2 -> fpad.
        V th{}, tv{};
        for (int l = 0; l < L; ++l) {
            th[l] = theta[l];
            tv[l] = tvar[l];
        }
        std::vector<V>& m = w.xv;  // window means (un-shifted)
        for (int i = 0; i < n; ++i) m[i] = w.s[np_ + i] * inv_n + w.ref[i];
        T* fp = w.fpad.data() + (wc_ - 1);
        for (int i = 0; i < n; ++i)
            for (int k = 0; k <= i; ++k) {
                V acc{};
                for (int j = 0; j < pmax; ++j) {
                    const V* u = w.umat.data() + static_cast<std::size_t>(j) * n;
                    acc += u[i] * u[k];
                }
                store(fp + packed(i, k) * padlen_, acc * th);
            }
        for (int i = 0; i < n; ++i) {
            V acc = th * m[i];
            for (int k = 0; k < n; ++k) {
                const int x = i >= k ? static_cast<int>(packed(i, k)) : static_cast<int>(packed(k, i));
                acc -= load(fp + static_cast<std::size_t>(x) * padlen_) * m[k];
            }
            store(fp + static_cast<std::size_t>(np_ + i) * padlen_, acc);
        }
        store(fp + static_cast<std::size_t>(np_ + n) * padlen_, th);
        store(fp + static_cast<std::size_t>(np_ + n + 1) * padlen_, tv);

        // Column box: G[col] = sum_{dc < wc} F[col - dc] (fpad holds zeros around the L lanes).
        T* gslot = w.gring.data() + static_cast<std::size_t>(slot) * ne_ * ncp_;
        for (int x = 0; x < ne_; ++x) {
            const T* src = w.fpad.data() + static_cast<std::size_t>(x) * padlen_ + (wc_ - 1);
            for (int cv = 0; cv < ncv_; ++cv) {
                V acc{};
                for (int dc = 0; dc < wc_; ++dc) acc += load(src + cv * L - dc);
                store(gslot + static_cast<std::size_t>(x) * ncp_ + cv * L, acc);
            }
        }
        w.slot_nonzero[slot] = 1;
    }

    // Windows whose covariance trace is below 2^8 eps times their mean square
    // (of the shifted data: the scale of the rounding in the one-pass sums)
    // are constant or nearly so; their covariance is recomputed two-pass in
    // double from the data, so a constant window gives exactly 0.
    MPPCA_STAGE void exact_where_imprecise(Work& w, std::int64_t a, std::int64_t bw, std::int64_t c0, int nl) const {
        const int n = n_;
        const T limit = T(256) * std::numeric_limits<T>::epsilon() / static_cast<T>(n_samples_);
        V* amat = w.eig.matrix();
        V trace{}, energy{};
        for (int i = 0; i < n; ++i) {
            trace += amat[packed(i, i)];
            energy += w.s[packed(i, i)];
        }
        const MV flagged = trace <= limit * energy;
        if (!any(flagged)) return;
        std::vector<double> patch(static_cast<std::size_t>(n_samples_) * n), mean(n);
        for (int l = 0; l < nl; ++l) {
            if (!flagged[l]) continue;
            std::size_t v = 0;
            for (int da = 0; da < wa_; ++da)
                for (int db = 0; db < wb_; ++db)
                    for (int dc = 0; dc < wc_; ++dc, ++v) {
                        const T* x = data_ + (a + da) * g_.in_stride[0] + (bw + db) * g_.in_stride[1] +
                                     (c0 + l + dc) * g_.in_stride[2];
                        for (int t = 0; t < n; ++t) patch[v * n + t] = static_cast<double>(x[t * g_.in_stride[3]]);
                    }
            for (int t = 0; t < n; ++t) {
                double acc = 0.0;
                for (std::int64_t u = 0; u < n_samples_; ++u) acc += patch[u * n + t];
                mean[t] = acc / static_cast<double>(n_samples_);
            }
            for (std::int64_t u = 0; u < n_samples_; ++u)
                for (int t = 0; t < n; ++t) patch[u * n + t] -= mean[t];
            for (int i = 0; i < n; ++i)
                for (int j = 0; j <= i; ++j) {
                    double acc = 0.0;
                    for (std::int64_t u = 0; u < n_samples_; ++u) acc += patch[u * n + i] * patch[u * n + j];
                    amat[packed(i, j)][l] = static_cast<T>(acc / static_cast<double>(n_samples_ - 1));
                }
        }
    }

    // Eigenvalues as far as the Marchenko-Pastur rule needs them, and the
    // rule itself, per lane: the smallest of the r largest eigenvalues, the
    // trace, then the largest ones in batches until every lane has accepted
    // its noise count.  energy: the windows' mean squares (see
    // _common.classify).  Fills w.desc (lane-major, descending, scaled) for
    // j < p, p, sigma2 (data units).
    MPPCA_STAGE void eigen_classify(Work& w, V scale, const double* energy, int nl, int* p, double* sigma2) const {
        constexpr int NC = 8;  // interleaved bisection chains: the smallest + 7 largest, then 8 more at a time
        const int n = n_, r = r_;
        w.eig.bounds();
        const V glo = w.eig.lower(), ghi = w.eig.upper();
        const V* d0 = w.eig.diagonal();
        double trace[L], lam_min[L], topsum[L], floor[L], edge[L];
        int state[L];  // 0: looking for the noise count, 1: counting eigenvalues above the edge, 2: done
        const double q = static_cast<double>(q_);
        const double edge_factor = (1.0 + std::sqrt(r / q)) * (1.0 + std::sqrt(r / q));
        for (int l = 0; l < L; ++l) {
            trace[l] = 0.0;
            for (int i = 0; i < n; ++i) trace[l] += static_cast<double>(d0[i][l]);
            trace[l] = std::max(trace[l] * static_cast<double>(scale[l]), 0.0);
            topsum[l] = 0.0;
            state[l] = l >= nl ? 2 : 0;
            p[l] = 0;
            sigma2[l] = 0.0;
        }
        int j0 = 0;  // next descending index to compute
        bool first = true;
        while (true) {
            int kasc[NC];
            int nj = 0;  // descending indices in this batch
            int c = 0;
            if (first) kasc[c++] = n - r;  // smallest of the r largest
            for (; c < NC && j0 + nj < r; ++c, ++nj) kasc[c] = n - 1 - (j0 + nj);
            for (; c < NC; ++c) kasc[c] = kasc[c - 1];  // padding chains: repeat the last
            V lo[NC], hi[NC];
            for (int cc = 0; cc < NC; ++cc) {
                lo[cc] = glo;
                hi[cc] = ghi;
            }
            w.eig.template bisect<NC>(kasc, lo, hi);
            const int off = first ? 1 : 0;
            for (int l = 0; l < L; ++l) {
                if (first) {
                    // Eigenvalues at or below n (eps lambda_max + eps64 E) are zero to working precision.
                    const double top = nj > 0 ? static_cast<double>(lo[1][l]) * scale[l] : 0.0;
                    floor[l] = n * (static_cast<double>(std::numeric_limits<T>::epsilon()) * top +
                                    std::numeric_limits<double>::epsilon() * energy[l]);
                    const double lm = static_cast<double>(lo[0][l]) * scale[l];
                    lam_min[l] = lm > floor[l] ? lm : 0.0;
                }
                T* desc = w.desc.data() + static_cast<std::size_t>(l) * n;
                for (int jj = 0; jj < nj; ++jj) desc[j0 + jj] = lo[off + jj][l];
                for (int jj = 0; jj < nj && state[l] != 2; ++jj) {
                    const int j = j0 + jj;
                    const double lk = static_cast<double>(desc[j]) * scale[l];
                    const double lamk = lk > floor[l] ? lk : 0.0;
                    if (state[l] == 1) {  // counting down the signal eigenvalues
                        if (lamk > edge[l]) {
                            ++p[l];
                        } else {
                            state[l] = 2;
                        }
                        continue;
                    }
                    const int k = r - j;  // candidate noise count
                    // Sum of the k smallest; all zero to working precision when the largest of them is.
                    const double csum = lamk > 0.0 ? std::max(trace[l] - topsum[l], 0.0) : 0.0;
                    const double gamma = est_ == MpEstimator::Veraart ? k / q : k / (q - r + k);
                    if (k == 1 || lamk - lam_min[l] <= 4.0 * std::sqrt(gamma) * (csum / k)) {
                        sigma2[l] = csum / k;
                        edge[l] = sigma2[l] * edge_factor;
                        // Retained: the eigenvalues above the Marchenko-Pastur edge, counted from the top.
                        p[l] = 0;
                        state[l] = 2;
                        for (int jt = 0; jt < j0 + nj; ++jt) {
                            const double lt = static_cast<double>(desc[jt]) * scale[l];
                            if ((lt > floor[l] ? lt : 0.0) > edge[l]) {
                                ++p[l];
                            } else {
                                break;
                            }
                        }
                        if (p[l] == j0 + nj && j0 + nj < r) state[l] = 1;
                        break;
                    }
                    topsum[l] += lamk;
                }
            }
            j0 += nj;
            first = false;
            bool all = true;
            for (int l = 0; l < L; ++l) all = all && state[l] == 2;
            if (all || j0 >= r) break;
        }
    }

    // ---- stage 3: recombination ----------------------------------------------

    // Voxel rows (a + da0 .. a + da0 + ND - 1, b), column vector cv:
    // out += R x + R1 with R the packed box-summed projector in w.rrow; each
    // loaded entry of R serves the ND rows.
    template <int ND>
    void apply_rows(Work& w, std::int64_t a, std::int64_t b, std::int64_t c0, int ncols, int cv, int da0,
                    int dslot) const {
        const int n = n_;
        const T* R = w.rrow.data();
        V* xv = w.xv.data();  // ND x n
        V* yv = w.yv.data();  // ND x n
        for (int dd = 0; dd < ND; ++dd) {
            const T* xrow = dring(w, dslot, da0 + dd);
            for (int i = 0; i < n; ++i) {
                xv[dd * n + i] = load(xrow + i * ncp_ + cv * L);
                yv[dd * n + i] = load(R + static_cast<std::size_t>(np_ + i) * ncp_ + cv * L);
            }
        }
        for (int i = 0; i < n; ++i) {
            const T* Ri = R + packed(i, 0) * ncp_ + cv * L;
            V xi[ND], acc[ND];
            const V rii = load(Ri + static_cast<std::size_t>(i) * ncp_);
            for (int dd = 0; dd < ND; ++dd) {
                xi[dd] = xv[dd * n + i];
                acc[dd] = rii * xi[dd];
            }
            for (int k = 0; k < i; ++k) {
                const V rik = load(Ri + static_cast<std::size_t>(k) * ncp_);
                for (int dd = 0; dd < ND; ++dd) {
                    acc[dd] += rik * xv[dd * n + k];
                    yv[dd * n + k] += rik * xi[dd];
                }
            }
            for (int dd = 0; dd < ND; ++dd) yv[dd * n + i] += acc[dd];
        }
        const int cend = std::min(ncols - cv * L, L);
        const std::int64_t oc = g_.out_stride[2], ot = g_.out_stride[3];
        for (int dd = 0; dd < ND; ++dd) {
            T* obase = out_ + (a + da0 + dd) * g_.out_stride[0] + b * g_.out_stride[1] + (c0 + cv * L) * oc;
            const V* y = yv + dd * n;
            if (std::abs(ot) <= std::abs(oc)) {
                for (int l = 0; l < cend; ++l)
                    for (int t = 0; t < n; ++t) obase[l * oc + t * ot] += y[t][l];
            } else {
                for (int t = 0; t < n; ++t)
                    for (int l = 0; l < cend; ++l) obase[l * oc + t * ot] += y[t][l];
            }
        }
    }

    // Voxel row b of the c-chunk is complete for window plane a: add
    // (sum F) x + sum g to each of the wa voxel rows (a + da, b).
    MPPCA_STAGE void finish_row(Work& w, std::int64_t a, std::int64_t b, std::int64_t c0, int ncols) const {
        const std::int64_t lo = std::max<std::int64_t>(0, b - wb_ + 1);
        const std::int64_t hi = std::min<std::int64_t>(b, Bw_ - 1);
        bool have = false;
        const std::size_t nvec = static_cast<std::size_t>(ne_) * ncv_;
        T* R = w.rrow.data();
        for (std::int64_t bw = lo; bw <= hi; ++bw) {
            const int slot = static_cast<int>(bw % wb_);
            if (!w.slot_nonzero[slot]) continue;
            const T* gsl = w.gring.data() + static_cast<std::size_t>(slot) * ne_ * ncp_;
            if (!have) {
                std::memcpy(R, gsl, nvec * L * sizeof(T));
                have = true;
            } else {
                for (std::size_t x = 0; x < nvec; ++x) store(R + x * L, load(R + x * L) + load(gsl + x * L));
            }
        }
        if (!have) return;
        const int n = n_;
        const int dslot = static_cast<int>(b % wb_);
        for (int cv = 0; cv < ncv_; ++cv) {
            for (int da0 = 0; da0 < wa_; da0 += 8) {
                switch (std::min(8, wa_ - da0)) {
                    case 1: apply_rows<1>(w, a, b, c0, ncols, cv, da0, dslot); break;
                    case 2: apply_rows<2>(w, a, b, c0, ncols, cv, da0, dslot); break;
                    case 3: apply_rows<3>(w, a, b, c0, ncols, cv, da0, dslot); break;
                    case 4: apply_rows<4>(w, a, b, c0, ncols, cv, da0, dslot); break;
                    case 5: apply_rows<5>(w, a, b, c0, ncols, cv, da0, dslot); break;
                    case 6: apply_rows<6>(w, a, b, c0, ncols, cv, da0, dslot); break;
                    case 7: apply_rows<7>(w, a, b, c0, ncols, cv, da0, dslot); break;
                    default: apply_rows<8>(w, a, b, c0, ncols, cv, da0, dslot); break;
                }
            }
        }
        const T* rt = R + static_cast<std::size_t>(np_ + n) * ncp_;
        const T* rv = R + static_cast<std::size_t>(np_ + n + 1) * ncp_;
        for (int da = 0; da < wa_; ++da) {
            const std::size_t vbase = ((a + da) * B_ + b) * C_ + c0;
            for (int col = 0; col < ncols; ++col) {
                theta_sum_[vbase + col] += rt[col];
                var_sum_[vbase + col] += rv[col];
            }
        }
    }
};

}  // namespace

template <typename T>
void mppca_accumulate(const T* data, T* out, T* theta_sum, T* var_sum, const std::uint8_t* active,
                      std::int16_t* n_components, const MppcaGeometry& geometry, MpEstimator estimator,
                      int n_threads) {
    Denoiser<T> den(data, out, theta_sum, var_sum, active, n_components, geometry, estimator);
    const std::int64_t planes = den.window_planes();
    // Blocks at least wa - 1 planes thick: blocks two apart write disjoint voxel planes.
    const std::int64_t thick = std::max<std::int64_t>(1, geometry.window[0] - 1);
    const std::int64_t n_blocks = (planes + thick - 1) / thick;
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
    {
        typename Denoiser<T>::Work work;
        den.init(work);
        for (int phase = 0; phase < 2; ++phase) {
#pragma omp for schedule(dynamic, 1)
            for (std::int64_t blk = phase; blk < n_blocks; blk += 2)
                den.run_block(work, blk * thick, std::min(planes, (blk + 1) * thick));
        }
    }
}

template void mppca_accumulate<float>(const float*, float*, float*, float*, const std::uint8_t*, std::int16_t*,
                                      const MppcaGeometry&, MpEstimator, int);
template void mppca_accumulate<double>(const double*, double*, double*, double*, const std::uint8_t*,
                                       std::int16_t*, const MppcaGeometry&, MpEstimator, int);

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
