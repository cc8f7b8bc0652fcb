"""``nndyn spectrum`` and ``nndyn limit``: the files they write (read back as labelled tables),
their figures, and the closed forms beside them."""

import json

import numpy as np
import pytest
from faults import every_kill_point

from nndyn_fast import open_run
from nndyn_fast.cli import main
from nndyn_fast.continuum import finite_size_gap
from nndyn_fast.graphs import Graphon
from nndyn_fast.spectra import coupling_spectrum, graphon_eigenvalues


def _cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_spectrum_of_a_ring_graphon_its_closed_form_and_critical_couplings(tmp_path, capsys):
    out = tmp_path / "s.h5"
    N, r, sigma, gamma = 400, 0.2, 0.5, 0.3
    text = _cli(capsys, "spectrum", "--N", str(N), "--graph", "ring", "--r", str(r), "--k", "3",
                "--vectors", "--noise", str(sigma), "--width", str(gamma), "--out", str(out),
                "--no-progress")  # fmt: skip
    png = tmp_path / "s.png"
    assert f"wrote {out}" in text and f"wrote {png}" in text and png.stat().st_size > 0
    with open_run(out) as f:
        assert f.kind == "coupling_spectrum" and f.status == "complete"
        lam = f.read("eigenvalues", "value")
        ref = f.read("eigenvalues", "reference")
        vecs = f.read("eigenvectors", "value")
        summary = f.summary
        assert json.loads(f.params["cli_options"])["r"] == r
    # the closed form written here (not by the package): 2r, then sin(2πkr)/(πk) twice
    closed = [2 * r, np.sin(2 * np.pi * r) / np.pi, np.sin(2 * np.pi * r) / np.pi]
    np.testing.assert_allclose(ref[:, 0], closed, rtol=1e-14)
    # the grid x_i = i/N: window quadrature of the indicator, error <= 2/N per eigenvalue
    np.testing.assert_allclose(lam[:, 0], closed, atol=2.0 / N)
    np.testing.assert_array_equal(lam[:, 1], 0.0)
    # K_c = σ²/λ_max and (2γ + σ²)/λ_max of the stored λ_max (formulas of the theory)
    lmax = lam[:, 0].max()
    assert summary["K_c_identical"] == pytest.approx(sigma**2 / lmax, rel=1e-14)
    assert summary["K_c_lorentzian"] == pytest.approx((2 * gamma + sigma**2) / lmax, rel=1e-14)
    assert f"K_c = σ²/λ_max = {sigma**2 / lmax:.6g}" in text
    # the eigenvector of 2r is the constant function, of L²-norm 1 on the grid; rounding of
    # x_i at the window's edge (distance exactly r) drops one node of 2rN + 1 = 161 from some
    # rows, so constant to about 1/161 per row
    np.testing.assert_allclose(np.mean(vecs[0, 0] ** 2), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.abs(vecs[0, 0]), 1.0, atol=0.02)
    np.testing.assert_array_equal(vecs[:, 1], 0.0)


def test_spectrum_and_limit_files_open_in_xarray_with_named_dimensions(tmp_path, capsys):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    s, lim = tmp_path / "s.h5", tmp_path / "l.h5"
    _cli(capsys, "spectrum", "--N", "50", "--graph", "small-world", "--r", "0.2", "--p", "0.1",
         "--k", "2", "--vectors", "--out", str(s), "--plot", "")  # fmt: skip
    _cli(capsys, "limit", "--graph", "complete", "--K", "3", "--x-grid", "8", "--t-end", "1",
         "--dt", "0.1", "--particles", "10", "--out", str(lim), "--plot", "")  # fmt: skip
    with xr.open_dataset(s, engine="h5netcdf", group="eigenvalues") as ds:
        assert ds["value"].dims == ("rank", "part") and list(ds["rank"].values) == [1, 2]
        assert ds["value"].attrs["long_name"].startswith("eigenvalue")
    with xr.open_dataset(s, engine="h5netcdf", group="eigenvectors") as ds:
        assert ds["value"].dims == ("rank", "part", "node")
        np.testing.assert_allclose(ds["node"].values, np.arange(1, 51) / 50)
    with xr.open_dataset(lim, engine="h5netcdf", group="sizes") as ds:
        assert ds["gap"].dims == ("N",) and list(ds["N"].values) == [10]
    with xr.open_dataset(lim, engine="h5netcdf", group="limit") as ds:
        assert ds["r"].dims == ("time",) and ds["time"].size == 11


def test_erdos_renyi_top_eigenvalue_is_p_and_the_directed_ring_is_complex(tmp_path, capsys):
    N, p = 400, 0.3
    text = _cli(capsys, "spectrum", "--N", str(N), "--graph", "erdos-renyi", "--p", str(p),
                "--k", "1", "--noise", "1", "--out", str(tmp_path / "er.h5"),
                "--plot", "")  # fmt: skip
    with open_run(tmp_path / "er.h5") as f:
        top = f.read("eigenvalues", "value")[0, 0]
        assert f.summary["K_c_identical"] == pytest.approx(1.0 / top, rel=1e-14)
    # λ_max of A/N = p + O(N^-1/2): the spread of the row sums, sqrt(p(1-p)/N) = 0.023, times 3
    assert abs(top - p) < 3 * np.sqrt(p * (1 - p) / N)
    assert "lambda_max" in text
    r = 0.3
    _cli(capsys, "spectrum", "--N", "300", "--graph", "directed-ring", "--r", str(r), "--k", "3",
         "--width", "0.2", "--out", str(tmp_path / "d.h5"),
         "--plot", str(tmp_path / "d.svg"))  # fmt: skip
    with open_run(tmp_path / "d.h5") as f:
        v = f.read("eigenvalues", "value")
        assert f.summary["K_c_lorentzian"] == pytest.approx(0.4 / v[0, 0], rel=1e-14)
    lam = v[:, 0] + 1j * v[:, 1]
    # r (constant mode), then (e^{2πimr} − 1)/(2πim), m = ±1 (a conjugate pair: + first)
    m = 1
    mode = (np.exp(2j * np.pi * m * r) - 1) / (2j * np.pi * m)
    want = [r, mode if mode.imag > 0 else np.conj(mode)]
    np.testing.assert_allclose(lam[:2], want, atol=2.0 / 300)  # window quadrature, O(1/N)
    assert (tmp_path / "d.svg").stat().st_size > 0


@pytest.mark.parametrize(
    "w",
    [
        Graphon.constant(0.4),
        Graphon.small_world(0.15, 0.2),
        Graphon.power_law(0.2),
        Graphon.directed_ring(0.35),
    ],  # fmt: skip
    ids=lambda w: w.name,
)
def test_graphon_eigenvalues_are_those_of_the_dense_discretisation(w):
    """The closed forms against LAPACK on the dense W/N of N = 400 nodes (quadrature error
    O(1/N), O(N^{2γ-1}) for the singular power law at x = 0)."""
    N = 400
    for which in ("largest", "smallest"):
        got = graphon_eigenvalues(w, 3, which)
        dense = coupling_spectrum(w, 3, which, n=N, method="dense").eigenvalues
        tol = 3 * N ** (2 * 0.2 - 1) if w.name == "power_law" else 3.0 / N
        np.testing.assert_allclose(got, dense, atol=tol, err_msg=f"{w.name} {which}")


def test_limit_of_the_complete_graph_and_nndyn_plot(tmp_path, capsys):
    out = tmp_path / "l.h5"
    K, g = 3.0, 0.5
    text = _cli(capsys, "limit", "--K", str(K), "--width", str(g), "--x-grid", "16", "--t-end",
                "20", "--dt", "0.05", "--save-every", "100", "--out", str(out),
                "--progress")  # fmt: skip
    assert f"wrote {out}" in text and "ott_antonsen" in text
    with open_run(out) as f:
        assert f.kind == "meanfield_limit" and f.rows["observables"] == 401
        r_end = f.read("observables", "value")[-1, 0]
    # Ott–Antonsen of all-to-all coupling: r_∞ = sqrt(1 − 2γ/K); relaxation at rate K/2 − γ
    # = 1 per unit time from z0 = 0.5: e^{-20} is far below RK4's error at dt = 0.05
    assert r_end == pytest.approx(np.sqrt(1 - 2 * g / K), abs=1e-8)
    png = tmp_path / "fig.png"
    assert main(["plot", str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    # the noisy identical oscillators: Fokker–Planck, and its plot
    fp = tmp_path / "fp.h5"
    text = _cli(capsys, "limit", "--K", "3", "--noise", "1", "--modes", "12", "--t-end", "1",
                "--dt", "0.1", "--out", str(fp))  # fmt: skip
    assert "fokker_planck" in text and (tmp_path / "fp.png").stat().st_size > 0


def test_limit_beside_particles_matches_the_api_and_its_plot(tmp_path, capsys):
    out = tmp_path / "g.h5"
    args = ["--graph", "ring", "--r", "0.3", "--K", "4", "--width", "0.3", "--x-grid", "32",
            "--t-end", "2", "--dt", "0.1"]  # fmt: skip
    text = _cli(capsys, "limit", *args, "--particles", "32", "64", "--out", str(out))
    api = finite_size_gap(Graphon.ring(0.3), [32, 64], K=4.0, gamma=0.3, t_end=2.0, dt=0.1,
                          x_grid=32)  # fmt: skip
    with open_run(out) as f:
        assert f.kind == "finite_size_gap" and f.status == "complete"
        np.testing.assert_array_equal(f.read("sizes", "N"), [32, 64])
        np.testing.assert_array_equal(f.read("sizes", "r_N"), api.r_N)
        np.testing.assert_array_equal(f.read("sizes", "gap"), api.gap)
        np.testing.assert_array_equal(f.read("limit", "r"), api.limit.r)
        assert f.summary["r_inf"] == api.r_inf
    assert "N = 64: r_N = " in text
    fig_path = tmp_path / "g.png"
    assert main(["plot", str(out), "--out", str(fig_path)]) == 0
    assert fig_path.stat().st_size > 0


def test_a_killed_finite_size_gap_run_resumes_bitwise(tmp_path):
    def go(path, resume=False):
        return finite_size_gap(Graphon.constant(1.0), [8, 16, 24], K=3.0, gamma=0.5, t_end=0.5,
                               dt=0.1, x_grid=8, out=path, resume=resume)  # fmt: skip

    ref = go(tmp_path / "ref.h5")
    out = tmp_path / "k.h5"
    got = {}

    def check():
        with open_run(out) as f:
            assert f.status == "complete"
            np.testing.assert_array_equal(f.read("sizes", "r_N"), ref.r_N)
            np.testing.assert_array_equal(f.read("limit", "r"), ref.limit.r)
        np.testing.assert_array_equal(got["res"].gap, ref.gap)

    seen = every_kill_point(
        out,
        lambda: got.update(res=go(out)),
        lambda: got.update(res=go(out, resume=True)),
        check,
    )
    assert seen["resumed"] > 0


@pytest.mark.parametrize(
    "args, match",
    [
        (["limit", "--graph", "ring", "--noise", "0.5"], "--graph complete or erdos-renyi"),
        (["limit", "--noise", "0.5", "--particles", "10"], "drop --noise"),
        (["limit", "--graph", "w.npz"], "--graph must be one of"),
        (["limit", "--noise", "-1"], "noise"),
        (["spectrum", "--N", "10", "--k", "0"], "k must be"),
        (["spectrum", "--N", "10", "--noise", "-0.5"], "noise"),
    ],
)
def test_bad_options_are_refused_with_a_clear_error(args, match, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "x.h5"), "--plot", ""]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
