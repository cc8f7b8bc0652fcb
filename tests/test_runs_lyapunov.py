"""Run files of the Lyapunov entry points: a kill at every write resumes bitwise, a resume
refuses any changed parameter or input (one ulp is enough) and names it, SIGTERM of the command
line leaves a resumable file; and regression tests of the blow-up step, the mean-square
overflow and the product's block count."""

import ast
import contextlib
import inspect
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faults import Crash, crash_at, every_kill_point
from numba import njit

import nndyn_fast.kernels.lyapunov as klyap
from nndyn_fast import lyapunov, sgd_stability
from nndyn_fast.errors import NonFiniteStateError
from nndyn_fast.lyapunov import Henon, Lorenz63, MapSystem, lyapunov_spectrum, product_lyapunov
from nndyn_fast.sgd_stability import (
    gd_threshold_at_minimum,
    mean_square_exponent,
    sgd_lyapunov,
    sgd_stability_diagram,
)
from nndyn_fast.storage import open_run


@njit
def henon_step(x, p, out):
    out[0] = 1.0 - p[0] * x[0] * x[0] + x[1]
    out[1] = p[1] * x[0]


@njit
def henon_jac(x, p, J):
    J[0, 0] = -2.0 * p[0] * x[0]
    J[0, 1] = 1.0
    J[1, 0] = p[1]
    J[1, 1] = 0.0


@njit
def henon_step_other(x, p, out):  # the same map under another name
    out[0] = 1.0 - p[0] * x[0] * x[0] + x[1]
    out[1] = p[1] * x[0]


def gaussian_factors(rng, m):
    return rng.standard_normal((m, 3, 3)) / math.sqrt(3.0)


def other_factors(rng, m):
    return rng.standard_normal((m, 3, 3)) / math.sqrt(3.0)


def _ulp(a):
    b = np.array(a, dtype=np.float64, copy=True)
    b.flat[0] = np.nextafter(b.flat[0], np.inf)
    return b


def _up(x):
    return float(np.nextafter(x, np.inf))


def _rows(path):
    """Every committed row of every series in the file at ``path``."""
    with open_run(path) as f:
        return {
            f"{s}/{name}": f.read(s, name)
            for s in f.rows
            for name in f[s]  # the fields of the series
        }


# -- the entry points, each as (run(out, resume, **changes) -> result, series fields) ---------
G8 = np.random.default_rng(13).standard_normal((8, 5))
FACTORS = np.random.default_rng(2).standard_normal((40, 2, 2))


def run_spectrum(out, resume=False, **kw):
    args = {"system": Henon(), "x0": [0.1, 0.1], "steps": 40, "n_records": 4, "transient": 5}
    args.update(kw)
    return lyapunov_spectrum(args.pop("system"), args.pop("x0"), out=out, resume=resume, **args)


def run_flow(out, resume=False, **kw):
    args = {
        "system": Lorenz63(),
        "x0": [1.0, 1.0, 1.0],
        "t_end": 0.2,
        "dt": 0.01,
        "transient": 0.05,
        "k": 2,
        "n_records": 4,
        "V0": np.eye(3)[:2],
    }
    args.update(kw)
    if args["V0"] is None:
        del args["V0"]
    return lyapunov_spectrum(args.pop("system"), args.pop("x0"), out=out, resume=resume, **args)


def run_product(out, resume=False, **kw):
    args = {"factors": gaussian_factors, "steps": 40, "chunk": 10, "seed": 3}
    args.update(kw)
    return product_lyapunov(args.pop("factors"), out=out, resume=resume, **args)


def run_product_array(out, resume=False, **kw):
    args = {"factors": FACTORS, "chunk": 10}
    args.update(kw)
    return product_lyapunov(args.pop("factors"), out=out, resume=resume, **args)


def run_sgd(out, resume=False, **kw):
    args = {
        "G": G8,
        "lr": 0.3,
        "batch_size": 3,
        "steps": 200,
        "k": 2,
        "seed": 5,
        "transient": 10,
        "replicas": 2,
        "n_blocks": 4,
    }
    args.update(kw)
    G, lr, B = args.pop("G"), args.pop("lr"), args.pop("batch_size")
    return sgd_lyapunov(G, lr, B, out=out, resume=resume, **args)


def run_diagram(out, resume=False, **kw):
    args = {
        "G": G8,
        "lrs": [0.05, 0.2],
        "batch_sizes": [1, 2, 4],
        "steps": 40,
        "transient": 5,
        "replicas": 1,  # the serial kernel: the diagram's 20 chunks per point cost microseconds
    }
    args.update(kw)
    G, lrs, bs = args.pop("G"), args.pop("lrs"), args.pop("batch_sizes")
    return sgd_stability_diagram(G, lrs, bs, out=out, resume=resume, **args)


def _same_result(a, b):
    for name in ("exponents", "stderr", "running", "ci_low", "ci_high", "per_replica", "lam"):
        if hasattr(a, name):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in ("lam_low", "lam_high", "ms", "x", "V"):
        if getattr(a, name, None) is not None:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


ENTRY_POINTS = {
    "spectrum": (run_spectrum, {}),
    "flow": (run_flow, {}),
    "product": (run_product, {}),
    "product_array": (run_product_array, {}),
    "sgd_with": (run_sgd, {}),
    "sgd_without_blocks": (run_sgd, {"sampling": "without", "replicas": 1}),
    "diagram": (run_diagram, {}),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_kill_point_resumes_bitwise(tmp_path, name):
    """A kill (torn write or none) at each write of a small run with several commits: the
    resume gives the uninterrupted run's file and result, bit for bit."""
    fn, kw = ENTRY_POINTS[name]
    ref_path = tmp_path / "ref.h5"
    ref = fn(ref_path, **kw)
    want = _rows(ref_path)
    with open_run(ref_path) as f:
        assert f.chunks >= 3  # several commits
        want_summary = f.summary
    out = tmp_path / "k.h5"
    got = {}

    def run():
        got["res"] = fn(out, **kw)

    def resume():
        got["res"] = fn(out, resume=True, **kw)

    def check():
        with open_run(out) as f:
            assert f.status == "complete"
            f.verify()
            assert f.summary == want_summary
        rows = _rows(out)
        assert rows.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(rows[key], want[key], err_msg=key)
        _same_result(got["res"], ref)

    # a kill before a write or in its middle (the storage tests cover both for every format
    # detail; here one entry point gets both, the others the torn write)
    for torn in (0.0, 0.5) if name == "spectrum" else (0.5,):
        seen = every_kill_point(out, run, resume, check, torn=torn)
        # a kill before the file appears (its first record, the rename) leaves none at out
        assert seen["reran"] == 2 and seen["resumed"] == seen["points"] - 2 > 8


def _interrupted_file(fn, out, **kw):
    """A file of ``fn`` killed after its second commit (its record written)."""
    n = 0
    while True:  # find the write at which the second commit is complete
        n += 1
        with contextlib.suppress(Crash), crash_at(n, 1.0):
            fn(out, **kw)
        if out.exists():
            with open_run(out) as f:
                if f.chunks >= 2:
                    assert f.status == "interrupted"
                    return
            out.unlink()


# (entry point, base options, [(name in the message, changed options)])
REFUSALS = {
    "spectrum_user_map": (
        run_spectrum,
        {"system": MapSystem(henon_step, henon_jac, 2, np.array([1.4, 0.3]))},
        [
            ("system", {"system": Henon()}),
            ("step", {"system": MapSystem(henon_step_other, henon_jac, 2, np.array([1.4, 0.3]))}),
            ("args", {"system": MapSystem(henon_step, henon_jac, 2, _ulp([1.4, 0.3]))}),
            ("x0", {"x0": _ulp([0.1, 0.1])}),
            ("k", {"k": 1}),
            ("steps", {"steps": 41}),
            ("transient", {"transient": 6}),
            ("reorth_every", {"reorth_every": 2}),
            ("n_records", {"n_records": 5}),
            ("n_blocks", {"n_blocks": 3}),
            ("seed", {"seed": 1}),
            ("V0", {"V0": np.eye(2)}),
        ],
    ),
    "spectrum_flow": (
        run_flow,
        {},
        [
            ("sigma", {"system": Lorenz63(sigma=_up(10.0))}),
            ("rho", {"system": Lorenz63(rho=_up(28.0))}),
            ("beta", {"system": Lorenz63(beta=_up(8.0 / 3.0))}),
            ("x0", {"x0": _ulp([1.0, 1.0, 1.0])}),
            ("V0", {"V0": _ulp(np.eye(3)[:2])}),
            ("V0", {"V0": None}),
            ("t_end", {"t_end": _up(0.2)}),
            ("dt", {"dt": _up(0.01)}),
            ("transient", {"transient": _up(0.05)}),
        ],
    ),
    "product": (
        run_product,
        {},
        [
            ("factors", {"factors": other_factors}),
            ("factors", {"factors": FACTORS[:, :1, :1].repeat(3, 1).repeat(3, 2)}),
            ("k", {"k": 2}),
            ("steps", {"steps": 50}),
            ("seed", {"seed": 4}),
            ("chunk", {"chunk": 20}),
            ("n_blocks", {"n_blocks": 3}),
            ("reorth_every", {"reorth_every": 2}),
        ],
    ),
    "product_array": (
        run_product_array,
        {},
        [
            ("factors", {"factors": _ulp(FACTORS)}),
            ("factors", {"factors": gaussian_factors, "steps": 40}),
        ],
    ),
    "sgd": (
        run_sgd,
        {},
        [
            ("G", {"G": _ulp(G8)}),
            ("lr", {"lr": _up(0.3)}),
            ("batch_size", {"batch_size": 2}),
            ("steps", {"steps": 201}),
            ("k", {"k": 1}),
            ("seed", {"seed": 6}),
            ("transient", {"transient": 11}),
            ("sampling", {"sampling": "without"}),
            ("replicas", {"replicas": 3}),
            ("space", {"space": "full"}),
            ("rows_per_sample", {"rows_per_sample": 2}),
            ("reorth_every", {"reorth_every": 2}),
            ("n_blocks", {"n_blocks": 5}),
            ("level", {"level": _up(0.95)}),
        ],
    ),
    "sgd_hessians": (
        run_sgd,
        {"G": np.einsum("ni,nj->nij", G8, G8), "k": 1},
        [("G", {"G": _ulp(np.einsum("ni,nj->nij", G8, G8))})],
    ),
    "diagram": (
        run_diagram,
        {},
        [
            ("G", {"G": _ulp(G8)}),
            ("lrs", {"lrs": _ulp([0.05, 0.2])}),
            ("batch_sizes", {"batch_sizes": [1, 2, 3]}),
            ("steps", {"steps": 101}),
            ("k", {"k": 2}),
            ("seed", {"seed": 1}),
            ("transient", {"transient": 6}),
            ("sampling", {"sampling": "without"}),
            ("replicas", {"replicas": 3}),
            ("rows_per_sample", {"rows_per_sample": 2}),
            ("mean_square", {"mean_square": False}),
        ],
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_resume_refuses_a_change_of_any_parameter_or_input(tmp_path, name):
    """Each parameter changed and each input array one ulp off is refused, and named; the
    file is left untouched and still resumes to the uninterrupted result."""
    fn, base, changes = REFUSALS[name]
    out = tmp_path / "r.h5"
    _interrupted_file(fn, out, **base)
    before = out.read_bytes()
    for key, change in changes:
        with pytest.raises(ValueError, match=rf"cannot resume .*(parameter|input) {key}\b"):
            fn(out, resume=True, **{**base, **change})
    assert out.read_bytes() == before
    res = fn(out, resume=True, **base)
    _same_result(res, fn(None, **base))
    with open_run(out) as f:
        assert f.status == "complete"


# -- an interruption in the middle of a chunk ----------------------------------------------------
@pytest.mark.parametrize("fn, kernel", [(run_spectrum, "benettin_map_advance"),
                                        (run_product, "qr_matrix_products"),
                                        (run_sgd, "sgd_rank_products")])  # fmt: skip
def test_ctrl_c_after_a_kernel_call_resumes_bitwise(tmp_path, monkeypatch, fn, kernel):
    """KeyboardInterrupt after a kernel has advanced the state past the last commit: the
    closing record must still hold the committed checkpoint, so the resume is exact."""
    ref = fn(None)
    real = getattr(klyap, kernel)
    calls = {"n": 0}

    def interrupted(*a):
        out = real(*a)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return out

    out = tmp_path / "c.h5"
    monkeypatch.setattr(klyap, kernel, interrupted)
    with pytest.raises(KeyboardInterrupt):
        fn(out)
    monkeypatch.setattr(klyap, kernel, real)
    with open_run(out) as f:
        assert f.status == "interrupted" and f.chunks >= 1
    _same_result(fn(out, resume=True), ref)


# -- SIGTERM of the command line ------------------------------------------------------------
_CLI = "import sys; from nndyn_fast.cli import main; sys.exit(main(sys.argv[1:]))"
_SGD_ARGS = [
    "sgd-lyapunov", "--n", "12", "--d", "6", "--batch-sizes", "1", "2", "3", "4", "5", "6", "7",
    "8", "--lr-factors", "0.5", "2", "--steps", "40000", "--transient", "10", "--replicas", "2",
]  # fmt: skip


def test_sigterm_of_the_command_line_interrupts_and_resume_completes(tmp_path):
    from nndyn_fast.cli import main

    out = tmp_path / "s.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, *_SGD_ARGS, "--out", str(out)],
        cwd=tmp_path,  # the installed package, not the source folder
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            with contextlib.suppress(ValueError, OSError), open_run(out) as f:
                if f.chunks >= 1:
                    break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--resume" in err and "diagram rows" in err
    with open_run(out) as f:
        assert f.status == "interrupted" and 1 <= f.rows["diagram"] < 8
        f.verify()
    assert main([*_SGD_ARGS, "--out", str(out), "--resume"]) == 0
    full = tmp_path / "full.h5"
    assert main([*_SGD_ARGS, "--out", str(full)]) == 0
    with open_run(out) as f:
        assert f.status == "complete"
    a, b = _rows(out), _rows(full)
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# -- regressions ----------------------------------------------------------------------------
@pytest.mark.parametrize("hessians", [False, True])
@pytest.mark.parametrize(
    "transient, reorth_every, expected", [(0, 20, 20), (0, 10, 10), (3, 10, 13), (3, 8, 11)]
)
def test_sgd_blow_up_names_the_step(hessians, transient, reorth_every, expected):
    """One sample, d = 1, factor 1 - lr g^2 = -e^100: between two re-orthonormalisations (every
    ``reorth_every`` steps, and at the transient's end) |v| grows by e^100 per step. In a window
    of 8 or more steps v itself overflows float64 (800 > log(DBL_MAX) = 709.78), so the QR at
    the window's end must report it; in windows of 3 steps even |v|^2 = e^600 stays finite."""
    lr = math.exp(100.0) + 1.0
    G = np.ones((1, 1, 1)) if hessians else np.ones((1, 1))
    kw = {"steps": 100, "transient": transient, "reorth_every": reorth_every, "replicas": 2}
    with pytest.raises(NonFiniteStateError, match=r"NaN/inf at SGD step \d+") as info:
        sgd_lyapunov(G, lr, 1, **kw)
    assert info.value.step == expected
    assert f"step {expected} " in str(info.value)
    assert f"reorth_every = {reorth_every}" in str(info.value)
    # windows of 3 steps: no overflow, and lambda = log|1 - lr g^2| = 100 to rounding
    res = sgd_lyapunov(G, lr, 1, **{**kw, "reorth_every": 3, "transient": 3})
    assert abs(res.exponents[0] - 100.0) < 1e-12


def test_sgd_collapse_names_the_step():
    """lr g^2 = 1: the first factor maps v to 0 exactly (exponent -inf) at step 1."""
    with pytest.raises(NonFiniteStateError, match=r"collapsed to zero .* at SGD step 1\b") as e:
        sgd_lyapunov(np.ones((1, 1)), 1.0, 1, steps=10, transient=0, replicas=1)
    assert e.value.step == 1


def test_mean_square_exponent_refuses_an_overflowing_lr():
    G = np.random.default_rng(0).standard_normal((5, 3))
    with pytest.raises(ValueError, match=r"lr = 1e\+300 is too large .* at most 1e\+100"):
        mean_square_exponent(G, 1e300, 2)
    # large but representable: the exponent is finite and grows like log(lr)
    big = [mean_square_exponent(G, lr, 2) for lr in (1e20, 1e40)]
    assert np.all(np.isfinite(big))
    assert abs((big[1] - big[0]) - math.log(1e20)) < 1e-6  # rho ~ lr^2 c: (1/2) log lr^2
    with pytest.raises(ValueError, match="lr = 1e"):
        sgd_stability_diagram(G, [0.1, 1e300], [1], steps=10, transient=0)


@pytest.mark.parametrize("n_blocks", [-1, 0, 1, 2.5, "3"])
def test_product_lyapunov_rejects_bad_n_blocks(n_blocks):
    with pytest.raises(ValueError, match="n_blocks must be an integer"):
        product_lyapunov(FACTORS, n_blocks=n_blocks)


def test_product_lyapunov_rejects_factors_of_a_changing_size():
    calls = []

    def grows(rng, m):
        calls.append(m)
        return np.tile(np.eye(2 + len(calls)), (m, 1, 1))

    with pytest.raises(ValueError, match=r"must return shape \(5, 3, 3\), got \(5, 4, 4\)"):
        product_lyapunov(grows, steps=10, chunk=5)


def test_gd_threshold_and_largest_stable_lr():
    G = np.random.default_rng(1).standard_normal((7, 4))
    lam_max = np.linalg.eigvalsh(G.T @ G / 7)[-1]
    # SVD vs eigvalsh of the Gram matrix: rounding only
    assert abs(gd_threshold_at_minimum(G) - 2.0 / lam_max) < 1e-12 * (2.0 / lam_max)
    assert gd_threshold_at_minimum(np.zeros((3, 2))) == math.inf
    d = sgd_stability_diagram(G, [0.05, 0.5, 5.0], [1, 7], steps=200, transient=0, replicas=1)
    for crit, exponent in (("lam", d.lam), ("ms", d.ms)):
        want = [
            max([lr for lr, e in zip(d.lrs, row, strict=True) if e < 0], default=0.0)
            for row in exponent
        ]
        np.testing.assert_array_equal(d.largest_stable_lr(crit), want)


# -- layout ---------------------------------------------------------------------------------
def test_public_functions_take_no_private_keywords():
    for mod in (lyapunov, sgd_stability):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                private = [p for p in inspect.signature(obj).parameters if p.startswith("_")]
                assert not private, f"{mod.__name__}.{name} takes {private}"


def test_library_never_chooses_a_matplotlib_backend_and_cli_imports_public_names():
    root = Path(lyapunov.__file__).parent
    for mod in ("lyapunov.py", "sgd_stability.py"):
        assert not re.search(r"matplotlib\.use\(", (root / mod).read_text()), mod
    tree = ast.parse((root / "cli" / "sgd_lyapunov.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"cli_lyapunov imports {private} from {node.module}"
