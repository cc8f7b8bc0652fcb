"""Figures: each plot function draws its theory artist, returns the figure, takes ``ax=`` and
leaves matplotlib's backend as it was."""

import matplotlib
import numpy as np
import pytest
from run_kinds import KIND_OF

from nndyn_fast import Kuramoto, plots, simulate
from nndyn_fast.cli import main
from nndyn_fast.graphs import Graphon
from nndyn_fast.sgd_stability import StabilityDiagram
from nndyn_fast.training import GDRun


def _labels(ax):
    return [a.get_label() for a in ax.get_lines()]


@pytest.fixture
def backend():
    before = matplotlib.get_backend()
    yield
    assert matplotlib.get_backend() == before


def test_network_run_draws_the_ott_antonsen_value_and_the_locking_edge(tmp_path, backend):
    out = tmp_path / "k.h5"
    args = ["kuramoto", "--N", "300", "--t-end", "5", "--K", "3", "--quiet", "--out", str(out)]
    assert main(args) == 0
    fig = plots.plot_network_run(out, tmp_path / "k.png")
    left, right = fig.axes[:2]
    r_inf = np.sqrt(1 - 2 * 0.5 / 3)  # Lorentzian width 0.5 (the command's default), K = 3
    oa = [ln for ln in left.get_lines() if "Ott" in ln.get_label()]
    assert oa and abs(oa[0].get_ydata()[0] - r_inf) < 1e-12
    assert any("locking edge" in lb for lb in _labels(right))
    assert "omega" in right.get_xlabel()
    assert (tmp_path / "k.png").stat().st_size > 0
    assert main(["plot", str(out), "--png", str(tmp_path / "p.png")]) == 0


def test_network_run_without_theory_plots_against_node_position(tmp_path, backend):
    rng = np.random.default_rng(0)
    m = Kuramoto(rng.normal(size=40), Graphon.ring(0.2), 1.0)
    run = simulate(m, rng.uniform(0, 6, 40), 1.0, 0.1, out=tmp_path / "r.h5")
    fig = plots.plot_network_run(run.path)
    assert not any("Ott" in lb for lb in _labels(fig.axes[0]))
    assert "omega" in fig.axes[1].get_xlabel()


def test_stability_diagram_edges_ticks_and_thresholds(tmp_path, backend):
    lrs, bs = np.geomspace(0.1, 1.0, 4), np.array([1, 2, 4, 8])
    lam = np.subtract.outer(np.log2(bs) / 10, lrs)  # changes sign inside the grid
    d = StabilityDiagram(lrs, bs, lam, lam - 0.1, lam + 0.1, lam - 0.2, 2.0, 1.0)
    fig = plots.plot_stability_diagram(d, tmp_path / "d.png")
    ax = fig.axes[0]
    assert any("GD threshold" in lb for lb in _labels(ax))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "4", "8"]
    mesh = ax.collections[0]
    assert mesh.norm.vmin == -mesh.norm.vmax  # diverging scale centred on zero
    np.testing.assert_allclose(plots._edges(bs)[1:-1], np.sqrt(bs[1:] * bs[:-1]))


def test_eos_draws_two_over_eta_and_accepts_axes(backend):
    from matplotlib.figure import Figure

    run = GDRun(
        step=np.arange(5),
        loss=np.linspace(1, 0.1, 5),
        grad_norm=np.ones(5),
        sharpness_step=np.arange(5),
        sharpness=np.full((5, 1), 3.0),
        theta=np.zeros(2),
        lr=0.5,
        path=None,
    )
    fig = Figure()
    axes = fig.subplots(2, 1)
    assert plots.plot_eos({0.5: run}, ax=axes) is fig
    assert any("2/\\eta = 4" in lb for lb in _labels(axes[1]))
    with pytest.raises(ValueError, match="2 Axes"):
        plots.plot_eos({0.5: run}, ax=axes[0])


# the theory artist each kind's figure must hold (by its label)
THEORY = {
    "kuramoto": "Ott",
    "firing_rate": None,
    "ode": None,
    "dde": "delay embedding",
    "gradient_descent": "2/\\eta",
    "lyapunov_spectrum": "lambda = 0",
    "product_lyapunov": "lambda = 0",
    "sgd_lyapunov": "lambda = 0",
    "sgd_stability_diagram": "GD threshold",
    "sweep": "Ott",
    "noisy_kuramoto": "mean of 3",
    "noisy_firing_rate": "mean of 2",
    "fit": "final loss",
    "dde_lyapunov": "lambda = 0",
    "meanfield_limit": "ott_antonsen",
    "meanfield_limit_fp": "fokker_planck",
    "coupling_spectrum": "closed form (ring",
    "coupling_spectrum_directed": "closed form (directed-ring",
    "finite_size_gap": "Ott–Antonsen",
}


@pytest.mark.xdist_group("run_files")  # beside tests/test_files.py: one build
@pytest.mark.parametrize("kind", sorted(THEORY))
def test_nndyn_plot_draws_every_kind_with_its_theory(run_files, kind, tmp_path, backend):
    png = tmp_path / f"{kind}.png"
    assert main(["plot", str(run_files[kind]), "--out", str(png), "--dpi", "60"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plots.plot_run(run_files[kind])
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel() or ax.get_shared_x_axes().get_siblings(ax) != [ax], kind
        assert ax.get_ylabel(), kind
    if THEORY[kind]:
        labels = [lb for ax in fig.axes for lb in _labels(ax)]
        assert any(THEORY[kind] in lb for lb in labels), labels


@pytest.mark.xdist_group("run_files")  # beside tests/test_files.py: one build
def test_nndyn_plot_formats_and_unknown_kinds(run_files, tmp_path, capsys):
    src = run_files["ode"]
    for suffix in (".pdf", ".svg"):
        assert main(["plot", str(src), "--out", str(tmp_path / f"f{suffix}")]) == 0
        assert (tmp_path / f"f{suffix}").stat().st_size > 0
    assert main(["plot", str(src), "--out", str(tmp_path / "f.txt")]) == 2
    assert "--out must end in" in capsys.readouterr().err
    from nndyn_fast.storage import TrajectoryWriter

    odd = tmp_path / "odd.h5"
    with TrajectoryWriter.create(odd, kind="mystery", params={}, series={"s": {"time": ()}},
                                 rows={"s": 1}, checkpoint={}):  # fmt: skip
        pass
    assert main(["plot", str(odd), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "'mystery'" in err and "'sweep'" in err and "'ode'" in err
    assert set(plots.RUN_PLOTS) >= set(THEORY) - set(KIND_OF)


@pytest.mark.xdist_group("run_files")  # beside tests/test_files.py: one build
def test_fit_and_limit_figures_draw_the_files_rows(run_files, backend):
    from nndyn_fast import open_run

    fig = plots.plot_run(run_files["fit"])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "iteration" in ax.get_xlabel()
    with open_run(run_files["fit"]) as f:
        step, loss = f.read("loss", "step"), f.read("loss", "loss")
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), step)
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), loss)
    # the limit's last state is drawn over the file's graphon grid x_i = i/N (its coordinate)
    fig = plots.plot_run(run_files["meanfield_limit"])
    with open_run(run_files["meanfield_limit"]) as f:
        x = np.asarray(f["trajectory"]["x"])
    np.testing.assert_array_equal(x, np.arange(1, x.size + 1) / x.size)
    np.testing.assert_array_equal(fig.axes[1].get_lines()[0].get_xdata(), x)


@pytest.mark.parametrize("kind", ["kuramoto", "lyapunov_spectrum", "sweep", "fit"])
def test_plot_run_draws_into_the_axes_given(run_files, kind, backend):
    from matplotlib.figure import Figure

    panels = [a for a in plots.plot_run(run_files[kind]).axes if a.get_label() != "<colorbar>"]
    fig = Figure()
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    assert plots.plot_run(run_files[kind], ax=list(axes) if len(axes) > 1 else axes[0]) is fig
    assert all(a.has_data() for a in axes)
