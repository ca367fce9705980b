// mrfengine's C++ API (mrfengine/match.hpp) in a few lines.
//
//   match_example
//       matches noiseless mono-exponential T2 decays, real (float32) and
//       complex with a phase (complex128), to a dictionary of decays and
//       prints the T2 and M0 found;
//   match_example KIND N_VOXELS N_ATOMS N_FRAMES DIR [RANK [BLOCK]]
//       KIND: f32, f64, c64 or c128 (numpy's float32, float64, complex64,
//       complex128).  Reads DIR/signals.bin (N_VOXELS x N_FRAMES) and
//       DIR/atoms.bin (N_ATOMS x N_FRAMES), raw row-major arrays, and with
//       RANK > 0 DIR/basis.bin (N_FRAMES x RANK) for match_compressed (RANK 0:
//       match; DIR/compressed_atoms.bin (N_ATOMS x RANK), where present, is
//       passed as compressed_atoms); BLOCK sets MatchOptions::block_voxels.
//       Writes
//       DIR/index.bin (int64), DIR/correlation.bin (float32 or float64) and
//       DIR/m0.bin (KIND).  tests/test_cpp_api.py compares them with Python.
#include <mrfengine/match.hpp>

#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
std::vector<T> read(const std::string& path, std::int64_t count) {
    std::vector<T> data(static_cast<std::size_t>(count));
    std::ifstream in(path, std::ios::binary);
    if (!in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(T))))
        throw std::runtime_error(path + ": cannot read " + std::to_string(count) + " values");
    return data;
}

template <typename T>
void write(const std::string& path, const std::vector<T>& data) {
    std::ofstream out(path, std::ios::binary);
    if (!out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(T))))
        throw std::runtime_error(path + ": cannot write");
}

// Match the arrays of DIR; the real type R of T is what correlation holds.
template <typename T>
void match_files(std::int64_t n_vox, std::int64_t n_atoms, std::int64_t n_frames, const std::string& dir, std::int64_t rank,
                 std::int64_t block) {
    using R = std::conditional_t<std::is_same_v<T, float> || std::is_same_v<T, std::complex<float>>, float, double>;
    const auto x = read<T>(dir + "/signals.bin", n_vox * n_frames);
    const auto d = read<T>(dir + "/atoms.bin", n_atoms * n_frames);
    std::vector<std::int64_t> index(n_vox);
    std::vector<R> corr(n_vox);
    std::vector<T> m0(n_vox);
    mrfengine::MatchOptions options;
    options.block_voxels = block;
    if (rank > 0) {
        const auto basis = read<T>(dir + "/basis.bin", n_frames * rank);
        std::vector<T> compressed;
        if (std::ifstream(dir + "/compressed_atoms.bin")) compressed = read<T>(dir + "/compressed_atoms.bin", n_atoms * rank);
        mrfengine::match_compressed(x.data(), n_vox, d.data(), n_atoms, n_frames, basis.data(), rank,
                                    compressed.empty() ? nullptr : compressed.data(),
                                    index.data(), corr.data(), m0.data(), options);
    } else {
        mrfengine::match(x.data(), n_vox, d.data(), n_atoms, n_frames, index.data(), corr.data(), m0.data(), options);
    }
    write(dir + "/index.bin", index);
    write(dir + "/correlation.bin", corr);
    write(dir + "/m0.bin", m0);
}

// Decays exp(-TE / T2) at TE = 5, 10, ..., 160 ms for T2 = 10, 12, ..., 400 ms.
void demo() {
    const std::int64_t n_frames = 32, n_atoms = 196;
    std::vector<double> t2(n_atoms);
    std::vector<float> atoms(n_atoms * n_frames);
    std::vector<std::complex<double>> catoms(n_atoms * n_frames);
    for (std::int64_t k = 0; k < n_atoms; ++k) {
        t2[k] = 10.0 + 2.0 * k;
        for (std::int64_t t = 0; t < n_frames; ++t) {
            const double te = 5.0 * (t + 1), decay = std::exp(-te / t2[k]);
            atoms[k * n_frames + t] = static_cast<float>(decay);
            catoms[k * n_frames + t] = decay * std::polar(1.0, 0.002 * te);  // an off-resonance phase
        }
    }
    const std::int64_t truth[] = {5, 40, 120, 195};
    const std::int64_t n_vox = 4;
    std::vector<float> x(n_vox * n_frames);
    std::vector<std::complex<double>> cx(n_vox * n_frames);
    for (std::int64_t v = 0; v < n_vox; ++v)
        for (std::int64_t t = 0; t < n_frames; ++t) {
            x[v * n_frames + t] = 1000.0f * (v + 1) * atoms[truth[v] * n_frames + t];
            cx[v * n_frames + t] = std::polar(500.0 * (v + 1), 0.5) * catoms[truth[v] * n_frames + t];
        }

    std::vector<std::int64_t> index(n_vox);
    std::vector<float> corr(n_vox), m0(n_vox);
    mrfengine::MatchOptions options;
    options.n_threads = 2;
    mrfengine::match(x.data(), n_vox, atoms.data(), n_atoms, n_frames, index.data(), corr.data(), m0.data(), options);
    std::printf("mrfengine %s, %s kernels\nreal float32:\n", mrfengine::version(), mrfengine::isa());
    for (std::int64_t v = 0; v < n_vox; ++v)
        std::printf("  voxel %lld: T2 %.0f ms (true %.0f), M0 %.1f, correlation %.6f\n", static_cast<long long>(v),
                    t2[index[v]], t2[truth[v]], m0[v], corr[v]);

    std::vector<double> ccorr(n_vox);
    std::vector<std::complex<double>> cm0(n_vox);
    mrfengine::match(cx.data(), n_vox, catoms.data(), n_atoms, n_frames, index.data(), ccorr.data(), cm0.data(),
                     options);
    std::printf("complex128:\n");
    for (std::int64_t v = 0; v < n_vox; ++v)
        std::printf("  voxel %lld: T2 %.0f ms (true %.0f), |M0| %.1f, phase %.3f rad, correlation %.6f\n",
                    static_cast<long long>(v), t2[index[v]], t2[truth[v]], std::abs(cm0[v]), std::arg(cm0[v]), ccorr[v]);
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if (argc == 1) {
            demo();
            return 0;
        }
        if (argc < 6 || argc > 8) {
            std::fprintf(stderr, "usage: %s [KIND N_VOXELS N_ATOMS N_FRAMES DIR [RANK [BLOCK]]]\n", argv[0]);
            return 2;
        }
        const std::string kind = argv[1];
        const std::int64_t n_vox = std::stoll(argv[2]), n_atoms = std::stoll(argv[3]), n_frames = std::stoll(argv[4]);
        const std::int64_t rank = argc >= 7 ? std::stoll(argv[6]) : 0, block = argc == 8 ? std::stoll(argv[7]) : 0;
        if (kind == "f32") match_files<float>(n_vox, n_atoms, n_frames, argv[5], rank, block);
        else if (kind == "f64") match_files<double>(n_vox, n_atoms, n_frames, argv[5], rank, block);
        else if (kind == "c64") match_files<std::complex<float>>(n_vox, n_atoms, n_frames, argv[5], rank, block);
        else if (kind == "c128") match_files<std::complex<double>>(n_vox, n_atoms, n_frames, argv[5], rank, block);
        else throw std::invalid_argument("KIND must be f32, f64, c64 or c128; got " + kind);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "match_example: %s\n", e.what());
        return 1;
    }
}
