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
