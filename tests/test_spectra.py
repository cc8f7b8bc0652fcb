"""Spectra of coupling operators against closed forms and LAPACK; critical couplings."""

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from nndyn_fast.graphs import DigraphMeasure, Graphon, erdos_renyi
from nndyn_fast.spectra import coupling_operator, coupling_spectrum, critical_coupling

# r chosen so that r N is not an integer: no grid point sits on the window's edge, where the
# floating-point distance test could include it in some rows and not in others
R, N = 0.2037, 1000


def _ring_closed_form(r, kmax=400):
    """Eigenvalues of the ring graphon operator: 2r, and sin(2πkr)/(πk) twice for k >= 1."""
    k = np.arange(1, kmax)
    lam = np.sin(2 * np.pi * k * r) / (np.pi * k)
    return np.sort(np.concatenate([[2 * r], lam, lam]))[::-1]


def _ring_discrete(r, n, kmax=400):
    """The same for the circulant on x_i = i/N: (1/N)(1 + 2 Σ_{m=1}^{M} cos(2πkm/N))."""
    M = int(np.floor(r * n))
    m = np.arange(1, M + 1)
    k = np.arange(0, kmax)
    lam = (1 + 2 * np.cos(2 * np.pi * np.outer(k, m) / n).sum(axis=1)) / n
    return np.sort(np.concatenate([lam[:1], lam[1:], lam[1:]]))[::-1]


def test_ring_graphon_spectrum_is_its_fourier_coefficients():
    s = coupling_spectrum(Graphon.ring(R), k=9, n=N)
    assert s.symmetric and s.method == "lanczos"
    # quadrature: the window holds 2⌊rN⌋ + 1 points of weight 1/N instead of length 2r, and
    # the cosine sums differ from the integrals by O(1/N): within 3/N
    np.testing.assert_allclose(s.eigenvalues, _ring_closed_form(R)[:9], atol=3.0 / N)
    # against the exact eigenvalues of the discretised (circulant) operator: rounding only
    np.testing.assert_allclose(s.eigenvalues, _ring_discrete(R, N)[:9], atol=1e-11)
    # k >= 1 modes come twice (cos and sin): the Krylov solver finds both copies
    np.testing.assert_allclose(s.eigenvalues[1:9:2], s.eigenvalues[2:9:2], atol=1e-11)


def test_ring_smallest_end_and_eigenfunctions():
    s = coupling_spectrum(Graphon.ring(R), k=3, which="both", vectors=True, n=600)
    ref = _ring_discrete(R, 600)
    np.testing.assert_allclose(s.eigenvalues[:3], ref[:3], atol=1e-11)
    np.testing.assert_allclose(s.eigenvalues[3:], ref[-3:], atol=1e-11)
    # the top eigenfunction is the constant 1 in L²(μ) (up to sign)
    np.testing.assert_allclose(np.abs(s.eigenvectors[:, 0]), 1.0, atol=1e-8)
    op = coupling_operator(Graphon.ring(R), n=600)
    for j in range(6):
        v = s.eigenvectors[:, j]
        np.testing.assert_allclose(op.matvec(v), s.eigenvalues[j] * v, atol=1e-9)


def test_directed_ring_graphon_against_its_closed_form():
    r, n = 0.3013, 1000
    s = coupling_spectrum(Graphon.directed_ring(r), k=3, n=n)
    assert not s.symmetric and s.method == "arnoldi"
    # ∫_0^r e^{2πiks} ds: r for k = 0, (e^{2πikr} − 1)/(2πik) for k = ±1
    lam1 = (np.exp(2j * np.pi * r) - 1) / (2j * np.pi)
    want = np.array([r, lam1, np.conj(lam1)])
    np.testing.assert_allclose(s.eigenvalues, want, atol=3.0 / n)  # quadrature, as above


def test_erdos_renyi_top_eigenvalue_is_p():
    n, p = 1000, 0.2
    A = sp.triu(erdos_renyi(n, p, seed=3), k=1)
    W = (A + A.T).tocsr()
    s = coupling_spectrum(W, k=2)
    assert s.symmetric
    # top: p + O(1/N); the bulk edge is at 2 sqrt(p(1-p)/N) (semicircle): the gap within that
    scale = 2 * np.sqrt(p * (1 - p) / n)
    assert abs(s.eigenvalues[0] - p) < scale
    assert abs(s.eigenvalues[1]) < 1.2 * scale
    # directed G(N, p): circular law, the outlier again at p
    d = coupling_spectrum(erdos_renyi(n, p, seed=4), k=1)
    assert not d.symmetric and abs(d.eigenvalues[0] - p) < scale


def test_symmetric_dense_matches_eigh():
    rng = np.random.default_rng(5)
    n = 120
    A = rng.standard_normal((n, n))
    W = A + A.T
    ref = sla.eigh(W / n)
    for which, want in (
        ("largest", ref[0][::-1][:5]),
        ("smallest", ref[0][:5]),
        ("both", np.concatenate([ref[0][::-1][:5], ref[0][::-1][-5:]])),
    ):
        s = coupling_spectrum(W, k=5, which=which, method="krylov", vectors=True)
        # well separated random spectrum: ARPACK at tol 1e-12, rounding of O(1) values
        np.testing.assert_allclose(s.eigenvalues, want, atol=1e-10)
        for j, lam in enumerate(s.eigenvalues):
            u = ref[1][:, np.argmin(np.abs(ref[0] - lam))]
            assert abs(abs(u @ s.eigenvectors[:, j]) - 1) < 1e-8
    d = coupling_spectrum(W, k=5, method="dense")
    np.testing.assert_allclose(d.eigenvalues, ref[0][::-1][:5], atol=1e-12)


def test_directed_dense_matches_numpy_eig():
    rng = np.random.default_rng(6)
    n = 100
    W = rng.standard_normal((n, n)) + 0.3 * n * np.eye(n)[:, ::-1]
    ref = np.linalg.eigvals(W / n)
    ref = ref[np.lexsort((-ref.imag, -ref.real))]
    s = coupling_spectrum(W, k=4, method="krylov", vectors=True)
    assert not s.symmetric
    np.testing.assert_allclose(s.eigenvalues, ref[:4], atol=1e-10)  # rounding, as above
    for j in range(4):
        v = s.eigenvectors[:, j]
        np.testing.assert_allclose(W @ v / n, s.eigenvalues[j] * v, atol=1e-9)
    lo = coupling_spectrum(W, k=3, which="smallest", method="krylov")
    want = ref[np.lexsort((-ref.imag, ref.real))][:3]
    np.testing.assert_allclose(lo.eigenvalues, want, atol=1e-10)


def test_digraph_measure_with_node_weights():
    rng = np.random.default_rng(7)
    x = np.sort(rng.random(150))
    mu = rng.uniform(0.2, 1.8, 150)
    meas = DigraphMeasure(Graphon.small_world(0.17, 0.1), x, mu)
    ref = np.sort(np.linalg.eigvals(meas.matrix() / 150).real)[::-1]
    s = coupling_spectrum(meas, k=4, method="krylov", vectors=True)
    assert s.symmetric  # symmetric kernel: through diag(√μ) w diag(√μ)
    np.testing.assert_allclose(s.eigenvalues, ref[:4], atol=1e-10)
    v = s.eigenvectors[:, 0]
    np.testing.assert_allclose(meas.matrix() @ v / 150, s.eigenvalues[0] * v, atol=1e-9)
    np.testing.assert_allclose(np.sum(mu * v**2) / 150, 1.0, rtol=1e-12)  # L²(μ) norm


def test_critical_coupling_formulas():
    complete = Graphon.constant(1.0)  # λ_max = 1 exactly (the constant mode, diagonal included)
    assert critical_coupling(complete, noise=0.8, n=200) == pytest.approx(0.64, rel=1e-10)
    assert critical_coupling(complete, gamma=0.5, n=200) == pytest.approx(1.0, rel=1e-10)
    assert critical_coupling(complete, noise=1.0, gamma=0.5, n=200) == pytest.approx(2.0)
    s = coupling_spectrum(Graphon.ring(R), k=1, n=N)
    assert critical_coupling(None, gamma=0.5, spectrum=s) == pytest.approx(1.0 / s.lambda_max)
    assert critical_coupling(Graphon.constant(0.0), noise=1.0, n=100) == np.inf


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: coupling_spectrum(Graphon.ring(0.2), k=2), "needs n"),
        (lambda: coupling_spectrum(np.ones((3, 4)), k=1), "shape"),
        (lambda: coupling_spectrum(np.ones(5), k=1), "square"),
        (lambda: coupling_spectrum(np.eye(10), k=0), "k must"),
        (lambda: coupling_spectrum(np.eye(10), k=9, method="krylov"), "N - 1"),
        (lambda: coupling_spectrum(np.eye(10), k=6, which="both"), "k must be <="),
        (lambda: coupling_spectrum(np.eye(10), which="middle"), "which must be one of"),
        (lambda: coupling_spectrum(np.eye(10), method="qr"), "method must be one of"),
        (lambda: coupling_spectrum(np.eye(10), tol=0), "tol"),
        (lambda: critical_coupling(np.eye(10), noise=-1.0), "noise"),
        (lambda: critical_coupling(np.eye(10)), "K_c = 0"),
        (lambda: critical_coupling(np.eye(10), omega="gauss"), "omega must be one of"),
        (lambda: critical_coupling(np.eye(10), omega="lorentzian"), "needs gamma"),
        (lambda: critical_coupling(np.eye(10), omega="identical", gamma=1.0), "gamma"),
        (lambda: critical_coupling(np.eye(10), gamma=0.0), "gamma"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_spectrum_plots():
    from nndyn_fast.plots import plot_coupling_spectrum

    s = coupling_spectrum(Graphon.ring(R), k=5, n=300)
    fig = plot_coupling_spectrum(s, reference=_ring_closed_form(R))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) >= 2
    d = coupling_spectrum(Graphon.directed_ring(0.3), k=3, n=300)
    assert len(plot_coupling_spectrum(d).axes[0].lines) >= 2
