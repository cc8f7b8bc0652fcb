"""The nndyn command line: the default job, plotting, errors."""

import numpy as np
import pytest

from nndyn_fast import open_run
from nndyn_fast.cli import main


def test_kuramoto_small_run_prints_order_parameter(tmp_path, capsys):
    out = tmp_path / "k.h5"
    assert main(["kuramoto", "--N", "2000", "--t-end", "40", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "final r =" in text and "Ott–Antonsen prediction" in text
    with open_run(out) as run:
        assert run.status == "complete" and run.params["N"] == 2000
        r = run.read("observables", "value")[-200:, 0]
        # K = 2, γ = 0.5: r → sqrt(1/2); N = 2000 fluctuations ~ 0.01 (deterministic seed)
        assert abs(r.mean() - np.sqrt(0.5)) < 0.05


@pytest.mark.parametrize("graph", ["erdos-renyi", "small-world", "power-law", "directed-ring"])
def test_kuramoto_graph_options(tmp_path, graph):
    out = tmp_path / f"{graph}.h5"
    args = [
        "kuramoto",
        "--N",
        "300",
        "--t-end",
        "1",
        "--graph",
        graph,
        "--out",
        str(out),
        "--quiet",
        "--freq",
        "normal",
    ]
    assert main(args) == 0


def test_matrix_file_rate_model_and_plot(tmp_path):
    W = np.random.default_rng(0).random((100, 100))
    np.save(tmp_path / "W.npy", W)
    out = tmp_path / "rate.h5"
    assert (
        main(
            [
                "kuramoto",
                "--model",
                "rate",
                "--N",
                "100",
                "--graph",
                str(tmp_path / "W.npy"),
                "--t-end",
                "2",
                "--out",
                str(out),
                "--quiet",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    assert main(["plot", str(out)]) == 0
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_exit_2_with_message(tmp_path, capsys):
    out = str(tmp_path / "e.h5")
    assert main(["kuramoto", "--N", "0", "--out", out]) == 2
    assert "--N must be an integer >= 1" in capsys.readouterr().err
    assert main(["kuramoto", "--graph", "star", "--out", out]) == 2
    assert "--graph must be one of" in capsys.readouterr().err
    assert main(["kuramoto", "--dt", "-1", "--out", out]) == 2
    assert main(["kuramoto", "--N", "10", "--t-end", "0.1", "--out", out, "--quiet"]) == 0
    assert main(["kuramoto", "--N", "10", "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err


def test_sparse_npz_and_h5_matrix_files_match_dense(tmp_path):
    import h5py
    import scipy.sparse as sp

    W = sp.random(80, 80, density=0.2, random_state=1, format="csr")
    sp.save_npz(tmp_path / "W.npz", W)
    with h5py.File(tmp_path / "W.h5", "w") as f:
        f["W"] = W.toarray()
    finals = []
    for name in ("W.npz", "W.h5"):
        out = tmp_path / f"{name}.run.h5"
        assert (
            main(
                [
                    "kuramoto",
                    "--N",
                    "80",
                    "--graph",
                    str(tmp_path / name),
                    "--t-end",
                    "1",
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        with open_run(out) as run:
            assert run.params["coupling"] == ("dense" if name == "W.h5" else "csr:nnz=1280")
            finals.append(run.read("trajectory", "value")[-1])
    # same weights, sparse vs dense kernels: summation order differs, rounding only
    np.testing.assert_allclose(finals[0], finals[1], atol=1e-12)


def test_ode_command_writes_the_batch(tmp_path, capsys):
    from scipy.integrate import solve_ivp

    from nndyn_fast import NeuralODE

    out = tmp_path / "ode.h5"
    args = ["ode", "--batch", "20", "--frames", "5", "--d", "3", "--hidden", "4", "--out", str(out)]
    assert main([*args, "--rtol", "1e-10", "--atol", "1e-12"]) == 0
    assert "wrote" in capsys.readouterr().out
    # the command's documented model and inputs, integrated independently by scipy
    model = NeuralODE.random(3, 4, scale=1.5, seed=0)
    X = np.random.default_rng(0).standard_normal((20, 3))
    t = np.linspace(0, 1, 5)
    with open_run(out) as run:
        y = run.read("trajectory", "value")
    assert y.shape == (5, 20, 3)
    for i in (0, 19):
        ref = solve_ivp(lambda s, x: model(x), (0, 1), X[i], "DOP853", t_eval=t, rtol=1e-12,
                        atol=1e-14).y.T  # fmt: skip
        np.testing.assert_allclose(y[:, i], ref, rtol=0, atol=1e-8)  # rtol 1e-10 per step


def test_ode_embedding_demo_reproduces_the_square(tmp_path, capsys):
    args = ["ode", "--demo", "embedding", "--batch", "9", "--rtol", "1e-10", "--atol", "1e-12"]
    assert main([*args, "--out", str(tmp_path / "e.h5")]) == 0
    err = float(capsys.readouterr().out.split("max |v(1) - x^2| = ")[1].split()[0])
    assert err < 1e-9  # v(1) = x² exactly for the shear flow: solver error only


def test_dde_command_linear_delay_closed_form(tmp_path, capsys):
    # x' = -x(t - 1), x = 1 on [-1, 0]: x(t) = 1 - t on [0, 1], 1 - t + (t - 1)²/2 on [1, 2]
    out = tmp_path / "dde.h5"
    args = ["dde", "--model", "linear", "--a", "0", "--b", "-1", "--tau", "1", "--history", "1"]
    assert main([*args, "--t-end", "2", "--frames", "5", "--out", str(out)]) == 0
    assert "K tau = 1" in capsys.readouterr().out
    with open_run(out) as run:
        x = run.read("trajectory", "value").ravel()
    t = np.linspace(0, 2, 5)
    exact = np.where(t <= 1, 1 - t, 1 - t + (t - 1) ** 2 / 2)
    np.testing.assert_allclose(x, exact, rtol=0, atol=1e-8)


def test_dde_memory_command_shows_the_threshold(tmp_path, capsys):
    fig = tmp_path / "memory.png"
    args = ["dde", "memory", "--kappas", "0.1", "2.0", "--starts", "1", "--out", str(fig)]
    assert main(args) == 0
    text = capsys.readouterr().out
    # the sign switch of x(T)/x0 for x' = -a x(t - tau) sits at a tau = 1/e
    observed = float(text.split("observed threshold a tau = ")[1].split()[0])
    assert abs(observed - np.exp(-1)) < 3e-3
    assert "K tau = 0.1: " in text and "monotone" in text.split("K tau = 0.1: ")[1].split("\n")[0]
    assert fig.stat().st_size > 0
