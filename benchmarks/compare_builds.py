"""Compare builds of the C++ extension on the whole-brain kernels, in one process.

Each build's ``_ext*.so`` is loaded side by side and swapped into mrfengine's
C++ wrappers before each call, and the calls interleave (round-robin, the
order rotating per round), so load from other jobs on a shared machine hits
every build alike.  Cases: structured and brute-force matching of MRF-EPI
fingerprints against their slices' paper-grid dictionaries
(``bench_whole_brain.py``'s data) and MP-PCA of a ``bench_denoise.py``
phantom.  Used for "Portable builds" in benchmarks/README.md::

    MRFENGINE_NATIVE=1 python setup.py build_ext --build-lib /tmp/native --build-temp /tmp/native-tmp
    python setup.py build_ext --build-lib /tmp/portable --build-temp /tmp/portable-tmp
    OMP_NUM_THREADS=1 python benchmarks/compare_builds.py --size small --rounds 15 \\
        native=/tmp/native/mrfengine/_ext.cpython-311-x86_64-linux-gnu.so \\
        portable=/tmp/portable/mrfengine/_ext.cpython-311-x86_64-linux-gnu.so

The first build is the reference of the ratios (speed = its time / the build's):
the median over rounds of the ratio within a round, its quartiles, and the
ratio of the fastest calls.
Sizes: small (4 slices x 6,000 voxels, 1 slice brute force, MP-PCA 64x64x30x35),
mid (8 x 12,500; 96x96x30), full (60 x 12,500 = 750,000 voxels, 4 slices brute
force; 240x240x30, minutes per round).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings

import numpy as np

import mrfengine.denoise._cpp as denoise_cpp
import mrfengine.matching._cpp as matching_cpp
from mrfengine import SliceDictionaries, match_slices
from mrfengine.demo import simulate_slab
from mrfengine.denoise import mppca
from mrfengine.denoise._synthetic import mrf_phantom
from mrfengine.noise import rician, wm_signal_level
from mrfengine.sequence import hermann2021

SIZES = {  # slices x voxels per slice, brute-force slices, MP-PCA volume
    "small": (4, 6_000, 1, (64, 64, 30)),
    "mid": (8, 12_500, 1, (96, 96, 30)),
    "full": (60, 12_500, 4, (240, 240, 30)),
}


def load_build(tag: str, path: str):
    """The extension at ``path`` as module ``<tag>._ext`` (its init function is ``PyInit__ext``)."""
    spec = importlib.util.spec_from_file_location(f"{tag}._ext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(size: str) -> dict:
    n_slices, per_slice, n_brute, shape = SIZES[size]
    seq = hermann2021(1)
    rng = np.random.default_rng(0)
    clean, _, _ = simulate_slab(seq, list(range(n_slices)), per_slice, rng)
    noisy = rician(clean, wm_signal_level(seq) / 50, rng).astype(np.float32)
    dicts = SliceDictionaries(seq, cache=False)
    per = [dicts.for_slice(z) for z in range(n_slices)]
    for d in per:
        d.normalized  # noqa: B018 - built outside the timings
    phantom = mrf_phantom(shape, snr=50.0, seed=0)["noisy"]
    kw = {"slice_axis": 0, "channel_axis": -1, "backend": "cpp"}
    return {
        f"structured matching, {n_slices} x {per_slice:,} voxels": lambda: match_slices(noisy, per, method="structured", **kw),
        f"brute-force matching, {n_brute} x {per_slice:,} voxels": lambda: match_slices(
            noisy[:n_brute], per[:n_brute], method="brute", **kw),
        f"MP-PCA, {'x'.join(map(str, shape))}x35": lambda: mppca(phantom, backend="cpp"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", metavar="NAME=PATH", help="an extension build (the first: the reference)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    builds = {}
    for item in args.builds:
        name, _, path = item.partition("=")
        builds[name] = load_build(name, path)
        isa = builds[name].isa() if hasattr(builds[name], "isa") else "single build (no dispatch)"
        print(f"{name}: {path} ({isa} kernels)")
    warnings.simplefilter("ignore", DeprecationWarning)
    todo = cases(args.size)
    names = list(builds)
    wall = {c: {n: [] for n in names} for c in todo}
    cpu = {c: {n: [] for n in names} for c in todo}
    for r in range(args.rounds + 1):
        for case, run in todo.items():
            for name in names[r % len(names):] + names[: r % len(names)]:
                matching_cpp.get_ext = denoise_cpp.get_ext = lambda m=builds[name]: m
                c0, t0 = time.process_time(), time.perf_counter()
                run()
                if r > 0:  # round 0 warms up
                    wall[case][name].append(time.perf_counter() - t0)
                    cpu[case][name].append(time.process_time() - c0)
    ref = names[0]
    out = {}
    for case in todo:
        print(case)
        out[case] = {}
        for name in names:
            w, c = wall[case][name], cpu[case][name]
            # paired: the reference's time over this build's in the same round (adjacent calls)
            paired = np.array(wall[case][ref]) / np.array(w)
            row = {"wall_min_s": min(w), "wall_median_s": float(np.median(w)), "cpu_min_s": min(c),
                   "speed_min": min(wall[case][ref]) / min(w),
                   "speed_paired_median": float(np.median(paired)),
                   "speed_paired_iqr": [float(np.percentile(paired, 25)), float(np.percentile(paired, 75))],
                   "speed_cpu": min(cpu[case][ref]) / min(c)}
            out[case][name] = row
            print(f"  {name:<22} wall min {row['wall_min_s']:.3f} s, median {row['wall_median_s']:.3f} s; "
                  f"speed vs {ref}: {row['speed_paired_median']:.3f} (median of rounds; quartiles "
                  f"{row['speed_paired_iqr'][0]:.3f}-{row['speed_paired_iqr'][1]:.3f}), {row['speed_min']:.3f} (min), "
                  f"{row['speed_cpu']:.3f} (CPU time)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "rounds": args.rounds, "cases": out}, f, indent=1)


if __name__ == "__main__":
    main()
