"""The C++ API (csrc/include/mrfengine/match.hpp, its C interface match.h; CMake target ``mrfengine::match``).

The library and its example (examples/cpp/match_example.cpp) are configured and
built with CMake once per module, installed into a temporary prefix, and the
example is run on raw arrays the tests write; its results must be those of
``mrfengine.match`` on the same arrays (real and complex, float32 and float64,
brute force and SVD-compressed), and of a direct numpy computation.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import mrfengine
from mrfengine import Dictionary

from disasm import avx_outside_levels

pytestmark = pytest.mark.slow  # one CMake build (~15-30 s on 2 cores) for the module

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
KINDS = {"f32": np.float32, "f64": np.float64, "c64": np.complex64, "c128": np.complex128}
N_VOX, N_ATOMS, N_FRAMES = 60, 300, 40


def _env(isa: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MRFENGINE_ISA"}
    env["OMP_NUM_THREADS"] = "2"
    if isa:
        env["MRFENGINE_ISA"] = isa
    return env


def _run(args: list, *, cwd: Path | None = None, env: dict | None = None, check: bool = True):
    proc = subprocess.run([str(a) for a in args], check=False, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict[str, Path]:
    """Configure, build and install the library with its example; build the example again against the install."""
    if CMAKE is None:
        pytest.skip("cmake is not installed (the C++ API is built with CMake)")
    if CXX is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++) on PATH")
    root = tmp_path_factory.mktemp("cpp-api")
    tree, prefix, standalone = root / "build", root / "prefix", root / "example"
    gen = ["-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_COMPILER={CXX}"]
    _run([CMAKE, "-S", ROOT, "-B", tree, f"-DCMAKE_INSTALL_PREFIX={prefix}", *gen])
    _run([CMAKE, "--build", tree, "-j2"])
    _run([CMAKE, "--install", tree])
    _run([CMAKE, "-S", ROOT / "examples" / "cpp", "-B", standalone, f"-DCMAKE_PREFIX_PATH={prefix}", *gen])
    _run([CMAKE, "--build", standalone, "-j2"])
    return {"example": tree / "examples" / "cpp" / "match_example", "installed": standalone / "match_example",
            "prefix": prefix}


def _inputs(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A nearly rank-6 dictionary (like simulated fingerprints) and noisy scaled atoms as signals,
    with an all-zero voxel and one holding a NaN (both left unmatched)."""
    rng = np.random.default_rng(seed)
    dtype = KINDS[kind]

    def draw(*shape):
        z = rng.standard_normal(shape)
        return z + 1j * rng.standard_normal(shape) if np.iscomplexobj(np.empty(0, dtype)) else z

    atoms = draw(N_ATOMS, 6) @ draw(6, N_FRAMES) + 0.05 * draw(N_ATOMS, N_FRAMES)
    atoms *= rng.uniform(0.5, 3.0, (N_ATOMS, 1))  # not normalised
    truth = rng.integers(0, N_ATOMS, N_VOX)
    scale = rng.uniform(0.5, 2.0, (N_VOX, 1)) * 10.0 ** rng.integers(-3, 4, (N_VOX, 1))
    if np.iscomplexobj(atoms):
        scale = scale * np.exp(1j * rng.uniform(-np.pi, np.pi, (N_VOX, 1)))
    signals = scale * (atoms[truth] / np.linalg.norm(atoms[truth], axis=1, keepdims=True) + 0.03 * draw(N_VOX, N_FRAMES))
    signals[3] = 0.0
    signals[7, 5] = np.nan
    return np.ascontiguousarray(signals.astype(dtype)), np.ascontiguousarray(atoms.astype(dtype))


def _run_example(exe: Path, kind: str, signals, atoms, work: Path, *, basis=None, compressed=None, isa: str = "",
                 block: int = 0):
    work.mkdir(parents=True, exist_ok=True)
    signals.tofile(work / "signals.bin")
    atoms.tofile(work / "atoms.bin")
    args = [exe, kind, signals.shape[0], atoms.shape[0], atoms.shape[1], work]
    if basis is not None:
        np.ascontiguousarray(basis, dtype=atoms.dtype).tofile(work / "basis.bin")
    if compressed is not None:
        np.ascontiguousarray(compressed, dtype=atoms.dtype).tofile(work / "compressed_atoms.bin")
    args += [0 if basis is None else basis.shape[1], block]
    _run(args, env=_env(isa))
    real = np.float32 if atoms.dtype in (np.float32, np.complex64) else np.float64
    return (np.fromfile(work / "index.bin", dtype=np.int64), np.fromfile(work / "correlation.bin", dtype=real),
            np.fromfile(work / "m0.bin", dtype=atoms.dtype))


def _assert_same_winners(got, want, x, search_atoms):
    """Equal indices, but where two atoms score the same to rounding (|<x, a>| within 1e-5), either may win."""
    differ = np.flatnonzero(got != want)
    for v in differ:
        assert got[v] >= 0 and want[v] >= 0, f"voxel {v}: C++ {got[v]}, Python {want[v]}"
        s = np.abs(search_atoms[[got[v], want[v]]].conj() @ x[v].astype(np.complex128))
        assert abs(s[0] - s[1]) <= 1e-5 * s.max(), f"voxel {v}: C++ atom {got[v]} scores {s[0]}, Python's {want[v]} {s[1]}"
    assert differ.size <= 1


@pytest.mark.parametrize("isa", ["", "baseline"], ids=["best-isa", "baseline-isa"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_brute_force_matches_python_and_numpy(build, kind, isa, tmp_path):
    signals, atoms = _inputs(kind, seed=len(kind) + len(isa))
    index, corr, m0 = _run_example(build["example"], kind, signals, atoms, tmp_path, isa=isa)

    dictionary = Dictionary(atoms, {"row": np.arange(N_ATOMS)})
    py = mrfengine.match(signals, dictionary, backend="numpy", method="brute")
    _assert_same_winners(index, py.index, signals, dictionary.normalized)
    same = index == py.index
    np.testing.assert_array_equal(index[[3, 7]], -1)
    np.testing.assert_allclose(corr[same], py.correlation[same], rtol=2e-6, atol=0)
    np.testing.assert_allclose(m0[same], py.m0[same], rtol=2e-5, atol=0)

    # Straight from the definitions, in float64: argmax |<x, d>| / ||d||, correlation, M0 = <x, d> / <d, d>.
    ok = np.isfinite(signals).all(axis=1) & (np.abs(signals).max(axis=1) > 0)
    x, d = signals[ok].astype(np.complex128), atoms.astype(np.complex128)
    dnorm = np.linalg.norm(d, axis=1)
    ip = x @ d.conj().T
    best = np.argmax(np.abs(ip) / dnorm, axis=1)
    np.testing.assert_array_equal(index[ok], best)
    ipb = ip[np.arange(best.size), best]
    tol = 1e-6 if kind in ("f32", "c64") else 1e-12
    np.testing.assert_allclose(corr[ok], np.abs(ipb) / (np.linalg.norm(x, axis=1) * dnorm[best]), rtol=tol)
    ref_m0 = ipb / dnorm[best] ** 2
    np.testing.assert_allclose(m0[ok], ref_m0 if np.iscomplexobj(signals) else ref_m0.real, rtol=10 * tol)
    assert corr.dtype == (np.float32 if kind in ("f32", "c64") else np.float64)


@pytest.mark.parametrize("given", [False, True], ids=["atoms-projected-in-cpp", "compressed-atoms-given"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_compressed_search_matches_python_rank(build, kind, given, tmp_path):
    """match_compressed with Dictionary.compress(rank).basis (and its .atoms, or atoms projected in C++) finds
    the atoms of mrfengine.match(..., rank=rank)."""
    signals, atoms = _inputs(kind, seed=11 + len(kind))
    dictionary = Dictionary(atoms, {"row": np.arange(N_ATOMS)})
    rank = 6
    comp = dictionary.compress(rank)
    index, corr, m0 = _run_example(build["example"], kind, signals, atoms, tmp_path, basis=comp.basis,
                                   compressed=comp.atoms if given else None)
    py = mrfengine.match(signals, dictionary, backend="numpy", method="brute", rank=rank)
    assert py.rank == rank
    xs = np.nan_to_num(signals.astype(np.complex128)) @ comp.basis.astype(np.complex128)
    _assert_same_winners(index, py.index, xs, comp.atoms)
    same = index == py.index
    np.testing.assert_array_equal(index[[3, 7]], -1)
    np.testing.assert_allclose(corr[same], py.correlation[same], rtol=2e-6)
    np.testing.assert_allclose(m0[same], py.m0[same], rtol=2e-5)
    # The subspace keeps this dictionary's energy: the compressed winners are the brute-force ones.
    brute = mrfengine.match(signals, dictionary, backend="numpy", method="brute")
    assert np.mean(index == brute.index) >= 0.9


@pytest.mark.parametrize("kind", ["f32", "c128"])
def test_results_do_not_depend_on_the_block_size(build, kind, tmp_path):
    """Voxels scaled and searched 7 at a time (MatchOptions::block_voxels) give the one-block results, bit for bit."""
    signals, atoms = _inputs(kind, seed=21)
    basis = Dictionary(atoms, {"row": np.arange(N_ATOMS)}).compress(6).basis
    for b in (None, basis):
        one = _run_example(build["example"], kind, signals, atoms, tmp_path / "one", basis=b)
        blocks = _run_example(build["example"], kind, signals, atoms, tmp_path / "blocks", basis=b, block=7)
        for x, y in zip(one, blocks):
            np.testing.assert_array_equal(x, y)


def test_the_installed_package_links_and_runs(build, tmp_path):
    """find_package(mrfengine) + mrfengine::match from the install prefix: same results as the in-tree build."""
    assert (build["prefix"] / "include" / "mrfengine" / "match.hpp").is_file()
    assert list(build["prefix"].glob("lib*/cmake/mrfengine/mrfengineConfig.cmake"))
    signals, atoms = _inputs("c64", seed=3)
    got = _run_example(build["installed"], "c64", signals, atoms, tmp_path / "installed")
    want = _run_example(build["example"], "c64", signals, atoms, tmp_path / "tree")
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_the_example_finds_the_true_decays(build):
    out = _run([build["example"]]).stdout
    assert re.match(r"mrfengine \d+\.\d+\.\d+, (baseline|avx2|avx512|native) kernels", out)
    found = re.findall(r"T2 (\d+) ms \(true (\d+)\).*correlation (\S+)", out)
    assert len(found) == 8
    for t2, true, corr in found:
        assert t2 == true and float(corr) > 0.999999
    assert out.count("phase 0.500 rad") == 4
    assert "M0 3000.0" in out and "|M0| 2000.0" in out


def test_errors_are_reported(build, tmp_path):
    signals, atoms = _inputs("f64", seed=5)
    atoms[4] = 0.0
    signals.tofile(tmp_path / "signals.bin")
    atoms.tofile(tmp_path / "atoms.bin")
    args = [build["example"], "f64", N_VOX, N_ATOMS, N_FRAMES, tmp_path]
    proc = _run(args, check=False)
    assert proc.returncode == 1
    assert "mrfengine::match: atom 4 is all zero; every atom must be finite and non-zero" in proc.stderr
    atoms[4] = 1.0
    atoms.tofile(tmp_path / "atoms.bin")
    np.zeros((N_FRAMES, N_FRAMES + 1)).tofile(tmp_path / "basis.bin")
    proc = _run(args + [N_FRAMES + 1], check=False)
    assert proc.returncode == 1 and f"rank must be in [1, n_frames={N_FRAMES}]; got {N_FRAMES + 1}" in proc.stderr
    proc = _run(args, env=_env("sse9"), check=False)
    assert proc.returncode == 1 and "MRFENGINE_ISA=sse9: no such kernels" in proc.stderr


C_PROGRAM = r"""
#include <mrfengine/match.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
enum { NA = 50, NF = 24, NV = 3 };
int main(void) {
    static float atoms[NA][NF][2], signals[NV][NF][2], m0[NV][2], corr[NV];
    static int64_t index[NV];
    const int truth[NV] = {3, 17, 49};
    int k, t, v, rc;
    for (k = 0; k < NA; ++k)
        for (t = 0; t < NF; ++t) {
            atoms[k][t][0] = (float)cos(0.05 * (k + 1) * t) * (float)exp(-0.01 * t * (k % 7));
            atoms[k][t][1] = (float)sin(0.05 * (k + 1) * t) * (float)exp(-0.01 * t * (k % 7));
        }
    for (v = 0; v < NV; ++v)  /* signal = (0, 2) * atom: M0 = 2i */
        for (t = 0; t < NF; ++t) {
            signals[v][t][0] = -2.0f * atoms[truth[v]][t][1];
            signals[v][t][1] = 2.0f * atoms[truth[v]][t][0];
        }
    rc = mrfengine_match_c64(&signals[0][0][0], NV, &atoms[0][0][0], NA, NF, index, corr, &m0[0][0], 1);
    printf("rc %d isa %s version %s\n", rc, mrfengine_isa(), mrfengine_version());
    for (v = 0; v < NV; ++v)
        printf("voxel %d index %lld corr %.6f m0 %.5f %.5f\n", v, (long long)index[v], corr[v], m0[v][0], m0[v][1]);
    memset(atoms[5], 0, sizeof atoms[5]);
    rc = mrfengine_match_c64(&signals[0][0][0], NV, &atoms[0][0][0], NA, NF, index, NULL, NULL, 0);
    printf("rc %d error %s\n", rc, mrfengine_last_error());
    return 0;
}
"""


def test_the_c_interface(build, tmp_path):
    """mrfengine/match.h from C99 (strict flags): results, status codes and the error message."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH")
    src = tmp_path / "use_c_api.c"
    src.write_text(C_PROGRAM)
    include = build["prefix"] / "include"
    _run([cc, "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", f"-I{include}", "-c", src, "-o",
          tmp_path / "use_c_api.o"])
    lib = next(build["prefix"].glob("lib*/libmrfengine_match.a"))
    _run([CXX, tmp_path / "use_c_api.o", lib, "-fopenmp", "-o", tmp_path / "use_c_api"])
    out = _run([tmp_path / "use_c_api"]).stdout.splitlines()
    assert re.fullmatch(r"rc 0 isa (baseline|avx2|avx512|native) version \d+\.\d+\.\d+", out[0])
    for line, truth in zip(out[1:4], (3, 17, 49)):
        index, corr, re_m0, im_m0 = re.fullmatch(r"voxel \d index (\d+) corr (\S+) m0 (\S+) (\S+)", line).groups()
        assert int(index) == truth and float(corr) == pytest.approx(1.0, abs=1e-5)
        assert float(re_m0) == pytest.approx(0.0, abs=1e-4) and float(im_m0) == pytest.approx(2.0, rel=1e-5)
    assert out[4] == ("rc 1 error mrfengine::match: atom 5 is all zero; every atom must be finite and non-zero")


def test_the_header_compiles_on_its_own(tmp_path):
    """match.hpp needs nothing but the standard library, and is warning-free under strict flags."""
    if CXX is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++) on PATH")
    tu = tmp_path / "only_the_header.cpp"
    tu.write_text("#include <mrfengine/match.hpp>\n"
                  "static_assert(MRFENGINE_MATCH_API_VERSION == 1, \"API version\");\n"
                  "int main() { mrfengine::MatchOptions o; return o.n_threads; }\n")
    _run([CXX, "-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Werror", "-fsyntax-only",
          f"-I{ROOT / 'csrc' / 'include'}", tu])
    tu.write_text("#include <mrfengine/match.h>\nint main() { return MRFENGINE_OK; }\n")  # the C header from C++
    _run([CXX, "-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only",
          f"-I{ROOT / 'csrc' / 'include'}", tu])


def test_no_avx_instruction_outside_the_avx_levels(build):
    """The example links the static library: its baseline path (API, level choice, baseline kernels, shared
    template copies) holds no VEX/EVEX instruction, so it runs on any x86-64 CPU."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("not an x86-64 dispatch build")
    leaks, levels = avx_outside_levels(str(build["example"]))
    assert not leaks, f"AVX instructions where the baseline path may run: {sorted(leaks.items())[:10]}"
    assert levels == {"isa_avx2::", "isa_avx512::"}
