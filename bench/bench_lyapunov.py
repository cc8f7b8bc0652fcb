"""Benchmarks of the Lyapunov kernels beside naive numpy loops (same run, same sizes).

Default sizes are small so that ``pytest bench --benchmark-disable`` runs in seconds; set
``NNDYN_BENCH_FULL=1`` for the full workloads:

- lorenz: Lorenz-63 spectrum to T = 1000 with dt = 0.01 (1e5 RK4 steps), ours vs a numpy
  Benettin loop (RK4 on state + tangent, numpy QR every step).
- sgd-k1 / sgd-k4: SGD exponent, n = 100, d = 200, B = 10, 1e5 steps, ours (span coordinates,
  and the full-space rank-B kernel) vs a numpy loop that forms the d x d factor and QRs.
- sgd-large: d = 1e5, n = 1000 (G alone is 800 MB): ours only (a d x d factor would need 80 GB).

On a small shared machine run with ``OPENBLAS_NUM_THREADS=1``: multi-threaded OpenBLAS can take
a second to wake its threads for the one small SVD each call makes, which swamps the timings.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_lyapunov import naive_benettin_lorenz, naive_sgd_qr  # noqa: E402

from nndyn_fast.lyapunov import Lorenz63, lyapunov_spectrum  # noqa: E402
from nndyn_fast.sgd_stability import sgd_lyapunov  # noqa: E402

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
T_LORENZ = 1000.0 if FULL else 5.0
SGD_STEPS = 100_000 if FULL else 500
N, D, B = 100, 200, 10


@pytest.mark.benchmark(group="lorenz")
def test_lorenz_ours(benchmark):
    V0 = np.eye(3)
    run = lambda: lyapunov_spectrum(  # noqa: E731
        Lorenz63(), [1.0, 1.0, 1.0], t_end=T_LORENZ, dt=0.01, V0=V0
    )
    run()  # compile
    res = benchmark.pedantic(run, rounds=5, iterations=1)
    assert abs(res.sum + 13.6667) < 0.01


@pytest.mark.benchmark(group="lorenz")
def test_lorenz_numpy(benchmark):
    n = int(round(T_LORENZ / 0.01))
    res = benchmark.pedantic(
        naive_benettin_lorenz, args=([1.0, 1.0, 1.0], np.eye(3), 0.01, n), rounds=1, iterations=1
    )
    assert abs(res[0].sum() + 13.6667) < 0.01


def _G():
    return np.random.default_rng(0).standard_normal((N, D)) / np.sqrt(D)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("space", ["span", "full"])
def test_sgd_ours(benchmark, k, space):
    benchmark.group = f"sgd-k{k}"
    G = _G()
    kw = dict(steps=SGD_STEPS, k=k, replicas=1, transient=0, seed=1, space=space)
    sgd_lyapunov(G, 0.5, B, **{**kw, "steps": 10})  # compile
    res = benchmark.pedantic(lambda: sgd_lyapunov(G, 0.5, B, **kw), rounds=5, iterations=1)
    assert np.isfinite(res.exponents).all()


@pytest.mark.parametrize("k", [1, 4])
def test_sgd_numpy(benchmark, k):
    benchmark.group = f"sgd-k{k}"
    G = _G()
    rng = np.random.default_rng(1)
    idx = rng.integers(0, N, size=(SGD_STEPS, B))
    V0 = np.linalg.qr(rng.standard_normal((D, k)))[0].T
    res = benchmark.pedantic(naive_sgd_qr, args=(G, 0.5, idx, V0), rounds=1, iterations=1)
    assert np.isfinite(res).all()


@pytest.mark.skipif(not FULL, reason="full size only (needs ~2 GB of memory)")
@pytest.mark.benchmark(group="sgd-large")
def test_sgd_large_d(benchmark, fresh_process):
    # in a fresh process, so that the peak memory is this run's: G is 763 MiB
    code = (
        "import numpy as np\nfrom nndyn_fast.sgd_stability import sgd_lyapunov\n"
        "G = np.random.default_rng(2).standard_normal((1000, 100_000)) / np.sqrt(100_000)\n"
        "res = sgd_lyapunov(G, 0.5, 10, steps=100_000, k=4, replicas=2, transient=1000)\n"
        "assert res.rank == 1000 and np.isfinite(res.exponents).all()\n"
    )
    peak = benchmark.pedantic(fresh_process, args=(code,), rounds=1, iterations=1)
    benchmark.extra_info["peak_rss_MiB"] = peak
    benchmark.extra_info["G_MiB"] = 1000 * 100_000 * 8 / 2**20
