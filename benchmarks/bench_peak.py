"""The machine's floor: float32 GEMM throughput through numpy's BLAS.

Every GFLOP/s figure of the other benchmarks is reported as a fraction of this.
"""

import numpy as np


def test_sgemm_peak(benchmark, full):
    n = 4096 if full else 1024
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm up threads
    benchmark.pedantic(lambda: a @ b, rounds=5 if full else 2, iterations=1)
    if benchmark.stats is not None:
        gflops = 2 * n**3 / benchmark.stats.stats.min / 1e9
        benchmark.extra_info["gflops"] = round(gflops, 1)
