"""Progress reports: once per chunk, silent for short runs, tqdm or a plain stderr line."""

import sys

import numpy as np
import pytest

from nndyn_fast import progress as prog


def test_plain_line_per_update_and_a_newline_at_the_end(monkeypatch, capsys):
    monkeypatch.setattr(prog, "DELAY", 0.0)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # no tqdm: the plain line
    with prog.Progress(10, desc="demo", unit="frame") as bar:
        for k in (3, 7):
            bar.update(k)
        bar.update(10)
    err = capsys.readouterr().err
    assert err.count("\r") == 3 and "10/10 frames" in err and err.endswith("\n")


def test_short_runs_and_disabled_reports_print_nothing(capsys):
    with prog.Progress(5) as bar:  # shorter than DELAY
        bar.update(5)
    with prog.progress_bar(False, 5) as bar:
        bar.update(2)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress"):
        prog.progress_bar("yes", 5)


def test_api_reports_per_chunk(monkeypatch, tmp_path, capsys):
    from nndyn_fast.lyapunov import product_lyapunov

    monkeypatch.setattr(prog, "DELAY", 0.0)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    M = np.random.default_rng(0).normal(size=(400, 2, 2))
    product_lyapunov(M, chunk=100, out=tmp_path / "p.h5", progress=True)
    err = capsys.readouterr().err
    assert 3 <= err.count("\r") <= 5 and "400/400 steps" in err  # 4 chunks, not 400 steps
