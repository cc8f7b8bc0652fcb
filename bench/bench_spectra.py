"""Coupling-operator spectra and the continuum limit beside their baselines, in the same run.

Default sizes are small so that ``pytest bench --benchmark-disable`` runs in seconds; with
``NNDYN_BENCH_FULL=1`` the issue's sizes:

- spectrum-graphon: the 6 largest eigenvalues of the ring graphon operator (r = 0.2037) by
  matrix-free Lanczos (``coupling_spectrum``, the O(N) structured product) beside scipy
  ``eigsh`` on the dense matrix W/N, both at N = 8000 (full; 1500 by default). The set-up of the
  matrix-free form (the graphon's windows) is timed apart in ``spectrum-setup``.
- spectrum-graphon-large (full only): the same at N = 10^5, set-up included.
- spectrum-memory (full only): ``coupling_spectrum`` at N = 10^5 and dense ``eigsh`` at
  N = 8000, each in a fresh process, beside the floor (imports and a spectrum at N = 2000);
  peak RSS (VmHWM) in ``extra_info['peak_rss_MiB']``.
- limit-vs-particles: all-to-all Kuramoto with Lorentzian frequencies (γ = 0.5, K = 4,
  r_∞ = sqrt(1 − 2γ/K)): the Ott–Antonsen limit on 1000 quadrature points beside the particle
  run at N = 10^5 (full; 5000 by default), same t_end and step; both r in ``extra_info`` and
  |r_N − r_∞| < 1e-2 asserted.
"""

import os

import numpy as np
import pytest
from scipy.sparse.linalg import eigsh

from nndyn_fast.continuum import lorentzian_quantile_frequencies, meanfield_limit
from nndyn_fast.graphs import DigraphMeasure, Graphon
from nndyn_fast.meanfield import Coupling, Kuramoto, simulate
from nndyn_fast.spectra import coupling_spectrum

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
R = 0.2037
N_SPEC = 8000 if FULL else 1500
N_LARGE = 100_000
N_PART = 100_000 if FULL else 5000
K, GAMMA, T_END, DT = 4.0, 0.5, 30.0, 0.05


@pytest.fixture(scope="module")
def ring_coupling():
    return Coupling(DigraphMeasure(Graphon.ring(R), N_SPEC), N_SPEC)


@pytest.mark.benchmark(group="spectrum-graphon")
def test_spectrum_graphon_ours(benchmark, ring_coupling):
    coupling_spectrum(ring_coupling, k=6)  # compile
    s = benchmark.pedantic(coupling_spectrum, args=(ring_coupling,), kwargs={"k": 6}, rounds=3)
    benchmark.extra_info["n_matvec"] = s.n_matvec
    k = np.arange(1, 50)
    top = np.sort(np.r_[2 * R, np.repeat(np.sin(2 * np.pi * k * R) / (np.pi * k), 2)])[::-1]
    np.testing.assert_allclose(s.eigenvalues, top[:6], atol=3.0 / N_SPEC)  # quadrature


@pytest.mark.benchmark(group="spectrum-graphon")
def test_spectrum_graphon_dense_eigsh_reference(benchmark, ring_coupling):
    A = ring_coupling.measure.matrix() / N_SPEC
    vals = benchmark.pedantic(eigsh, args=(A,), kwargs={"k": 6, "which": "LA"}, rounds=3)[0]
    ours = coupling_spectrum(ring_coupling, k=6).eigenvalues
    np.testing.assert_allclose(np.sort(vals)[::-1], ours, atol=1e-10)


@pytest.mark.benchmark(group="spectrum-setup")
def test_spectrum_setup_ours(benchmark):
    # the matrix-free form's set-up: positions and the window of every row (O(N·window) scan)
    benchmark.pedantic(lambda: Coupling(DigraphMeasure(Graphon.ring(R), N_SPEC), N_SPEC), rounds=1)


@pytest.mark.skipif(not FULL, reason="large runs only with NNDYN_BENCH_FULL=1")
@pytest.mark.benchmark(group="spectrum-graphon-large")
def test_spectrum_graphon_large_ours(benchmark):
    # N = 10^5, set-up (positions, windows) included; dense W would take 80 GB
    coupling_spectrum(Graphon.ring(R), k=6, n=2000)  # compile
    s = benchmark.pedantic(
        coupling_spectrum, args=(Graphon.ring(R),), kwargs={"k": 6, "n": N_LARGE}, rounds=1
    )
    benchmark.extra_info["n_matvec"] = s.n_matvec
    assert abs(s.eigenvalues[0] - 2 * R) < 3.0 / N_LARGE  # quadrature


MEMORY = {
    # the interpreter with the package, numba and scipy loaded and one tiny spectrum: the floor
    "import_floor_reference": (
        "from nndyn_fast.graphs import Graphon\nfrom nndyn_fast.spectra import coupling_spectrum\n"
        f"s = coupling_spectrum(Graphon.ring({R}), k=6, n=2000)\n"
    ),
    "ours_matrix_free_N1e5": (
        "from nndyn_fast.graphs import Graphon\nfrom nndyn_fast.spectra import coupling_spectrum\n"
        f"s = coupling_spectrum(Graphon.ring({R}), k=6, n={N_LARGE})\n"
        "print('lam', s.eigenvalues)\n"
    ),
    "dense_eigsh_N8000_reference": (
        "import numpy as np\nfrom scipy.sparse.linalg import eigsh\n"
        "from nndyn_fast.graphs import Graphon\n"
        f"A = Graphon.ring({R}).matrix(8000) / 8000\n"
        "print('lam', eigsh(A, k=6, which='LA')[0])\n"
    ),
}


@pytest.mark.skipif(not FULL, reason="large runs only with NNDYN_BENCH_FULL=1")
@pytest.mark.parametrize("name", list(MEMORY))
@pytest.mark.benchmark(group="spectrum-memory")
def test_spectrum_memory(benchmark, name, fresh_process):
    peak = benchmark.pedantic(fresh_process, args=(MEMORY[name],), rounds=1)
    benchmark.extra_info["peak_rss_MiB"] = peak


@pytest.mark.benchmark(group="limit-vs-particles")
def test_limit_ours(benchmark):
    def run():
        return meanfield_limit(Graphon.constant(1.0), K=K, gamma=GAMMA, t_end=T_END, dt=DT,
                               x_grid=1000, z0=1.0)  # fmt: skip

    run()  # compile
    lim = benchmark.pedantic(run, rounds=1)
    r_inf = float(lim.r[lim.t > T_END / 2].mean())
    benchmark.extra_info["r"] = r_inf
    assert r_inf == pytest.approx(np.sqrt(1 - 2 * GAMMA / K), abs=1e-6)


@pytest.mark.benchmark(group="limit-vs-particles")
def test_particles_reference(benchmark):
    model = Kuramoto(lorentzian_quantile_frequencies(N_PART, GAMMA), Graphon.constant(1.0), K)
    steps = int(np.ceil(T_END / DT))

    def run():
        return simulate(model, np.zeros(N_PART), T_END, DT, save_every=steps)

    run = benchmark.pedantic(run, rounds=1)
    r_n = float(run.r[run.t > T_END / 2].mean())
    benchmark.extra_info["r"] = r_n
    benchmark.extra_info["N"] = N_PART
    assert abs(r_n - np.sqrt(1 - 2 * GAMMA / K)) < 1e-2
