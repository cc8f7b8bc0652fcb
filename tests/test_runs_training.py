"""The run lifecycle of gradient descent and the edge-of-stability experiment.

A kill at any write resumes to bitwise the uninterrupted run (tests/faults.py); a resume with
any other parameter or input (one ulp off) is refused, naming it, and leaves the file
untouched; SIGTERM to ``nndyn eos`` leaves interrupted files that ``--resume`` completes to
bitwise the uninterrupted result. The reference in each case is the uninterrupted run itself:
that equality is the property under test.
"""

import os
import signal
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from nndyn_fast import training as tr
from nndyn_fast.errors import NonFiniteStateError
from nndyn_fast.storage import TrajectoryWriter, open_run


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny, and on a loaded machine the wake-up of the kernels' worker
    threads costs more than the work; the results are the same for any thread count
    (test_training.py::test_results_do_not_depend_on_thread_count)."""
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(n)


SERIES = {"trajectory": ("step", "loss", "grad_norm"), "sharpness": ("step", "value")}


def _problem(n=12, seed=0):
    rng = np.random.default_rng(seed)
    mlp = tr.MLP((3, 4, 1), "tanh")
    theta = mlp.init(seed) + 0.1 * rng.standard_normal(mlp.n_params)
    return mlp, theta, rng.standard_normal((n, 3)), rng.standard_normal((n, 1))


# SGD (random mini-batches: the generator state is in the checkpoint), warm-started sharpness
# every 4 steps, at most 3 steps per chunk: chunks 0-3, 3-4, 4-7, 7-8, 8-10 (5 commits)
KW = dict(lr=0.1, steps=10, sharpness_every=4, k=2, batch_size=5, seed=7, chunk_steps=3)


def _ulp(a):
    b = np.array(a, dtype=np.float64, copy=True)
    b.flat[0] = np.nextafter(b.flat[0], np.inf)
    return b


def _file(path):
    with open_run(path) as f:
        f.verify()
        data = {f"{s}/{c}": f.read(s, c) for s, cols in SERIES.items() for c in cols}
        return f.status, data, f.checkpoint["theta"]


def _same_run(res, ref):
    for field in ("step", "loss", "grad_norm", "sharpness_step", "sharpness", "theta"):
        np.testing.assert_array_equal(getattr(res, field), getattr(ref, field), err_msg=field)


def _interrupt_after(commits, fn):
    """Call ``fn()`` and raise KeyboardInterrupt (a Ctrl-C) right after its ``commits``-th
    commit (counted over every run file it writes)."""
    original = TrajectoryWriter.commit
    count = {"n": 0}

    def commit(self, **ck):
        original(self, **ck)
        count["n"] += 1
        if count["n"] == commits:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrajectoryWriter, "commit", commit)
        with pytest.raises(KeyboardInterrupt):
            fn()


def test_every_kill_point_of_a_gradient_descent_run_resumes_bitwise(tmp_path):
    from faults import every_kill_point

    mlp, theta, X, Y = _problem()
    ref = tr.gradient_descent(mlp, theta, X, Y, **KW)  # in memory: no file involved
    assert ref.sharpness_step.tolist() == [0, 4, 8, 10]
    out = tmp_path / "k.h5"
    results = []

    def run():
        results.append(tr.gradient_descent(mlp, theta, X, Y, **KW, out=out))

    def resume():
        results.append(tr.gradient_descent(mlp, theta, X, Y, **KW, out=out, resume=True))

    def check():
        status, data, theta_end = _file(out)
        assert status == "complete"
        np.testing.assert_array_equal(data["trajectory/loss"], ref.loss)
        np.testing.assert_array_equal(data["trajectory/grad_norm"], ref.grad_norm)
        np.testing.assert_array_equal(data["trajectory/step"], np.arange(10))
        np.testing.assert_array_equal(data["sharpness/step"], ref.sharpness_step)
        np.testing.assert_array_equal(data["sharpness/value"], ref.sharpness)
        np.testing.assert_array_equal(theta_end, ref.theta)
        _same_run(results[-1], ref)

    # a torn write at each point (half its bytes; test_storage.py also tears none of them)
    seen = every_kill_point(out, run, resume, check, torn=0.5)
    # creation (first record, rename), 5 commits of 3 trajectory fields + a record, 4
    # sharpness appends of 2 fields, the closing record; a kill before the rename leaves no
    # file, so the run starts again
    assert seen["points"] == 2 + 5 * 4 + 4 * 2 + 1 and seen["reran"] == 2


def test_resume_refuses_a_change_of_any_parameter_or_input(tmp_path):
    mlp, theta, X, Y = _problem()
    out = tmp_path / "r.h5"
    _interrupt_after(2, lambda: tr.gradient_descent(mlp, theta, X, Y, **KW, out=out))
    before = out.read_bytes()
    wide = tr.MLP((3, 5, 1), "tanh")
    changes = [
        ("lr", {"lr": np.nextafter(0.1, 1)}),
        ("steps", {"steps": 11}),
        ("sharpness_every", {"sharpness_every": 5}),
        ("k", {"k": 1}),
        ("batch_size", {"batch_size": 6}),
        ("batch_size", {"batch_size": None}),
        ("seed", {"seed": 8}),
        ("sharpness_tol", {"sharpness_tol": 1e-7}),
        ("activation", {"mlp": tr.MLP((3, 4, 1), "softplus")}),
        ("loss", {"mlp": tr.MLP((3, 4, 1), "tanh", "cross_entropy")}),
        ("sizes", {"mlp": wide, "theta": wide.init(0)}),
        ("theta0", {"theta": _ulp(theta)}),
        ("X", {"X": _ulp(X)}),
        ("Y", {"Y": _ulp(Y)}),
    ]
    for name, change in changes:
        kw = {**KW, **change}
        args = [kw.pop(a, v) for a, v in (("mlp", mlp), ("theta", theta), ("X", X), ("Y", Y))]
        with pytest.raises(ValueError, match=rf"(parameter|input) {name}\b"):
            tr.gradient_descent(*args, **kw, out=out, resume=True)
    assert out.read_bytes() == before  # a refused resume leaves the file untouched
    with pytest.raises(ValueError, match="not both"):
        tr.gradient_descent(mlp, theta, X, Y, **KW, out=out, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="needs out"):
        tr.gradient_descent(mlp, theta, X, Y, **KW, resume=True)
    assert out.read_bytes() == before
    # the chunk length is no parameter: the results do not depend on it
    res = tr.gradient_descent(mlp, theta, X, Y, **{**KW, "chunk_steps": 1}, out=out, resume=True)
    _same_run(res, tr.gradient_descent(mlp, theta, X, Y, **KW))
    assert _file(out)[0] == "complete"


def test_full_batch_resume_and_divergence_keep_the_lifecycle(tmp_path):
    """Full-batch GD (no generator in the checkpoint) resumes bitwise; a diverged run is
    ``failed``, keeps its good steps, and a resume of it fails again at the same step."""
    mlp, theta, X, Y = _problem()
    kw = {**KW, "batch_size": None}
    ref = tr.gradient_descent(mlp, theta, X, Y, **kw)
    out = tmp_path / "g.h5"
    _interrupt_after(3, lambda: tr.gradient_descent(mlp, theta, X, Y, **kw, out=out))
    assert _file(out)[0] == "interrupted" and "rng" not in open_run(out).checkpoint
    _same_run(tr.gradient_descent(mlp, theta, X, Y, **kw, out=out, resume=True), ref)
    bad = tmp_path / "d.h5"
    with pytest.raises(NonFiniteStateError) as first:
        tr.gradient_descent(mlp, theta, X, Y, lr=1e3, steps=500, batch_size=4, out=bad)
    with pytest.raises(NonFiniteStateError) as again:
        tr.gradient_descent(mlp, theta, X, Y, lr=1e3, steps=500, batch_size=4, out=bad, resume=True)
    assert first.value.step == again.value.step
    with open_run(bad) as f:
        assert f.status == "failed" and f.rows["trajectory"] == first.value.step


def test_an_interrupt_inside_a_chunk_resumes_bitwise(tmp_path):
    """A Ctrl-C that arrives while a chunk runs (after the kernel has moved θ in place, before
    the commit) is closed as ``interrupted`` at the last commit; the resume is exact."""
    mlp, theta, X, Y = _problem()
    ref = tr.gradient_descent(mlp, theta, X, Y, **KW)
    out = tmp_path / "c.h5"
    real = tr.km.mlp_gd_advance
    calls = {"n": 0}

    def advance(*args):
        res = real(*args)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr.km, "mlp_gd_advance", advance)
        with pytest.raises(KeyboardInterrupt):
            tr.gradient_descent(mlp, theta, X, Y, **KW, out=out)
    with open_run(out) as f:
        assert f.status == "interrupted" and f.chunks == 2 and f.checkpoint["step"] == 4
    _same_run(tr.gradient_descent(mlp, theta, X, Y, **KW, out=out, resume=True), ref)


EOS = dict(n=12, d=3, width=4, depth=1, steps=12, sharpness_every=4)


def test_eos_experiment_resumes_each_of_its_runs(tmp_path):
    """Interrupted in its second run (of three): the first file is complete, the second
    interrupted, the third absent; the resume completes all three to the uninterrupted
    result, and refuses other options naming them."""
    lrs = (0.2, 0.3, 0.35)
    ref_dir, out = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    out.mkdir()
    ref = tr.eos_experiment(lrs, **EOS, out_dir=ref_dir)
    # 12 steps measured every 4: 3 commits per run
    _interrupt_after(4, lambda: tr.eos_experiment(lrs, **EOS, out_dir=out))
    status = {p.name: _file(p)[0] for p in sorted(out.glob("*.h5"))}
    assert status == {"eos_lr0.2.h5": "complete", "eos_lr0.3.h5": "interrupted"}
    before = (out / "eos_lr0.3.h5").read_bytes()
    with pytest.raises(ValueError, match=r"parameter steps\b"):
        tr.eos_experiment(lrs, **{**EOS, "steps": 16}, out_dir=out, resume=True)
    with pytest.raises(ValueError, match=r"input theta0\b"):
        tr.eos_experiment(lrs, **{**EOS, "seed": 1}, out_dir=out, resume=True)
    with pytest.raises(ValueError, match="already exists"):  # checked before any run starts
        tr.eos_experiment((0.4, 0.3), **EOS, out_dir=out)
    assert (out / "eos_lr0.3.h5").read_bytes() == before and not (out / "eos_lr0.4.h5").exists()
    res = tr.eos_experiment(lrs, **EOS, out_dir=out, resume=True)
    for lr in lrs:
        _same_run(res[lr], ref[lr])
        status, data, theta = _file(out / f"eos_lr{lr}.h5")
        _, ref_data, ref_theta = _file(ref_dir / f"eos_lr{lr}.h5")
        assert status == "complete"
        for key, value in ref_data.items():
            np.testing.assert_array_equal(data[key], value, err_msg=key)
        np.testing.assert_array_equal(theta, ref_theta)
    with pytest.raises(ValueError, match="distinct"):
        tr.eos_experiment((0.2, 0.2), **EOS)
    with pytest.raises(ValueError, match="needs out_dir"):
        tr.eos_experiment(lrs, **EOS, resume=True)


_CLI = "import sys; from nndyn_fast.cli import main; sys.exit(main(sys.argv[1:]))"


def test_sigterm_to_nndyn_eos_then_resume_gives_the_uninterrupted_result(tmp_path, capsys):
    from nndyn_fast.cli import main

    lrs, steps = (0.2, 0.3), 300
    opts = ["--lrs", "0.2,0.3", "--n", "12", "--d", "3", "--width", "4", "--depth", "1"]
    opts += ["--steps", str(steps), "--sharpness-every", "5", "--plot", ""]
    out = tmp_path / "run"
    out.mkdir()
    names = [f"eos_lr{lr}.h5" for lr in lrs]
    # from tmp_path, so that the installed package is imported
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "eos", *opts, "--out-dir", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NUMBA_NUM_THREADS": "1"},  # see _one_thread
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / names[0]).exists():
            with open_run(out / names[0]) as f:
                if f.chunks >= 2:  # 61 commits per run: the run has far to go
                    break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "--resume" in err
    # the runs before the one that was stopped are complete, those after it not started
    status = [_file(out / name)[0] if (out / name).exists() else None for name in names]
    stopped = status.index("interrupted")
    assert status == ["complete"] * stopped + ["interrupted"] + [None] * (len(lrs) - stopped - 1)
    with open_run(out / names[stopped]) as f:
        assert 0 < f.rows["trajectory"] < steps
    assert main(["eos", *opts, "--out-dir", str(out), "--resume"]) == 0
    assert "2/lr" in capsys.readouterr().out
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = tr.eos_experiment(
        lrs, n=12, d=3, width=4, depth=1, steps=steps, sharpness_every=5, out_dir=ref_dir
    )
    for lr, name in zip(lrs, names, strict=True):
        status, data, theta = _file(out / name)
        _, ref_data, ref_theta = _file(ref_dir / name)
        assert status == "complete"
        for key, value in ref_data.items():
            np.testing.assert_array_equal(data[key], value, err_msg=f"{name}: {key}")
        np.testing.assert_array_equal(theta, ref_theta)
        np.testing.assert_array_equal(theta, ref[lr].theta)
