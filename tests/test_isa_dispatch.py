"""Run-time ISA dispatch of the C++ kernels (csrc/dispatch.cpp, csrc/isa.hpp).

A portable build holds the kernels once per x86-64 level (baseline, AVX2,
AVX-512) and picks the best level the CPU runs when ``mrfengine._ext`` is
imported; ``MRFENGINE_ISA`` forces one.  For every level this CPU runs, a
subprocess forced to it computes brute-force and structured matching, MP-PCA
(float64 and float32) and the eigen-solver on inputs written here, and the
results are held to the numpy references with the tolerances of the tests of
those kernels (tests/matching, tests/denoise).  Levels the CPU lacks are
skipped with the reason; forcing one must fail the import with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

import mrfengine
from mrfengine import Dictionary, match
from mrfengine.backend import get_ext
from mrfengine.denoise import mppca
from mrfengine.denoise._synthetic import lowrank_rician
from mrfengine.dictionary import simulate_dictionary
from mrfengine.matching._separable import best_atoms_separable_xp, plan_separable
from mrfengine.sequence import hermann2021
from mrfengine.testing import random_fingerprints

from disasm import avx_outside_levels

ext = get_ext()
pytestmark = pytest.mark.skipif(ext is None or not hasattr(ext, "isa_levels"),
                                reason="C++ extension not built (or built before ISA dispatch)")

LEVELS = ext.isa_levels() if ext is not None and hasattr(ext, "isa_levels") else []
SUPPORTED = [name for name, ok, _ in LEVELS if ok]
TESTS = Path(__file__).resolve().parent
REPO = Path(mrfengine.__file__).parents[1]  # where this mrfengine was imported from (for the subprocesses)

# The worker: forced to one level by MRFENGINE_ISA, it runs every kernel on
# the inputs in argv[1] and writes what they return to argv[2].
WORKER = """
import sys
import numpy as np
import mrfengine._ext as ext
from mrfengine import Dictionary, match
from mrfengine.denoise import mppca
from mrfengine.dictionary import simulate_dictionary
from mrfengine.sequence import hermann2021

inp = np.load(sys.argv[1])
out = {"isa": np.array(ext.isa()), "simd_bytes": np.array(ext.simd_bytes())}
d = Dictionary(inp["brute_atoms"], {"T1": np.arange(len(inp["brute_atoms"]), dtype=float)})
r = match(inp["brute_x"], d, backend="cpp", method="brute")
out["brute_index"], out["brute_correlation"] = r.index, r.correlation
d = simulate_dictionary(hermann2021(1), 21)
out["structured_index"] = match(inp["structured_x"], d, backend="cpp", method="structured").index
for key in ("mppca64", "mppca32"):
    r = mppca(inp[key], backend="cpp")
    out[key + "_denoised"], out[key + "_sigma"], out[key + "_ncomp"] = r.denoised, r.sigma, r.n_components
for key in inp.files:
    if key.startswith("eigh_"):
        out[key + "_w"], out[key + "_v"] = ext._eigh_sym(inp[key])
np.savez(sys.argv[2], **out)
"""


def _load(path: Path) -> ModuleType:
    """A test module by path (its assertion helpers are the references' rules)."""
    spec = importlib.util.spec_from_file_location(f"_isa_ref_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(code: str, isa: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MRFENGINE_ISA=isa, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _symmetric(rng, count: int, n: int, dtype) -> np.ndarray:
    b = rng.standard_normal((count, n, n))
    return ((b + b.swapaxes(1, 2)) / 2).astype(dtype)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Inputs (written for the workers) and the numpy references, computed once."""
    rng = np.random.default_rng(21)
    seq = hermann2021(1)
    inp = {
        # odd sizes: a partial atom tile and partial SIMD vectors at every level
        "brute_atoms": (np.abs(rng.normal(size=(1033, 37))) + 0.05).astype(np.float32),
        "brute_x": np.abs(rng.normal(size=(53, 37))).astype(np.float32),
        "structured_x": random_fingerprints(seq, 21, 600, rng, snr=50.0)[0],
        "mppca64": lowrank_rician((12, 11, 9), snr=20, seed=3)[1],
        "mppca32": lowrank_rician((16, 13, 10), snr=30, seed=7)[1].astype(np.float32),
        "eigh_random32": _symmetric(rng, 17, 35, np.float32),  # 17: lane groups, the last partly filled
        "eigh_random64": _symmetric(rng, 17, 12, np.float64),
        "eigh_zero32": np.zeros((3, 6, 6), np.float32),
        "eigh_zero64": np.zeros((3, 6, 6), np.float64),
    }
    q, _ = np.linalg.qr(rng.standard_normal((5, 64, 64)))
    inp["eigh_identity32"] = (q @ q.swapaxes(1, 2)).astype(np.float32)  # one eigenvalue, 64 times
    path = tmp_path_factory.mktemp("isa") / "inputs.npz"
    np.savez(path, **inp)
    d = Dictionary(inp["brute_atoms"], {"T1": np.arange(len(inp["brute_atoms"]), dtype=float)})
    ref = {
        "brute": match(inp["brute_x"], d, backend="numpy", method="brute"),
        "structured": best_atoms_separable_xp(inp["structured_x"], plan_separable(simulate_dictionary(seq, 21)), np),
        "mppca64": mppca(inp["mppca64"], backend="reference"),
        "mppca32": mppca(inp["mppca32"].astype(np.float64), backend="reference"),
    }
    return path, inp, ref


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_each_level_this_cpu_runs_matches_the_references(isa, cases, tmp_path):
    levels = {name: (ok, needs) for name, ok, needs in LEVELS}
    if isa not in levels:
        pytest.skip(f"this build has no {isa} kernels (levels: {', '.join(levels)})")
    if not levels[isa][0]:
        pytest.skip(f"this CPU cannot run the {isa} kernels (they need {levels[isa][1]})")
    path, inp, ref = cases
    proc = _run(WORKER, isa, str(path), str(tmp_path / "out.npz"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert str(out["isa"]) == isa
    assert int(out["simd_bytes"]) == {"baseline": 16, "avx2": 32, "avx512": 64}[isa]

    # Brute force (tests/matching/test_match.py's rule): indices agree except
    # float32 near-ties, whose score equals the reference's best.
    a = ref["brute"]
    differ = out["brute_index"] != a.index
    assert differ.mean() < 0.05
    np.testing.assert_allclose(out["brute_correlation"], a.correlation, rtol=1e-5)
    # Structured (tests/matching/test_match_backends.py's rule).
    assert (out["structured_index"] == ref["structured"]).mean() > 0.995

    # MP-PCA (tests/denoise/test_backends.py's rules): float64 reproduces the
    # reference; float32 agrees with it to float32's precision.
    assert_same = _load(TESTS / "denoise" / "test_backends.py")._assert_same
    for key, rules in (("mppca64", {}), ("mppca32", {"rtol_data": 2e-3, "rtol_sigma": 1e-3, "exact_components": False})):
        got = SimpleNamespace(denoised=out[key + "_denoised"], sigma=out[key + "_sigma"], n_components=out[key + "_ncomp"])
        assert got.denoised.dtype == inp[key].dtype
        assert_same(got, ref[key], **rules)

    # The eigen-solver (tests/denoise/test_eigh_sym.py's rules), including the
    # zero matrix and a rotated identity, whose vectors the baseline (no FMA)
    # once got wrong.
    check = _load(TESTS / "denoise" / "test_eigh_sym.py").assert_eigh_result
    for key in inp:
        if key.startswith("eigh_"):
            check(inp[key], out[key + "_w"], out[key + "_v"])


def test_the_default_is_the_best_level_this_cpu_runs():
    forced = os.environ.get("MRFENGINE_ISA", "")
    names = [name for name, _, _ in LEVELS]
    assert names == (["baseline", "avx2", "avx512"] if len(names) > 1 else names)
    assert SUPPORTED, "some level must run"
    assert ext.isa() == (forced if forced not in ("", "auto") else SUPPORTED[-1])
    if "avx2" in names:  # an x86-64 dispatch build: the CPU's own flags say what it runs
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if flags:
            has = set(re.search(r"^flags\s*:(.*)$", flags, re.M).group(1).split())
            assert ("avx2" in SUPPORTED) == ({"avx2", "fma", "bmi1", "bmi2"} <= has)
            assert ("avx512" in SUPPORTED) == ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"} <= has)


REFUSE = """
import mrfengine.backend as backend
from mrfengine import Dictionary
from mrfengine.errors import BackendUnavailableError
from mrfengine.matching import match
import numpy as np
try:
    import mrfengine._ext
except ImportError as exc:
    print("IMPORT:", exc)
info = backend.probe("cpp")
print("PROBE:", info.available, info.detail)
try:
    match(np.ones((2, 5), np.float32), Dictionary(np.eye(5, dtype=np.float32), {"T1": np.arange(5.0)}), backend="cpp")
except BackendUnavailableError as exc:
    print("MATCH:", exc)
"""


@pytest.mark.parametrize("forced", ["sse9", "avx512"])
def test_forcing_a_level_that_cannot_run_fails_cleanly(forced, tmp_path):
    if forced in SUPPORTED:
        pytest.skip(f"this CPU runs {forced}: nothing to refuse")
    proc = _run(REFUSE, forced, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = [name for name, _, _ in LEVELS]
    reason = ("not an ISA level" if forced == "sse9" else
              "this CPU lacks" if forced in built else "this build has no such kernels")
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["IMPORT"].startswith(f"MRFENGINE_ISA={forced}: ") and reason in lines["IMPORT"]
    assert "this CPU runs " + ", ".join(SUPPORTED) in lines["IMPORT"]
    assert lines["PROBE"].startswith("False extension mrfengine._ext refused to load: MRFENGINE_ISA=")
    assert f"MRFENGINE_ISA={forced}" in lines["MATCH"] and reason in lines["MATCH"]
    assert "refused to load" in proc.stderr  # the warning get_ext logs


def test_no_avx_instruction_outside_the_avx_levels():
    """What the baseline path can run -- bindings, dispatcher, baseline kernels and
    the one copy the linker kept of each standard template the levels share --
    holds no VEX/EVEX-encoded instruction, so it cannot crash (SIGILL) on a CPU
    without AVX.  Local symbols (an object's own clones, e.g. ``.isra``) are
    called only from the object that made them, so AVX code there is the level's."""
    if "avx2" not in [name for name, _, _ in LEVELS]:
        pytest.skip("not an x86-64 dispatch build")
    leaks, levels_seen = avx_outside_levels(ext.__file__)
    assert not leaks, f"AVX instructions where the baseline path may run: {sorted(leaks.items())[:10]}"
    assert levels_seen == {"isa_avx2::", "isa_avx512::"}
